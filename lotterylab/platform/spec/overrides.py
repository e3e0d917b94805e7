"""``key=value`` overrides of a spec from the command line (``training.lr=0.1``, ``seeds=[0,1]``).

A path is dotted keys and list indices (``datasets.0.n_train``); a value is read as YAML
(a scalar, a flow list ``[a, b]`` or mapping). Overrides change the spec's own mapping before
validation, so they are checked exactly like the file, and the text stored with an experiment
is the spec after them: ``resume`` needs none.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from lotterylab.platform.spec import ExperimentSpec, SpecError, load_spec, parse_spec
from lotterylab.platform.spec.safe_yaml import load_yaml_text, resolve_data_paths

# a dotted path of identifiers and list indices, starting with an identifier
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
# YAML 1.1 (PyYAML) reads 1e-3 as a string; a number typed on a command line means a number
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
TAG_KEYS = ("type", "name")  # keys that pick an entry's variant (data source, model)
MAX_OVERRIDE_CHARS = 10_000


def is_override(argument: str) -> bool:
    """``key=value`` with a dotted path before the first ``=``; anything else is a spec path
    (write ``./a=b.yaml`` for a file whose name looks like an override)."""
    key, sep, _ = argument.partition("=")
    return bool(sep) and _PATH.fullmatch(key) is not None


def parse_override(argument: str) -> tuple[str, Any]:
    if not is_override(argument):
        raise SpecError(f"override {argument!r} is not key=value with a dotted key path")
    if len(argument) > MAX_OVERRIDE_CHARS:
        raise SpecError(f"override {argument[:40]!r}… is longer than {MAX_OVERRIDE_CHARS} chars")
    key, _, text = argument.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"override {argument!r}: the value is not valid YAML ({exc})") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)
    return key, value


def key_paths(data: Any, prefix: str = "") -> list[str]:
    """Every dotted path of a nested mapping / list (list items by index)."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    paths = []
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.append(path)
        if isinstance(value, dict | list):
            paths += key_paths(value, path)
    return paths


def _check_path(path: str, valid: set[str], free: set[str]) -> None:
    """Refuse a path the spec does not have, naming the nearest ones it has."""
    if path in valid or any(path.startswith(f"{p}.") for p in free):
        return
    nearest = difflib.get_close_matches(path, sorted(valid), n=3, cutoff=0.6)
    if not nearest:
        parent = path.rpartition(".")[0]
        nearest = [p for p in sorted(valid) if p.rpartition(".")[0] == parent][:8]
    hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
    raise SpecError(f"override {path}: the spec has no key path {path!r}{hint}")


def _set(data: Any, path: str, value: Any) -> None:
    keys = path.split(".")
    for depth, key in enumerate(keys):
        where = ".".join(keys[: depth + 1])
        last = depth == len(keys) - 1
        if isinstance(data, list):
            if not key.isdigit() or int(key) >= len(data):
                raise SpecError(
                    f"override {path}: {where} is not an index of a list of {len(data)} items"
                )
            key = int(key)
        elif not isinstance(data, dict):
            raise SpecError(f"override {path}: {where.rpartition('.')[0]} holds no keys")
        if last:
            data[key] = value
        else:
            if isinstance(data, dict) and data.get(key) is None:
                data[key] = {}
            data = data[key]


def apply_overrides(
    data: dict, overrides: list[str], source: str = "<spec>"
) -> tuple[ExperimentSpec, dict]:
    """The spec ``data`` with ``overrides`` applied and validated, and the mapping itself."""
    base = parse_spec(data, source)
    resolved = base.model_dump(mode="json")
    valid = set(key_paths(resolved))
    parsed = [parse_override(o) for o in overrides]
    # sections absent from the spec, and entries whose variant the overrides change, take any
    # keys here: validation then checks them against their own model
    free = {p for p in valid if _value_at(resolved, p) is None}
    free |= {p.rpartition(".")[0] for p, _ in parsed if p.rpartition(".")[2] in TAG_KEYS}
    changed = copy.deepcopy(data)
    for path, value in parsed:
        _check_path(path, valid, free)
        _set(changed, path, value)
    shown = " ".join(overrides)
    return parse_spec(changed, f"{source} with {shown}"), changed


def _value_at(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def overridden_text(text: str, changed: dict, overrides: list[str], source: str) -> str:
    """The YAML to store for a spec after overrides (the given text when there are none)."""
    if not overrides:
        return text
    header = f"# {source} with overrides: {' '.join(overrides)}\n"
    return header + yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)


def load_with_overrides(path, overrides: list[str]) -> tuple[ExperimentSpec, str]:
    """``load_spec`` with overrides: the spec and the text to store with the experiment."""
    spec, text = load_spec(path)
    if not overrides:
        return spec, text
    data = resolve_data_paths(load_yaml_text(text, str(path)), Path(path).resolve().parent)
    spec, changed = apply_overrides(data, overrides, str(path))
    return spec, overridden_text(text, changed, overrides, str(path))
