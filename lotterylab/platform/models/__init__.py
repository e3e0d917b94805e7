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
    MODELS,
    ModelSpec,
    build_model,
    model_names,
    model_task,
)

__all__ = [
    "FCN",
    "FIRST_LAYER",
    "MODELS",
    "FCNModel",
    "ModelSpec",
    "apply_masks",
    "build_fcn",
    "build_model",
    "first_layer_name",
    "glorot_",
    "model_names",
    "model_task",
    "output_layer_name",
    "prunable_names",
]
