"""jquant.calibration: static observers (ranges accumulated over batches) and dynamic per-token helpers."""

from jquant.calibration.base import Observer, chain
from jquant.calibration.dynamic import dynamic_per_token
from jquant.calibration.factory import calibrate, observer
from jquant.calibration.histogram import HistogramState
from jquant.calibration.histogram_observers import kl_observer, mse_observer, percentile_observer
from jquant.calibration.range_observers import RangeState, absmax_observer, ema_observer, minmax_observer

__all__ = (
    "HistogramState",
    "Observer",
    "RangeState",
    "absmax_observer",
    "calibrate",
    "chain",
    "dynamic_per_token",
    "ema_observer",
    "kl_observer",
    "minmax_observer",
    "mse_observer",
    "observer",
    "percentile_observer",
)
