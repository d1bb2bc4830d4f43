"""Issue 11, item 4: ranges the storage cannot hold are errors (eager) or NaN (under jit), never zeros or NaN
passed off as a result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq

pytestmark = pytest.mark.randomized

F32_MAX = float(np.finfo(np.float32).max)

CASES = {
    # name: (x builder, spec, message)
    "fp16-scale-overflow": (lambda r: r.normal(size=(64, 8)) * 1e7,
                            jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), scale_dtype="float16"),
                            r"does not fit scale_dtype='float16'.*overflow to inf"),
    "fp16-scale-underflow": (lambda r: r.normal(size=(64, 8)) * 1e-9,
                             jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), scale_dtype="float16"),
                             r"does not fit scale_dtype='float16'.*underflow to 0"),
    "uint8-asym-near-f32-max": (lambda r: np.concatenate([r.uniform(-1, 1, size=(4, 6)), np.full((4, 1), -3e38),
                                                          np.full((4, 1), 3e38)], axis=1),
                                jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerToken(), symmetric=False),
                                r"spans more than float32 can hold"),
    "uint4-asym-full-range": (lambda r: np.array([[-F32_MAX, F32_MAX, 0.0, 1.0]]),
                              jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerTensor(), symmetric=False),
                              r"spans more than float32 can hold"),
    "nf4-absmax-1e38": (lambda r: np.clip(r.normal(size=(8, 64)) * 1e38, -3e38, 3e38),
                        jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=1, size=64)),
                        r"exceeds 8.507e\+37: the reciprocal is subnormal"),
    "fp8-absmax-3e38": (lambda r: np.full((2, 4), 3e38),
                        jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=jq.PerToken()),
                        None),   # 3e38 / 448 is a usable scale: must quantize correctly
}


def _x(rng, name):
  return np.asarray(CASES[name][0](rng), np.float32)


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][2]])
def test_unholdable_range_is_a_clear_error(rng, name):
  _, spec, msg = CASES[name]
  x = _x(rng, name)
  with pytest.raises(ValueError, match=msg):
    jq.quantize(x, spec)
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*", spec)])
  with pytest.raises(ValueError, match=r"parameter 'layer/kernel'.*" + msg):
    jq.quantize_params({"layer": {"kernel": jnp.asarray(x)}}, cfg)


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n][2]])
def test_unholdable_range_is_nan_under_jit_never_zero(rng, name):
  _, spec, _ = CASES[name]
  x = _x(rng, name)
  y = np.asarray(jax.jit(lambda a: jq.dequantize(jq.quantize(a, spec)))(x))
  assert np.isnan(y).any(), "an unusable scale must show as NaN, not as a finite (zero) result"
  assert not (np.isfinite(y) & (y == 0) & (x != 0)).all()


def test_extreme_but_holdable_fp8_is_correct():
  x = np.full((2, 4), 3e38, np.float32)
  x[0, 1] = -1e38
  y = np.asarray(jq.dequantize(jq.quantize(x, CASES["fp8-absmax-3e38"][1])), np.float64)
  # absmax / 448 maps the max to exactly 448; the rest within e4m3's relative error 2^-4
  np.testing.assert_allclose(y, x.astype(np.float64), rtol=2.0**-4)


@pytest.mark.parametrize("scale,msg", [(1e38, r"cannot be stored and used.*e\+37.*flushes to 0"),
                                       (7e4, r"cannot be stored and used.*scale_dtype='float16'")])
def test_static_scale_that_cannot_be_used_is_an_error(scale, msg):
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(),
                      scale_dtype="float16" if scale < 1e10 else "float32")
  with pytest.raises(ValueError, match=msg):
    jq.quantize(np.ones((2, 2), np.float32), spec, scale=np.full((1, 1), scale, np.float32))


def test_tiny_nonzero_range_quantizes_instead_of_flushing():
  """A range whose scale would be subnormal gets float32's smallest normal scale: values keep their sign."""
  x = np.array([[3e-37, -2e-37, 1e-37, 0.0]], np.float32)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())
  y = np.asarray(jq.dequantize(jq.quantize(x, spec)), np.float64)
  tiny = float(np.finfo(np.float32).tiny)
  np.testing.assert_allclose(y, np.round(x.astype(np.float64) / tiny) * tiny, rtol=1e-6)
  assert np.array_equal(np.sign(y), np.sign(x))


@pytest.mark.parametrize("name", ["fp16-scale-overflow", "fp16-scale-underflow"])
def test_observer_scale_that_scale_dtype_cannot_store_is_an_error(rng, name):
  """A static observer whose range has no float16 scale refuses at finalize (eager) and returns NaN under jit;
  before, it returned inf or 0 scales and the error only came later, from quantize, without the cause."""
  from jquant.calibration.factory import observer
  spec = CASES[name][1]
  x = _x(rng, name)
  obs = observer(spec)
  state = obs.update(obs.init(x), x)
  with pytest.raises(ValueError, match=r"finalize: tile \(0, \d\).*does not fit scale_dtype='float16'"):
    obs.finalize(state)
  scale, _ = jax.jit(obs.finalize)(state)
  assert np.isnan(np.asarray(scale)).all()


def test_observer_bfloat16_scales_of_wide_ranges_are_stored(rng):
  """bfloat16 holds float32's exponent range: the same 1e7 / 1e-9 ranges calibrate and quantize correctly."""
  from jquant.calibration.factory import observer
  for mag in (1e7, 1e-9):
    x = np.asarray(rng.normal(size=(64, 8)) * mag, np.float32)
    spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), scale_dtype="bfloat16")
    obs = observer(spec)
    scale, _ = obs.finalize(obs.update(obs.init(x), x))
    ref = np.abs(x.astype(np.float64)).max(axis=0, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(scale, np.float64), ref, rtol=2 ** -8)   # one bfloat16 rounding
    err = np.abs(np.asarray(jq.dequantize(jq.quantize(x, spec, scale=scale))) - x)
    assert (err <= np.asarray(scale) * 0.5 * (1 + 1e-6)).all()
