"""Mixed-precision training: dtype policies and loss scaling (depends on jax and optax only)."""

from jquant.mixed_precision.loss_scale import DynamicLossScale as DynamicLossScale
from jquant.mixed_precision.loss_scale import LossScale as LossScale
from jquant.mixed_precision.loss_scale import NoOpLossScale as NoOpLossScale
from jquant.mixed_precision.loss_scale import StaticLossScale as StaticLossScale
from jquant.mixed_precision.loss_scale import all_finite as all_finite
from jquant.mixed_precision.loss_scale import select_tree as select_tree
from jquant.mixed_precision.policy import Policy as Policy
from jquant.mixed_precision.policy import cast_floating as cast_floating
from jquant.mixed_precision.transforms import LossScaleState as LossScaleState
from jquant.mixed_precision.transforms import current_loss_scale as current_loss_scale
from jquant.mixed_precision.transforms import find_loss_scale as find_loss_scale
from jquant.mixed_precision.transforms import loss_scaled as loss_scaled

__all__ = (
    "DynamicLossScale",
    "LossScale",
    "LossScaleState",
    "NoOpLossScale",
    "Policy",
    "StaticLossScale",
    "all_finite",
    "cast_floating",
    "current_loss_scale",
    "find_loss_scale",
    "loss_scaled",
    "select_tree",
)
