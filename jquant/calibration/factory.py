"""`observer(spec)`: the observer for a spec's calibration method, and `calibrate` to run one over stacked batches."""

from __future__ import annotations

import jax

from jquant.calibration import base, histogram_observers, range_observers
from jquant.core import calibration_methods as cm
from jquant.core.spec import QuantSpec


def observer(spec: QuantSpec, *, bins: int | None = None) -> base.Observer:
  """The static-calibration observer for ``spec.calibration``.

  =============  ==============================================================================
  AbsMax         running per-tile absmax (exact)
  MinMax         running per-tile min / max (exact)
  EMA(decay)     moving average of per-batch absmax or min / max; the first batch initialises
  Percentile(q)  percentile of a streaming per-tile histogram (``bins``, default 2048)
  MSE(grid)      clip ratio minimising the quantization MSE of the streaming histogram
  KL(bins)       TensorRT entropy threshold of the streaming ``|x|`` histogram
  =============  ==============================================================================

  Args:
    spec: the activation spec; its granularity must be static (PerTensor, PerChannel, PerGroup, PerBlock).
    bins: histogram bins for Percentile / MSE (default 2048) or an override of ``KL(bins)``; ignored otherwise.

  Returns:
    An `Observer`; its ``finalize`` gives ``(scale, zero_point)`` of shape ``spec.granularity.scale_shape(x.shape)``.

  Raises:
    TypeError: ``spec`` is not a QuantSpec.
    ValueError: a PerToken spec (ranges differ per batch: use `dynamic_per_token`), or bad ``bins``.
  """
  base.check_static_spec(spec, "observer")
  method = spec.calibration
  if isinstance(method, cm.AbsMax):
    return range_observers.absmax_observer(spec)
  if isinstance(method, cm.MinMax):
    return range_observers.minmax_observer(spec)
  if isinstance(method, cm.EMA):
    return range_observers.ema_observer(spec)
  if isinstance(method, cm.KL):
    return histogram_observers.kl_observer(spec, bins=bins)
  b = histogram_observers.DEFAULT_BINS if bins is None else bins
  if isinstance(method, cm.Percentile):
    return histogram_observers.percentile_observer(spec, bins=b)
  return histogram_observers.mse_observer(spec, bins=b)


def calibrate(obs: base.Observer, batches: jax.Array):
  """Runs ``obs`` over stacked batches with one ``lax.scan`` and finalizes.

  Args:
    obs: an `Observer`.
    batches: (n_batches, *batch_shape) floating array.

  Returns:
    ``obs.finalize(state)`` after all batches, e.g. ``(scale, zero_point)``.
  """
  if not isinstance(obs, base.Observer):
    raise TypeError(f"calibrate: obs is a {type(obs).__name__}, expected a jq.calibration.Observer.")
  if not hasattr(batches, "ndim") or batches.ndim < 2 or batches.shape[0] < 1:
    shape = getattr(batches, "shape", None)
    raise ValueError(f"calibrate: batches must be stacked as (n_batches >= 1, *batch_shape), got shape {shape}.")
  state = jax.lax.scan(lambda s, x: (obs.update(s, x), None), obs.init(batches[0]), batches)[0]
  return obs.finalize(state)
