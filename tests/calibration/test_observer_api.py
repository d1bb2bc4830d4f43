"""Observer protocol: jit / lax.scan / trace counts, chain, dynamic_per_token, and bad inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import calibration as cal
from tests.calibration import np_ref

METHODS = [(jq.AbsMax(), True), (jq.MinMax(), False), (jq.EMA(0.8), False), (jq.Percentile(99.5), True),
           (jq.Percentile(99.5), False), (jq.MSE(grid=20), True), (jq.KL(bins=256), True)]


def _spec(method, symmetric, gran=jq.PerChannel(axis=-1)):
  return jq.QuantSpec(qtype=jq.INT8 if symmetric else jq.UINT8, granularity=gran, symmetric=symmetric,
                      calibration=method)


@pytest.mark.parametrize("method,symmetric", METHODS, ids=str)
def test_jit_traces_once_and_scan_matches_loop(rng, method, symmetric):
  spec = _spec(method, symmetric)
  obs = cal.observer(spec, bins=256) if not isinstance(method, jq.KL) else cal.observer(spec)
  xs = np.stack([rng.standard_normal((8, 4)).astype(np.float32) * s for s in (1.0, 2.5, 0.7)])
  chex.clear_trace_counter()    # the counter is keyed by the function's code, shared across parametrized runs

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, x):
    return obs.update(state, x)

  state0 = obs.init(xs[0])
  state = state0
  for x in xs:
    state = step(state, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
  assert int(state.count) == len(xs)
  loop = obs.finalize(state)
  scanned = jax.jit(lambda b: cal.calibrate(obs, b))(xs)
  chex.assert_trees_all_close(scanned, loop, rtol=1e-6, atol=0)   # scan vs loop may fuse EMA differently
  assert loop[0].shape == (1, 4)
  qa = jq.quantize(xs[0], spec, scale=loop[0], zero_point=loop[1])
  assert qa.shape == xs[0].shape


def test_finalize_under_jit_and_group_granularity(rng):
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=-1, size=4), calibration=jq.MSE(grid=10))
  obs = cal.observer(spec, bins=64)
  xs = rng.standard_normal((3, 6, 8)).astype(np.float32)
  scale, zp = jax.jit(lambda b: cal.calibrate(obs, b))(xs)
  assert scale.shape == (6, 2) and zp is None
  eager, _ = cal.calibrate(obs, xs)
  np.testing.assert_array_equal(scale, eager)


def test_chain_runs_each_observer(rng):
  xs = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3)]
  a, b = _spec(jq.AbsMax(), True), _spec(jq.MinMax(), False, jq.PerTensor())
  ch = cal.chain(cal.observer(a), cal.observer(b))
  state = ch.init(xs[0])
  for x in xs:
    state = jax.jit(ch.update)(state, x)
  (sa, za), (sb, zb) = ch.finalize(state)
  cat = np.concatenate(xs).astype(np.float64)
  assert za is None
  np.testing.assert_allclose(sa, np.abs(cat).max(0, keepdims=True) / 127.0, rtol=1e-6)
  ws, wz = np_ref.int_qparams(cat.min(), cat.max(), 0, 255, False)
  np.testing.assert_allclose(sb, np.reshape(ws, (1, 1)), rtol=1e-6)
  np.testing.assert_array_equal(zb, np.reshape(wz, (1, 1)))
  with pytest.raises(ValueError, match="got 1 states for 2 observers"):
    ch.update(state[:1], xs[0])
  with pytest.raises(ValueError, match="for 2 observers"):
    ch.finalize(state[0])
  with pytest.raises(TypeError, match="argument 1"):
    cal.chain(cal.observer(a), a)
  with pytest.raises(ValueError, match="at least one observer"):
    cal.chain()


@pytest.mark.parametrize("symmetric", [True, False])
def test_dynamic_per_token_matches_numpy(rng, symmetric):
  x = (rng.standard_normal((2, 5, 16)) * rng.uniform(0.1, 4.0, (2, 5, 1)) + (0 if symmetric else 0.5))
  x = x.astype(np.float32)
  qt = jq.INT8 if symmetric else jq.UINT8
  spec = jq.QuantSpec(qtype=qt, granularity=jq.PerToken(), symmetric=symmetric)
  qa = jax.jit(cal.dynamic_per_token, static_argnums=1)(x, spec)
  assert qa.scale.shape == (2, 5, 1)
  t = x.astype(np.float64)
  if symmetric:
    s, z = np_ref.int_qparams(None, np.abs(t).max(-1), qt.qmin, qt.qmax, True)
  else:
    s, z = np_ref.int_qparams(t.min(-1), t.max(-1), qt.qmin, qt.qmax, False)
  want = np_ref.int_fake_quant(t, s, z, qt.qmin, qt.qmax)
  np.testing.assert_allclose(jq.dequantize(qa, jnp.float32), want, rtol=1e-5, atol=1e-6)
  ema = cal.dynamic_per_token(x, spec.replace(calibration=jq.EMA(0.5)))
  np.testing.assert_array_equal(ema.qvalue, qa.qvalue)


# ---------------------------------------------------------------------------------------------- bad input


def test_dynamic_per_token_bad_input(rng):
  x = rng.standard_normal((4, 8)).astype(np.float32)
  with pytest.raises(ValueError, match="PerToken"):
    cal.dynamic_per_token(x, jq.QuantSpec(qtype=jq.INT8))
  with pytest.raises(TypeError, match="QuantSpec"):
    cal.dynamic_per_token(x, "int8")
  x[1, 2] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    cal.dynamic_per_token(x, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()))


@pytest.mark.parametrize("method,symmetric", METHODS[:4], ids=str)
def test_empty_calibration_raises(rng, method, symmetric):
  obs = cal.observer(_spec(method, symmetric))
  state = obs.init(rng.standard_normal((8, 4)).astype(np.float32))
  with pytest.raises(ValueError, match="feed at least one batch"):
    obs.finalize(state)
  scale, _ = jax.jit(obs.finalize)(state)       # traced: cannot raise, flags with NaN
  assert np.isnan(np.asarray(scale)).all()


def test_nonfinite_batches(rng):
  obs = cal.observer(_spec(jq.Percentile(99.0), True), bins=64)
  good = rng.standard_normal((8, 4)).astype(np.float32)
  bad = good.copy()
  bad[2, 1], bad[5, 3] = np.inf, np.nan
  state = obs.update(obs.init(good), good)
  with pytest.raises(ValueError, match="2 NaN/inf values"):
    obs.update(state, bad)                      # eager: raises at once
  flagged = jax.jit(obs.update)(state, bad)      # traced: counted, left out of the histogram
  assert int(flagged.nonfinite) == 2
  assert int(flagged.pos.sum() + flagged.neg.sum()) == 2 * good.size - 2
  with pytest.raises(ValueError, match="2 NaN/inf values were seen"):
    obs.finalize(flagged)
  assert np.isnan(np.asarray(jax.jit(obs.finalize)(flagged)[0])).all()


def test_shape_and_state_errors(rng):
  obs = cal.observer(_spec(jq.AbsMax(), True))
  state = obs.init(rng.standard_normal((8, 4)).astype(np.float32))
  with pytest.raises(ValueError, match=r"scale shape \(1, 5\)"):
    obs.update(state, rng.standard_normal((8, 5)).astype(np.float32))
  with pytest.raises(ValueError, match="rank 3"):
    obs.update(state, rng.standard_normal((2, 8, 4)).astype(np.float32))
  with pytest.raises(TypeError, match="RangeState"):
    obs.update((state,), rng.standard_normal((8, 4)).astype(np.float32))
  with pytest.raises(TypeError, match="floating"):
    obs.update(state, np.ones((8, 4), np.int32))
  with pytest.raises(ValueError, match="scalar"):
    obs.init(np.float32(1.0))
  hobs = cal.observer(_spec(jq.MSE(), True))
  with pytest.raises(TypeError, match="HistogramState"):
    hobs.finalize(state)
  with pytest.raises(TypeError, match="RangeState"):
    obs.finalize(hobs.init(np.ones((8, 4), np.float32)))


def test_spec_errors():
  with pytest.raises(ValueError, match="dynamic_per_token"):
    cal.observer(jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()))
  with pytest.raises(TypeError, match="QuantSpec"):
    cal.observer("int8")
  with pytest.raises(ValueError, match="bins=8"):
    cal.observer(_spec(jq.Percentile(99.0), True), bins=8)
  with pytest.raises(ValueError, match="bins >= 128"):
    cal.observer(_spec(jq.KL(bins=64), True))
  with pytest.raises(ValueError, match="asymmetric"):
    cal.absmax_observer(_spec(jq.MinMax(), False))
  with pytest.raises(ValueError, match="symmetric"):
    cal.minmax_observer(_spec(jq.AbsMax(), True))
  with pytest.raises(ValueError, match="symmetric integer"):
    cal.kl_observer(_spec(jq.Percentile(99.0), False))
  with pytest.raises(ValueError, match="n_batches >= 1"):
    cal.calibrate(cal.observer(_spec(jq.AbsMax(), True)), np.ones((4,), np.float32))
  with pytest.raises(TypeError, match="Observer"):
    cal.calibrate(lambda x: x, np.ones((2, 4, 4), np.float32))


def test_core_kl_with_too_few_bins_raises(rng):
  """jquant/core/ranges.py fix: KL(bins) below qmax + 1 used to fail inside argmin with an opaque message."""
  x = rng.standard_normal((16, 16)).astype(np.float32)
  with pytest.raises(ValueError, match="bins >= 128"):
    jq.quantize(x, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(), calibration=jq.KL(bins=64)))
