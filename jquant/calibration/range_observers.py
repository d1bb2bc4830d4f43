"""Running-range observers: AbsMax, MinMax (running extremes) and EMA (moving average of per-batch extremes)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jquant.calibration import base
from jquant.core import calibration_methods as cm
from jquant.core.spec import QuantSpec


class RangeState(NamedTuple):
  """State of the AbsMax / MinMax / EMA observers.

  Attributes:
    lo: (*scale_shape) float32: running min (asymmetric) or -absmax (symmetric).
    hi: (*scale_shape) float32: running max (asymmetric) or absmax (symmetric).
    count: () int32, batches observed.
    nonfinite: () int32, NaN/inf values seen under jit (left out of lo/hi).
  """

  lo: jax.Array
  hi: jax.Array
  count: jax.Array
  nonfinite: jax.Array


def _batch_range(t, valid, symmetric: bool):
  """Per-tile (lo, hi) of one batch; non-finite entries ignored."""
  if symmetric:
    hi = jnp.max(jnp.abs(t), axis=-1)     # non-finite entries were zeroed: neutral for absmax
    return -hi, hi
  lo = jnp.min(jnp.where(valid, t, jnp.inf), axis=-1)
  hi = jnp.max(jnp.where(valid, t, -jnp.inf), axis=-1)
  return lo, hi


def _range_observer(spec: QuantSpec, what: str, combine) -> base.Observer:
  base.check_static_spec(spec, what)

  def init_state(shape):
    z = jnp.zeros((), jnp.int32)
    if spec.symmetric:
      return RangeState(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), z, z)
    inf = jnp.full(shape, jnp.inf, jnp.float32)
    return RangeState(inf, -inf, z, z)

  def step(state, t, valid, bad):
    lo, hi = combine(state, *_batch_range(t, valid, spec.symmetric))
    return RangeState(lo.astype(jnp.float32), hi.astype(jnp.float32), state.count + 1, state.nonfinite + bad)

  return base.make_observer(spec, what, RangeState, init_state, step, lambda s: (s.lo, s.hi))


def _running(s, lo, hi):
  return jnp.minimum(s.lo, lo), jnp.maximum(s.hi, hi)


def absmax_observer(spec: QuantSpec) -> base.Observer:
  """Running per-tile max of ``|x|`` (symmetric specs): after batches x_1..x_n it equals AbsMax of their concat."""
  if not spec.symmetric:
    raise ValueError("absmax_observer: spec is asymmetric; use minmax_observer (calibration=jq.MinMax()).")
  return _range_observer(spec, "absmax_observer", _running)


def minmax_observer(spec: QuantSpec) -> base.Observer:
  """Running per-tile min and max (asymmetric specs); finalize widens the range to contain 0."""
  if spec.symmetric:
    raise ValueError("minmax_observer: spec is symmetric; use absmax_observer (calibration=jq.AbsMax()).")
  return _range_observer(spec, "minmax_observer", _running)


def ema_observer(spec: QuantSpec) -> base.Observer:
  """Exponential moving average of the per-batch absmax (symmetric) or min / max (asymmetric).

  ``r_1 = m_1`` (the first batch initialises, so no bias correction is needed), ``r_k = d * r_{k-1} + (1 - d) * m_k``
  with ``d = spec.calibration.decay`` (``EMA(decay)``; other methods use decay 0.99).
  """
  decay = float(spec.calibration.decay) if isinstance(spec.calibration, cm.EMA) else 0.99

  def combine(s, lo, hi):
    first = s.count == 0
    return (jnp.where(first, lo, decay * s.lo + (1.0 - decay) * lo),
            jnp.where(first, hi, decay * s.hi + (1.0 - decay) * hi))

  return _range_observer(spec, "ema_observer", combine)
