"""The observer protocol: a NamedTuple of pure ``init`` / ``update`` / ``finalize`` functions, plus `chain`.

An observer accumulates range statistics of activations over calibration batches (static quantization):

    obs = jq.calibration.observer(spec)
    state = obs.init(x0)                 # NamedTuple of fixed-shape arrays
    for x in batches:
      state = obs.update(state, x)       # pure; works under jax.jit and as a lax.scan body
    scale, zero_point = obs.finalize(state)
    qa = jq.quantize(x, spec, scale=scale, zero_point=zero_point)

Every state carries ``count`` (batches seen) and ``nonfinite`` (NaN/inf values seen while traced). Eagerly,
``update`` raises on NaN/inf and ``finalize`` raises on an empty or non-finite calibration; under ``jax.jit`` the
non-finite values are left out of the statistics, counted in ``state.nonfinite``, and a traced ``finalize``
returns a NaN scale for such states (check ``state.count`` / ``state.nonfinite`` outside jit).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import ranges, tiling
from jquant.core.granularity import PerToken, scale_shape
from jquant.core.quantize import check_finite, check_float_array
from jquant.core.spec import QuantSpec


class Observer(NamedTuple):
  """A calibration observer: three pure, jittable functions.

  Attributes:
    init: ``init(x_example) -> state``; the state's shapes follow ``x_example``'s scale shape.
    update: ``update(state, x) -> state`` for one batch ``x``.
    finalize: ``finalize(state) -> (scale, zero_point)``, both of shape ``spec.granularity.scale_shape(x.shape)``
      (zero_point None for symmetric specs), ready for ``jq.quantize(x, spec, scale=, zero_point=)``.
  """

  init: Callable[[jax.Array], Any]
  update: Callable[[Any, jax.Array], Any]
  finalize: Callable[[Any], Any]


def chain(*observers: Observer) -> Observer:
  """Runs several observers on the same batches; the state and the finalized params are tuples, one per observer.

  Raises:
    TypeError: an argument is not an `Observer`.
    ValueError: no observers, or (at update/finalize) a state that is not the tuple this chain's init returned.
  """
  if not observers:
    raise ValueError("chain() needs at least one observer, e.g. chain(observer(spec_a), observer(spec_b)).")
  for i, o in enumerate(observers):
    if not isinstance(o, Observer):
      raise TypeError(f"chain(): argument {i} is a {type(o).__name__}, expected a jq.calibration.Observer "
                      "(build one with jq.calibration.observer(spec)).")

  def check(states, where):
    if not isinstance(states, tuple) or len(states) != len(observers):
      got = f"{len(states)} states" if isinstance(states, tuple) else f"a {type(states).__name__}"
      raise ValueError(f"chain().{where} got {got} for {len(observers)} observers; pass the state returned "
                       "by this chain's init().")

  def init(x):
    return tuple(o.init(x) for o in observers)

  def update(states, x):
    check(states, "update")
    return tuple(o.update(s, x) for o, s in zip(observers, states))

  def finalize(states):
    check(states, "finalize")
    return tuple(o.finalize(s) for o, s in zip(observers, states))

  return Observer(init, update, finalize)


def check_static_spec(spec: QuantSpec, what: str) -> None:
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"{what}: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  if isinstance(spec.granularity, PerToken):
    raise ValueError(f"{what}: PerToken() ranges change with every batch (tokens differ), so they cannot be "
                     "calibrated statically; use jq.calibration.dynamic_per_token(x, spec) at run time, or a "
                     "static granularity such as jq.PerTensor() or jq.PerChannel(axis=-1).")


def make_observer(spec: QuantSpec, what: str, state_type: type, init_state, step, final_range) -> Observer:
  """Builds an `Observer` from its pure parts, adding the input checks and a compiled fast path.

  Args:
    spec: the (static-granularity) spec.
    what: the observer's name, for messages.
    state_type: the NamedTuple type of the state; it has ``count`` and ``nonfinite`` fields.
    init_state: ``scale_shape -> state``.
    step: ``(state, tiles, valid, n_nonfinite) -> state``; ``tiles`` (*scale_shape, T) float32 with non-finite
      entries zeroed and ``valid`` False there.
    final_range: ``state -> (lo, hi)`` of scale shape.

  ``update`` / ``finalize`` validate in Python (shapes, state type; NaN/inf and emptiness when called eagerly),
  then run one jitted computation, so eager use compiles once per batch shape and nesting them in a user's
  ``jax.jit`` / ``lax.scan`` inlines it.
  """

  def shape_of(state):
    return tuple(state.lo.shape)

  @jax.jit
  def _update(state, x):
    t = tiling.to_tiles(x.astype(jnp.float32), spec.granularity.block_shape(x.shape))
    valid = jnp.isfinite(t)
    return step(state, jnp.where(valid, t, 0.0), valid, jnp.sum(~valid).astype(jnp.int32))

  @jax.jit
  def _finalize(state):
    lo, hi = final_range(state)
    return params_from_range(state, lo, hi, spec)

  def init(x_example):
    x = check_float_array(x_example, "x_example")
    if x.ndim == 0:
      raise ValueError(f"{what}.init: got a scalar example; pass a batch of rank >= 1 such as (tokens, features).")
    return init_state(scale_shape(spec.granularity, x.shape))

  def update(state, x):
    _check_state(state, state_type, what, "update")
    x = check_float_array(x)
    expected = shape_of(state)
    if x.ndim != len(expected):
      raise ValueError(f"{what}.update: batch has shape {tuple(x.shape)} (rank {x.ndim}) but the observer was "
                       f"initialised for rank {len(expected)} (scale shape {expected}); feed batches shaped like "
                       "the init() example.")
    got = scale_shape(spec.granularity, x.shape)
    if got != expected:
      raise ValueError(f"{what}.update: batch of shape {tuple(x.shape)} gives scale shape {got} under "
                       f"{spec.granularity}, but the observer holds scale shape {expected}; batch shapes may only "
                       "change along axes that the granularity reduces over (e.g. the token axis for PerChannel).")
    check_finite(x, "calibration batch")   # eager: raises; traced: counted in state.nonfinite
    return _update(state, x)

  def finalize(state):
    _check_state(state, state_type, what, "finalize")
    if not (isinstance(state.count, jax.core.Tracer) or isinstance(state.nonfinite, jax.core.Tracer)):
      if int(state.count) == 0:
        raise ValueError(f"{what}.finalize: no calibration batches were observed; feed at least one batch "
                         "with state = observer.update(state, x) before finalize.")
      if int(state.nonfinite) > 0:
        raise ValueError(f"{what}.finalize: {int(state.nonfinite)} NaN/inf values were seen during calibration "
                         "(they were left out of the statistics); fix the inputs or clean them with "
                         "jnp.nan_to_num.")
      scale, zp = _finalize(state)
      _raise_if_unusable(scale, final_range(state), spec, what)
      return scale, zp
    return _finalize(state)

  return Observer(init, update, finalize)


def _check_state(state, state_type: type, what: str, where: str) -> None:
  if not isinstance(state, state_type):
    raise TypeError(f"{what}.{where}: state is a {type(state).__name__}, expected the {state_type.__name__} "
                    f"returned by this observer's init().")


def _raise_if_unusable(scale, lo_hi, spec: QuantSpec, what: str) -> None:
  """Eager finalize: a NaN scale of a clean state means the range has no scale ``scale_dtype`` can store."""
  scale = np.asarray(scale)
  if not np.isnan(scale).any():
    return
  lo, hi = (np.asarray(a, np.float64) for a in lo_hi)
  idx = tuple(int(i) for i in np.argwhere(np.isnan(scale))[0])
  raise ValueError(
      f"{what}.finalize: tile {idx} (of scale shape {scale.shape}) has the range [{lo[idx]:.4g}, {hi[idx]:.4g}], "
      f"whose {spec.qtype.name} scale does not fit scale_dtype={spec.scale_dtype!r} (it would overflow to inf or "
      f"underflow to 0; {int(np.isnan(scale).sum())} of {scale.size} scales are affected). Fix: store scales as "
      "float32 (scale_dtype='float32'), or rescale the values (divide by a power of two and fold it into the next "
      "op).")


def params_from_range(state, lo, hi, spec: QuantSpec):
  """(scale, zero_point) from a finalized range.

  NaN where the state is empty or saw non-finite values, and where the scale is not usable once stored as
  ``spec.scale_dtype`` (a float16 scale of a 1e7 range overflows to inf, one of a 1e-9 range flushes to 0): the
  eager ``finalize`` turns those into a ValueError; under jit the NaN reaches every value quantized with it.
  """
  qt = spec.qtype
  scale, zp = ranges.scale_from_range(lo, hi, qt, spec.symmetric)
  if spec.scale_dtype != "float32":
    scale = scale.astype(spec.scale_jnp_dtype).astype(jnp.float32)
    if zp is not None:
      zp = jnp.clip(jnp.round(qt.qmin - jnp.minimum(lo, 0.0) / scale), qt.qmin, qt.qmax)
  scale = jnp.where(ranges.usable_scale(scale), scale, jnp.nan)
  ok = (state.count > 0) & (state.nonfinite == 0)
  scale = jnp.where(ok, scale, jnp.nan)
  if zp is not None:
    zp = jnp.where(ok, zp, jnp.nan)
  return scale, zp
