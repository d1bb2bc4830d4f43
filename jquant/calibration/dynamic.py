"""Dynamic (run-time) activation quantization helpers."""

from __future__ import annotations

from jquant.core import calibration_methods as cm
from jquant.core.granularity import PerToken
from jquant.core.qarray import QArray
from jquant.core.quantize import quantize
from jquant.core.spec import QuantSpec


def dynamic_per_token(x, spec: QuantSpec) -> QArray:
  """Quantizes activations with one range per token, computed from ``x`` at run time (jittable).

  Args:
    x: (..., features) floating activations.
    spec: a PerToken spec; its calibration (AbsMax for symmetric, MinMax for asymmetric, or a clipping method such
      as Percentile) is applied to each token's features.

  Returns:
    A `QArray` with scale (and zero point) of shape ``(..., 1)``.

  Raises:
    TypeError: ``spec`` is not a QuantSpec or ``x`` is not floating.
    ValueError: ``spec.granularity`` is not PerToken, or ``x`` is a scalar / holds NaN or inf (eager).
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"dynamic_per_token: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  if not isinstance(spec.granularity, PerToken):
    raise ValueError(f"dynamic_per_token: spec.granularity is {spec.granularity}; pass "
                     "spec.replace(granularity=jq.PerToken()).")
  if isinstance(spec.calibration, cm.EMA):
    spec = spec.replace(calibration=cm.AbsMax() if spec.symmetric else cm.MinMax())   # EMA of one batch
  return quantize(x, spec)
