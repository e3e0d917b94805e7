"""Spec errors as a researcher reads them: key path, value and what is allowed, one per line."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from lotterylab.platform.spec.safe_yaml import one_line, shown


class SpecError(ValueError):
    """A spec that cannot be run; the message names the key path, the value and what is allowed."""


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _options(annotation: Any) -> list[Any]:
    """The members of a union (Optional included) with their constraints stripped."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def scalar_kind(annotation: Any) -> str | None:
    options = _options(annotation)
    if len(options) != 1:
        return None
    (option,) = options
    if get_origin(option) is Literal:
        return "literal"
    if option in (bool, int, float, str):
        return option.__name__
    return None


def _misplaced_booleans(annotation: Any, value: Any, path: str) -> list[tuple[str, bool]]:
    """Key paths where a boolean stands for a number (YAML reads yes, on, true as booleans;
    pydantic would then quietly take them as 1 and 0)."""
    options = _options(annotation)
    if isinstance(value, bool):
        numeric = any(o in (int, float) for o in options)
        return [(path, value)] if numeric and bool not in options else []
    models = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
    if isinstance(value, dict) and models:
        model = _tagged(models, value)
        return model_booleans(model, value, path) if model else []
    sequences = [o for o in options if get_origin(o) in (list, tuple)]
    if isinstance(value, list) and len(sequences) == 1:
        args = get_args(sequences[0])
        fixed = get_origin(sequences[0]) is tuple and (not args or args[-1] is not Ellipsis)
        found = []
        for i, item in enumerate(value):
            if fixed and i >= len(args):
                break
            found += _misplaced_booleans(args[i] if fixed else args[0], item, f"{path}.{i}")
        return found
    mappings = [o for o in options if get_origin(o) is dict]
    if isinstance(value, dict) and len(mappings) == 1:
        item = get_args(mappings[0])[1]
        return [p for k, v in value.items() for p in _misplaced_booleans(item, v, f"{path}.{k}")]
    return []


def _tagged(models: list[type[BaseModel]], value: dict) -> type[BaseModel] | None:
    """The member of a tagged union that a mapping names by its tag (``type``, ``name``)."""
    if len(models) == 1:
        return models[0]
    for model in models:
        for name, info in model.model_fields.items():
            option = _unwrap(info.annotation)
            if get_origin(option) is Literal and value.get(name) in get_args(option):
                return model
    return None


def model_booleans(model: type[BaseModel], value: dict, path: str) -> list[tuple[str, bool]]:
    found = []
    for name, info in model.model_fields.items():
        if name in value:
            where = f"{path}.{name}" if path else name
            found += _misplaced_booleans(info.annotation, value[name], where)
    return found


def error_lines(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"] if not str(p).startswith("function-")]
        # discriminated unions put the tag into the path; keep the user's own keys only
        if len(loc) >= 3 and loc[0] == "datasets":
            loc = [p for j, p in enumerate(loc) if not (j == 2 and not p.isdigit())]
        if len(loc) >= 2 and loc[0] == "model":
            loc = [p for j, p in enumerate(loc) if j != 1]
        value = item.get("input")
        got = shown(value) if not isinstance(value, dict) else "{…}"
        if item["type"] == "union_tag_invalid":  # name the tag's own key and value
            loc.append(str(item["ctx"]["discriminator"]).strip("'"))
            got = shown(item["ctx"]["tag"])
        path = ".".join(loc)
        message = one_line(item["msg"].removeprefix("Value error, "))
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        field, _, rest = message.partition(": ")
        if isinstance(value, dict) and rest and field.isidentifier() and field in value:
            # a section's own check names its field first: join it to the section's path
            path, message, got = f"{path}.{field}" if path else field, rest, shown(value[field])
        if not path or message.startswith((f"{path}.", f"{path}:")):
            lines.append(f"  {message}")  # cross-field checks name their own key paths
        else:
            lines.append(f"  {path}: {message} (got {got})")
    return lines


def format_errors(source: str, error: ValidationError) -> str:
    return "\n".join([f"invalid experiment spec {source}:", *error_lines(error)])
