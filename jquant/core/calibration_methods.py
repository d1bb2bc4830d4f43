"""How a quantization range is chosen from data: the calibration *methods* (configs).

These are frozen, hashable configs held by a `QuantSpec`. The same method serves two uses:
- dynamic quantization: `jq.quantize(x, spec)` computes the range from ``x`` itself, per tile (`core/ranges.py`);
- static quantization: the observers in `jquant.calibration` accumulate statistics over batches, then finalize.
"""

from __future__ import annotations

import dataclasses
from typing import Union

from jquant.core.checks import int_scalar, real_scalar


@dataclasses.dataclass(frozen=True)
class AbsMax:
  """Symmetric range ``[-max|x|, max|x|]``."""


@dataclasses.dataclass(frozen=True)
class MinMax:
  """Asymmetric range ``[min(min x, 0), max(max x, 0)]`` (0 always representable)."""


@dataclasses.dataclass(frozen=True)
class Percentile:
  """Clip at the ``q``-th percentile of ``|x|`` (symmetric) or at the (100-q, q) percentiles (asymmetric)."""

  q: float = 99.99

  def __post_init__(self):
    object.__setattr__(self, "q", real_scalar(self.q, f"Percentile(q={self.q!r})"))
    if not 50.0 < self.q <= 100.0:
      raise ValueError(f"Percentile(q={self.q}) must be in (50, 100], e.g. 99.9 or 99.99.")


@dataclasses.dataclass(frozen=True)
class MSE:
  """Grid search over clip ratios ``r`` in [min_ratio, 1] minimising the quantization MSE of each tile.

  ``grid`` candidates are searched; the absmax (or min/max for asymmetric) range is shrunk by ``r``.
  """

  grid: int = 100
  min_ratio: float = 0.05

  def __post_init__(self):
    object.__setattr__(self, "grid", int_scalar(self.grid, f"MSE(grid={self.grid!r})"))
    object.__setattr__(self, "min_ratio", real_scalar(self.min_ratio, f"MSE(min_ratio={self.min_ratio!r})"))
    if self.grid < 2:
      raise ValueError(f"MSE(grid={self.grid}) needs at least 2 candidates; use e.g. grid=100.")
    if not 0.0 < float(self.min_ratio) < 1.0:
      raise ValueError(f"MSE(min_ratio={self.min_ratio}) must be in (0, 1), e.g. 0.2.")


@dataclasses.dataclass(frozen=True)
class KL:
  """TensorRT-style entropy calibration: the symmetric threshold minimising KL(P || Q) between the histogram of
  ``|x|`` (``bins`` bins) clipped at the threshold and its quantized version. Symmetric integer qtypes only."""

  bins: int = 2048

  def __post_init__(self):
    object.__setattr__(self, "bins", int_scalar(self.bins, f"KL(bins={self.bins!r})"))
    if self.bins < 16:
      raise ValueError(f"KL(bins={self.bins}) is too few; use e.g. bins=2048.")


@dataclasses.dataclass(frozen=True)
class EMA:
  """Exponential moving average of the per-batch absmax (symmetric) or min/max (asymmetric), for static
  activation ranges tracked across batches. On a single tensor it equals AbsMax / MinMax."""

  decay: float = 0.99

  def __post_init__(self):
    object.__setattr__(self, "decay", real_scalar(self.decay, f"EMA(decay={self.decay!r})"))
    if not 0.0 <= self.decay < 1.0:
      raise ValueError(f"EMA(decay={self.decay}) must be in [0, 1), e.g. 0.99.")


CalibrationMethod = Union[AbsMax, MinMax, Percentile, MSE, KL, EMA]
CALIBRATION_METHODS = (AbsMax, MinMax, Percentile, MSE, KL, EMA)
