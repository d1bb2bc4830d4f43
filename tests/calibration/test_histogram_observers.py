"""Percentile / MSE / KL observers: streaming histograms vs NumPy float64 statistics of the concatenated batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import calibration as cal
from tests.calibration import np_ref


def _growing_batches(rng, n=4, shape=(16, 8)):
  """Batches whose absmax grows (forces rebinning) with a mean offset (asymmetric data)."""
  spreads = np.sort(rng.uniform(0.3, 5.0, n))
  return [(rng.standard_normal(shape) * s + 0.3 * s).astype(np.float32) for s in spreads]


def _run(obs, xs):
  update = jax.jit(obs.update)
  state = obs.init(xs[0])
  for x in xs:
    state = update(state, x)
  return state


def _cat_tiles(xs, gran):
  return np.concatenate([np_ref.tiles(x, gran.block_shape(x.shape)) for x in xs], axis=-1)


@pytest.mark.parametrize("gran", [jq.PerTensor(), jq.PerChannel(axis=-1)], ids=repr)
def test_streaming_histogram_is_exact_after_rebinning(rng, gran):
  bins = 64
  xs = _growing_batches(rng)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=gran, calibration=jq.Percentile(99.0))
  state = _run(cal.observer(spec, bins=bins), xs)
  t = _cat_tiles(xs, gran)
  t = t.reshape(-1, t.shape[-1])
  first = np.abs(np_ref.tiles(xs[0], gran.block_shape(xs[0].shape))).reshape(t.shape[0], -1).max(-1)
  rngs = np.asarray(state.range).reshape(-1)
  for p in range(t.shape[0]):
    amax = np.abs(t[p]).max()
    k = np.log2(rngs[p] / np.float32(first[p]))
    assert k == np.round(k) and amax <= rngs[p] < 2 * amax + 1e-6, (rngs[p], first[p], amax)
    tp = t[p].astype(np.float32)
    for h, vals in ((state.pos, tp[tp >= 0]), (state.neg, -tp[tp < 0])):
      h = np.asarray(h).reshape(-1, bins + 1)[p]          # last entry: values exactly at the range
      np.testing.assert_array_equal(np.concatenate([h[:-2], h[-2:-1] + h[-1:]]), np_ref.histogram(vals, rngs[p], bins))
  np.testing.assert_array_equal(np.asarray(state.lo).reshape(-1), t.min(-1))
  np.testing.assert_array_equal(np.asarray(state.hi).reshape(-1), t.max(-1))


def _order_stat(t, frac):
  """Per tile: the value of rank ceil(frac * n) (1-based), the target rank computed in float32 like the observer."""
  n = t.shape[-1]
  k = int(np.ceil(np.float32(frac) * np.float32(n)))
  return np.sort(t, axis=-1)[..., max(k, 1) - 1]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bins", [128, 2048])
def test_percentile_within_one_bin_of_order_statistic(rng, symmetric, bins):
  q = float(rng.uniform(97.0, 99.9))
  gran = jq.PerChannel(axis=-1)
  xs = _growing_batches(rng, shape=(64, 4))
  qt = jq.INT8 if symmetric else jq.UINT8
  spec = jq.QuantSpec(qtype=qt, granularity=gran, symmetric=symmetric, calibration=jq.Percentile(q))
  obs = cal.observer(spec, bins=bins)
  state = _run(obs, xs)
  scale, zp = obs.finalize(state)
  t = _cat_tiles(xs, gran)
  width = np.asarray(state.range, np.float64) / bins
  if symmetric:
    got = np.asarray(scale, np.float64) * 127.0
    np.testing.assert_array_less(np.abs(got - _order_stat(np.abs(t), q / 100.0)), width * (1 + 1e-5))
    # and np.percentile (linear interpolation) lies within the neighbouring order statistics
    assert np.all(np.abs(got - np.percentile(np.abs(t), q, axis=-1)) < width + np.diff(np.sort(np.abs(t))).max())
  else:
    lo = _order_stat(t, 1.0 - q / 100.0)
    hi = _order_stat(t, q / 100.0)
    ws, wz = np_ref.int_qparams(lo, hi, 0, 255, False)
    # the observer's (lo, hi) are each within one width, so the span (scale * 255) is within two
    np.testing.assert_array_less(np.abs(np.asarray(scale, np.float64) - ws) * 255.0, 2 * width * (1 + 1e-5))
    assert zp.shape == scale.shape
    assert np.all(np.abs(np.asarray(zp) - wz) <= 1 + width / np.asarray(scale, np.float64))


@pytest.mark.parametrize("qt,symmetric", [(jq.INT8, True), (jq.INT4, True), (jq.UINT4, False)], ids=str)
def test_mse_observer_near_exact_search(rng, qt, symmetric):
  """The histogram search reaches the exact (all-values) optimum within 5 % of its squared error (heavy-tailed
  Student-t on 384 samples per channel: the bin resolution alone has cost up to ~3 %)."""
  gran = jq.PerChannel(axis=-1)
  xs = [rng.standard_t(3.0, (128, 4)).astype(np.float32) * s for s in (1.0, 2.0, 1.5)]
  spec = jq.QuantSpec(qtype=qt, granularity=gran, symmetric=symmetric, calibration=jq.MSE(grid=50))
  obs = cal.observer(spec)
  scale, zp = obs.finalize(_run(obs, xs))
  t = _cat_tiles(xs, gran)                                   # (1, 4, T)
  best_err, _ = np_ref.mse_search(t, qt.qmin, qt.qmax, symmetric, 50, 0.2)
  zz = None if zp is None else np.asarray(zp, np.float64)
  err = ((np_ref.int_fake_quant(t, np.asarray(scale, np.float64), zz, qt.qmin, qt.qmax) - t) ** 2).sum(-1)
  np.testing.assert_array_less(err, best_err * 1.05 + 1e-9)


def test_kl_equals_dynamic_when_first_batch_holds_the_max(rng):
  gran = jq.PerTensor()
  xs = [rng.standard_t(3.0, (64, 16)).astype(np.float32) for _ in range(3)]
  xs[0][3, 5] = 2.0 * max(np.abs(x).max() for x in xs)       # no rebinning after the first batch
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=gran, calibration=jq.KL(bins=512))
  obs = cal.observer(spec)
  state = _run(obs, xs)
  scale, _ = obs.finalize(state)
  dyn, _ = jq.core.compute_qparams(jnp.asarray(np.concatenate(xs)), spec)
  if np.allclose(scale, dyn, rtol=1e-6):
    return
  # Otherwise a value on a bin edge landed in the neighbouring bin (streamed vs one-shot float32 binning). On this
  # sparse histogram (3072 values, ~40 non-empty bins of 512) one count moving one bin can move the KL argmin far:
  # measured over 167 seeds, 3 differed (e.g. thresholds at bins 256 vs 128 and 231 vs 257), each time with the
  # histograms equal but for one edge value. So check what holds exactly: the streamed histogram is the NumPy
  # float64 histogram except for values within float32 rounding of a bin edge, and the streamed threshold minimises
  # the NumPy KL over the streamed histogram.
  width = float(state.range.reshape(())) / 512
  hist = np.asarray(state.pos + state.neg).reshape(-1)
  hist = np.concatenate([hist[:-2], hist[-2:-1] + hist[-1:]])
  a = np.abs(np.concatenate(xs).astype(np.float64)).ravel()
  ref, _ = np.histogram(a, bins=512, range=(0.0, 512 * width))
  on_edge = np.sum(np.abs(a / width - np.round(a / width)) < 1e-4)
  assert np.abs(hist - ref).sum() <= 2 * on_edge, (np.abs(hist - ref).sum(), on_edge)
  kls = np_ref.kl_divergences(hist, nq=128)
  i = int(np.round(float(np.asarray(scale).reshape(())) * 127 / width))
  assert kls[i] <= min(kls.values()) + 1e-9, (i, kls[i], min(kls.values()))


def test_kl_threshold_minimises_numpy_kl_over_streamed_histogram(rng):
  bins = 256
  xs = _growing_batches(rng, shape=(64, 8))
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerTensor(), calibration=jq.KL(bins=bins))
  obs = cal.observer(spec)
  state = _run(obs, xs)
  scale, _ = obs.finalize(state)
  width = float(state.range.reshape(())) / bins
  thr = float(scale.reshape(())) * 7.0
  hist = np.asarray(state.pos + state.neg).reshape(-1)
  hist = np.concatenate([hist[:-2], hist[-2:-1] + hist[-1:]])
  kls = np_ref.kl_divergences(hist, nq=8)
  amax = float(np.abs(np.concatenate(xs)).max())
  i = int(np.round(thr / width))
  if thr < amax * (1 - 1e-6):          # otherwise clamped at the absmax: any i with i * width >= amax
    assert abs(i * width - thr) <= 1e-4 * thr
    assert kls[i] <= min(kls.values()) + 1e-4, (i, kls[i], min(kls.values()))
  else:
    assert min(kls, key=kls.get) * width >= amax * (1 - 1e-6)


def _heavy(rng, df, n_batches, shape):
  return [rng.standard_t(df, shape).astype(np.float32) for _ in range(n_batches)]


def _mse_with(xs, spec, scale=None, zp=None):
  cat = np.concatenate(xs)
  qa = jq.quantize(cat, spec) if scale is None else jq.quantize(cat, spec, scale=scale, zero_point=zp)
  return float(np.mean((np.asarray(jq.dequantize(qa), np.float64) - cat) ** 2))


HEAVY_INT4 = [jq.Percentile(99.9), jq.MSE(), jq.KL()]


@pytest.mark.parametrize("method", HEAVY_INT4, ids=repr)
def test_heavy_tails_int4_clipping_beats_absmax(rng, method):
  """Student-t(3), int4 per-tensor: each clipping method beats AbsMax, dynamic and streamed (4 batches).

  Errors are summed over three independent draws: the gain of one draw depends on how extreme its largest sample
  is (one draw in a few hundred had a max so mild that the MSE optimum was only 1.5% below AbsMax)."""
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerTensor(), calibration=method)
  absmax = dynamic = streamed = 0.0
  for _ in range(3):
    xs = _heavy(rng, 3.0, 4, (256, 16))
    absmax += _mse_with(xs, jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerTensor()))
    dynamic += _mse_with(xs, spec)
    obs = cal.observer(spec)
    streamed += _mse_with(xs, spec, *obs.finalize(_run(obs, xs)))
  assert dynamic < 0.8 * absmax
  assert streamed < 0.8 * absmax


def test_heavy_tails_int8_mse_beats_absmax(rng):
  """Student-t(2), int8 per-tensor: the MSE search beats AbsMax (dynamic and streamed).

  Percentile and KL do not beat AbsMax in MSE here: at int8 the rounding noise is so small that the energy of
  the clipped heavy tail dominates (measured 0.96-7.9x AbsMax's MSE for Percentile(99.99), 1.2-20x for KL, at
  16k-1M values); they win at int4 (test above)."""
  xs = _heavy(rng, 2.0, 4, (1024, 8))
  absmax = _mse_with(xs, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor()))
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(), calibration=jq.MSE())
  assert _mse_with(xs, spec) < absmax
  obs = cal.observer(spec)
  assert _mse_with(xs, spec, *obs.finalize(_run(obs, xs))) < absmax
