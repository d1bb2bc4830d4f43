"""AbsMax / MinMax / EMA observers against NumPy float64 statistics over the concatenated batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import calibration as cal
from tests.calibration import np_ref

GRANS = [jq.PerTensor(), jq.PerChannel(axis=-1), jq.PerGroup(axis=-1, size=8), jq.PerBlock((4, 8))]


def _batches(rng, n=4, shape=(8, 16)):
  """Batches with different spreads so the running range changes mid-stream."""
  return [(rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.uniform(-1, 1)).astype(np.float32)
          for _ in range(n)]


def _run(obs, xs, jit=True):
  update = jax.jit(obs.update) if jit else obs.update
  state = obs.init(xs[0])
  for x in xs:
    state = update(state, x)
  return state


def _tile_stats(xs, gran):
  """The tiles (*scale_shape, T) of each batch, float64."""
  return [np_ref.tiles(x, gran.block_shape(x.shape)) for x in xs]


@pytest.mark.parametrize("gran", GRANS, ids=repr)
def test_absmax_equals_concatenation(rng, gran):
  xs = _batches(rng)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=gran)
  obs = cal.observer(spec)
  state = _run(obs, xs)
  want = np.max([np.abs(t).max(-1) for t in _tile_stats(xs, gran)], axis=0)
  np.testing.assert_array_equal(np.asarray(state.hi, np.float64), want)
  scale, zp = obs.finalize(state)
  assert zp is None and scale.shape == jq.core.scale_shape(gran, xs[0].shape)
  np.testing.assert_allclose(scale, want / 127.0, rtol=1e-6)


@pytest.mark.parametrize("gran", GRANS, ids=repr)
def test_minmax_equals_concatenation(rng, gran):
  xs = _batches(rng)
  spec = jq.QuantSpec(qtype=jq.UINT8, granularity=gran, symmetric=False)
  obs = cal.observer(spec)
  state = _run(obs, xs, jit=False)
  ts = _tile_stats(xs, gran)
  lo, hi = np.min([t.min(-1) for t in ts], axis=0), np.max([t.max(-1) for t in ts], axis=0)
  np.testing.assert_array_equal(np.asarray(state.lo, np.float64), lo)
  np.testing.assert_array_equal(np.asarray(state.hi, np.float64), hi)
  scale, zp = obs.finalize(state)
  ws, wz = np_ref.int_qparams(lo, hi, 0, 255, False)
  np.testing.assert_allclose(scale, ws, rtol=1e-6)
  np.testing.assert_array_equal(zp, wz)


def test_per_channel_static_matches_dynamic_on_concat(rng):
  """PerChannel over (tokens, features) batches: observer params == dynamic params of the concatenation,
  and batches of different token counts are accepted (the scale shape does not depend on the token count)."""
  xs = [rng.standard_normal((n, 16)).astype(np.float32) * 2 for n in (8, 3, 8, 5)]
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=-1), symmetric=False)
  obs = cal.observer(spec)
  state = obs.init(xs[0])
  for x in xs:
    state = obs.update(state, x)
  scale, zp = obs.finalize(state)
  cat = np.concatenate(xs)
  ds, dz = jq.core.compute_qparams(jnp.asarray(cat), spec)
  np.testing.assert_array_equal(scale, ds)
  np.testing.assert_array_equal(zp, dz)
  qa = jq.quantize(cat, spec, scale=scale, zero_point=zp)
  np.testing.assert_array_equal(jq.dequantize(qa), jq.dequantize(jq.quantize(cat, spec)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_ema_matches_numpy_recurrence(rng, symmetric):
  decay = float(rng.uniform(0.5, 0.95))
  xs = _batches(rng, n=5)
  gran = jq.PerChannel(axis=-1)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=gran, symmetric=symmetric, calibration=jq.EMA(decay))
  obs = cal.observer(spec)
  state = _run(obs, xs)
  ts = _tile_stats(xs, gran)
  if symmetric:
    want_hi = np_ref.ema([np.abs(t).max(-1) for t in ts], decay)
    np.testing.assert_allclose(state.hi, want_hi, rtol=1e-5)
    np.testing.assert_allclose(obs.finalize(state)[0], want_hi / 127.0, rtol=1e-5)
  else:
    want_lo = np_ref.ema([t.min(-1) for t in ts], decay)
    want_hi = np_ref.ema([t.max(-1) for t in ts], decay)
    np.testing.assert_allclose(state.lo, want_lo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.hi, want_hi, rtol=1e-5, atol=1e-6)
    scale, zp = obs.finalize(state)
    ws, wz = np_ref.int_qparams(want_lo, want_hi, -128, 127, False)
    np.testing.assert_allclose(scale, ws, rtol=1e-5)
    assert np.max(np.abs(np.asarray(zp) - wz)) <= 1


def test_ema_single_batch_equals_absmax(rng):
  x = _batches(rng, n=1)[0]
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(), calibration=jq.EMA(0.9))
  obs = cal.observer(spec)
  scale, _ = obs.finalize(obs.update(obs.init(x), x))
  np.testing.assert_allclose(scale, np.abs(x.astype(np.float64)).max().reshape(1, 1) / 127.0, rtol=1e-6)


def test_scale_dtype_rounding(rng):
  xs = _batches(rng)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), symmetric=False, scale_dtype="bfloat16")
  obs = cal.observer(spec)
  scale, zp = obs.finalize(_run(obs, xs))
  cat = np.concatenate(xs)
  ds, dz = jq.core.compute_qparams(jnp.asarray(cat), spec)
  np.testing.assert_array_equal(scale, ds)
  np.testing.assert_array_equal(zp, dz)
