"""Measurements of masks, weights, activations and predictions.

They are pure functions of tensors, with no model, data or storage in sight, so that training,
procedures and analyses can all call them on whatever masks, weights and logits they hold.
"""

from lotterylab.platform.metrics.cavity import (
    CAVITY_CHUNK_SIZE,
    MIN_REMAINING_VARIANCE,
    CavityByRound,
    cavity_by_removal_round,
    cavity_scores,
)
from lotterylab.platform.metrics.classification import accuracy
from lotterylab.platform.metrics.components import image_components
from lotterylab.platform.metrics.connectivity import Connectivity, connectivity
from lotterylab.platform.metrics.flops import MACs, count_macs
from lotterylab.platform.metrics.kurtosis import (
    KURTOSIS_CHUNK_SIZE,
    PreactivationKurtosis,
    preactivation_kurtosis,
)
from lotterylab.platform.metrics.ntk import ntk_matrix, ntk_spectrum
from lotterylab.platform.metrics.rf import (
    CHANNEL_MODES,
    FIT_ITERATIONS,
    SIGMA_MAX_PER_PIXEL,
    SIGMA_MIN,
    RFWidthSummary,
    mask_autocorrelation,
    rf_width,
    rf_width_summary,
)
from lotterylab.platform.metrics.structure import STRUCTURE_COLUMNS, structure_columns
from lotterylab.platform.metrics.width import LayerWidths, layer_widths

__all__ = [
    "CAVITY_CHUNK_SIZE",
    "CHANNEL_MODES",
    "FIT_ITERATIONS",
    "KURTOSIS_CHUNK_SIZE",
    "MIN_REMAINING_VARIANCE",
    "SIGMA_MAX_PER_PIXEL",
    "SIGMA_MIN",
    "STRUCTURE_COLUMNS",
    "CavityByRound",
    "Connectivity",
    "LayerWidths",
    "MACs",
    "PreactivationKurtosis",
    "RFWidthSummary",
    "accuracy",
    "cavity_by_removal_round",
    "cavity_scores",
    "connectivity",
    "count_macs",
    "image_components",
    "layer_widths",
    "mask_autocorrelation",
    "ntk_matrix",
    "ntk_spectrum",
    "preactivation_kurtosis",
    "rf_width",
    "rf_width_summary",
    "structure_columns",
]
