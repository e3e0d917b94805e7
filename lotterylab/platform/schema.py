"""The base of every spec model: unknown keys are errors, values are frozen.

Registries (models, data sources, pruning methods) define their own spec sections on this base,
and ``spec.py`` joins them into the experiment spec, so a new method or model is one module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    # NaN and infinities are refused in every numeric field: no run can use them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
