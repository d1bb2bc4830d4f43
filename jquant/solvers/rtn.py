"""Round-to-nearest: the no-calibration baseline every solver is compared with."""

from __future__ import annotations

from jquant.core.qarray import QArray
from jquant.core.quantize import check_float_array, quantize
from jquant.core.spec import QuantSpec


def rtn(w, spec: QuantSpec) -> QArray:
  """Quantizes ``w`` to the nearest grid point of ``spec`` (``jq.quantize`` with the solver-style checks).

  Args:
    w: floating weight, e.g. a Flax kernel (K, N).
    spec: the weight QuantSpec (e.g. INT4 with ``PerGroup(axis=0, size=128)``).

  Returns:
    The `QArray`.

  Raises:
    TypeError: ``spec`` is not a QuantSpec, or ``w`` is not floating.
    ValueError: NaN/inf in ``w``, a scalar ``w``, or a granularity that does not fit ``w`` (e.g. a group size that
      does not divide the axis).
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"rtn: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  w = check_float_array(w, "w")
  if w.ndim == 0:
    raise ValueError("rtn: w is a scalar; pass a weight array such as a (K, N) kernel.")
  return quantize(w, spec)
