"""Networks by name, and pruning masks on any network of standard layers."""

from lotterylab.platform.models.fcn import (
    FCN,
    FIRST_LAYER,
    FCNModel,
    build_fcn,
    glorot_,
)
from lotterylab.platform.models.masking import (
    apply_masks,
    first_layer_name,
    output_layer_name,
    prunable_names,
)
from lotterylab.platform.models.registry import (
    DEFAULT_MODEL,
    MODELS,
    ModelEntry,
    build_model,
    has_dense_first_layer,
    model_entry,
    model_names,
    model_spec_union,
    model_task,
)

__all__ = [
    "FCN",
    "FIRST_LAYER",
    "DEFAULT_MODEL",
    "MODELS",
    "FCNModel",
    "ModelEntry",
    "apply_masks",
    "build_fcn",
    "build_model",
    "first_layer_name",
    "glorot_",
    "has_dense_first_layer",
    "model_entry",
    "model_names",
    "model_spec_union",
    "model_task",
    "output_layer_name",
    "prunable_names",
]
