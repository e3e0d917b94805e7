"""Reading a spec: YAML text or a mapping in, a validated ``ExperimentSpec`` or a ``SpecError``
naming every problem out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lotterylab.platform.spec.errors import SpecError, format_errors, model_booleans
from lotterylab.platform.spec.experiment import ExperimentSpec, with_defaults


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(
            f"invalid experiment spec {source}: expected a mapping, got {type(data).__name__}"
        )
    booleans = model_booleans(ExperimentSpec, with_defaults(data), "")
    if booleans:
        lines = [f"invalid experiment spec {source}:"]
        for path, value in booleans:
            lines.append(f"  {path}: Input should be a number, not a boolean (got {value!r})")
        raise SpecError("\n".join(lines))
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(format_errors(source, error)) from None


def load_spec(path: str | Path) -> tuple[ExperimentSpec, str]:
    """Read and validate a YAML spec; returns the spec and the text as given."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read experiment spec {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"experiment spec {path} is not valid YAML: {exc}") from None
    return parse_spec(data, str(path)), text


def spec_from_text(text: str, source: str) -> ExperimentSpec:
    return parse_spec(yaml.safe_load(text), source)
