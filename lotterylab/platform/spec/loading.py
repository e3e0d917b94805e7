"""Reading a spec: YAML text or a mapping in, a validated ``ExperimentSpec`` or a ``SpecError``
naming every problem out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lotterylab.platform.spec.errors import SpecError, format_errors, model_booleans
from lotterylab.platform.spec.experiment import ExperimentSpec, with_defaults
from lotterylab.platform.spec.safe_yaml import (
    SpecYAMLError,
    load_yaml_text,
    read_spec_file,
    resolve_data_paths,
    shown,
)


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(
            f"invalid experiment spec {source}: expected a mapping, got {type(data).__name__}"
        )
    booleans = model_booleans(ExperimentSpec, with_defaults(data), "")
    if booleans:
        lines = [f"invalid experiment spec {source}:"]
        for path, value in booleans:
            lines.append(f"  {path}: Input should be a number, not a boolean (got {shown(value)})")
        raise SpecError("\n".join(lines))
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(format_errors(source, error)) from None


def load_spec(path: str | Path) -> tuple[ExperimentSpec, str]:
    """Read and validate a YAML spec; returns the spec and the text as given.

    Relative data set paths are taken from the spec file's folder and kept absolute.
    """
    path = Path(path)
    try:
        text = read_spec_file(path)
        data = resolve_data_paths(load_yaml_text(text, str(path)), path.resolve().parent)
    except SpecYAMLError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(data, str(path)), text


def spec_from_text(text: str, source: str) -> ExperimentSpec:
    try:
        data = load_yaml_text(text, source)
    except SpecYAMLError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(data, source)
