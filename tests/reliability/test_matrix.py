"""Issue 11: a matrix of bad or extreme inputs across the public API and the CLI.

Each case is either ``Err(type, regex, fn)`` -- the call must raise that type with a message matching ``regex``
(the message names the problem) -- or ``Ok(fn, check)`` -- the call must succeed and ``check`` compares its result
with a NumPy float64 reference (or an exact expected value). Every ``fn`` takes the seeded ``rng``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jquant as jq
from jquant import mixed_precision as mp
from jquant import solvers as S
from jquant.cli import main as cli_main
from jquant.qat import fake_quant_with_range, lsq_fake_quant, lsq_init
from jquant.core.quantize import scale_f32
from tests.core import reference as ref

pytestmark = pytest.mark.randomized


@dataclasses.dataclass(frozen=True)
class Err:
  exc: type
  match: str
  fn: Callable[[np.random.Generator], Any]


@dataclasses.dataclass(frozen=True)
class Ok:
  fn: Callable[[np.random.Generator], Any]
  check: Callable[[Any, np.random.Generator], None]


I8 = jq.QuantSpec(qtype=jq.INT8)
I8T = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())
I8TOK = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())
U8A = jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerTensor(), symmetric=False)
U4G = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
NF4 = jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerTensor())


def X(rng, shape=(16, 8), scale=1.0, dtype=np.float32):
  return (rng.normal(size=shape) * scale).astype(dtype)


def Xnan(rng, v=np.nan):
  x = X(rng)
  x[3, 5] = v
  return x


def H(rng, k=16):
  a = rng.normal(size=(4 * k, k))
  return (a.T @ a).astype(np.float32)


# ---- correctness checks against the float64 reference ------------------------------------------------------------

def _round_trip(x, spec, y=None):
  """dequantize(quantize(x)) within half a step of x (float32 scale rounding: + a few ulps), scale = reference."""
  qa = jq.quantize(jnp.asarray(x), spec)
  y = np.asarray(jq.dequantize(qa), np.float64) if y is None else y
  block = spec.granularity.block_shape(x.shape)
  s_ref, _ = ref.qparams(np.asarray(x, np.float64), spec.qtype, block, spec.symmetric)
  s_ref = np.maximum(np.where(np.abs(s_ref) > 0, s_ref, 1.0), np.finfo(np.float32).tiny)
  np.testing.assert_allclose(np.asarray(scale_f32(qa), np.float64), s_ref, rtol=2e-6)
  if spec.qtype.is_int:
    ax = np.abs(np.asarray(x, np.float64))
    bound = ref.expand(s_ref, x.shape) * (0.5 + 1e-5) + 4 * np.finfo(np.float32).eps * ax
    bound += np.where(ax < np.finfo(np.float32).tiny, ax, 0.0)   # subnormal inputs are flushed to 0 (CPU/GPU)
    assert (np.abs(y - np.asarray(x, np.float64)) <= bound).all()
  else:
    _, y_ref, _, _ = ref.quantize(np.asarray(x, np.float64), spec.qtype, block, spec.symmetric)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-30)
  return y


def rt_ok(make_x, spec):
  return Ok(lambda rng: make_x(rng), lambda x, rng: _round_trip(np.asarray(x), spec))


def _equal(expected):
  def check(result, rng):
    np.testing.assert_array_equal(np.asarray(result), np.asarray(expected))
  return check


CASES: dict[str, Err | Ok] = {}


def add(name, case):
  assert name not in CASES, name
  CASES[name] = case


# ---- jq.quantize: bad inputs ---------------------------------------------------------------------------------------
add("quantize/spec-not-quantspec", Err(TypeError, r"spec must be a jq.QuantSpec, got str", lambda r: jq.quantize(X(r), "int8")))
add("quantize/int-input", Err(TypeError, r"x has dtype int32; quantize needs a floating array", lambda r: jq.quantize(np.ones((2, 2), np.int32), I8)))
add("quantize/bool-input", Err(TypeError, r"dtype bool", lambda r: jq.quantize(np.ones((2, 2), bool), I8)))
add("quantize/complex-input", Err(TypeError, r"dtype complex64", lambda r: jq.quantize(np.ones((2, 2), np.complex64), I8)))
add("quantize/scalar", Err(ValueError, r"got a scalar; quantize arrays of rank >= 1", lambda r: jq.quantize(np.float32(1.0), I8)))
add("quantize/empty-rows", Err(ValueError, r"shape \(0, 8\) has no elements", lambda r: jq.quantize(np.ones((0, 8), np.float32), I8)))
add("quantize/empty-cols", Err(ValueError, r"shape \(8, 0\) has no elements", lambda r: jq.quantize(np.ones((8, 0), np.float32), U4G)))
add("quantize/group-not-dividing", Err(ValueError, r"needs axis 0 \(length 12\) to be a multiple of 8", lambda r: jq.quantize(X(r, (12, 4)), U4G)))
add("quantize/axis-out-of-range", Err(ValueError, r"axis=2 is out of range for an array of rank 2", lambda r: jq.quantize(X(r), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=2)))))
add("quantize/perblock-rank", Err(ValueError, r"more axes than the array", lambda r: jq.quantize(X(r, (8,)), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerBlock((2, 2))))))
add("quantize/perblock-not-dividing", Err(ValueError, r"7 is not a multiple of 2", lambda r: jq.quantize(X(r, (8, 7)), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerBlock((2, 2))))))
add("quantize/scale-shape", Err(ValueError, r"scale has shape \(1, 4\), expected \(1, 8\)", lambda r: jq.quantize(X(r), I8, scale=np.ones((1, 4), np.float32))))
for _n, _v in [("nan", np.nan), ("inf", np.inf), ("zero", 0.0), ("negative", -0.5), ("subnormal", 1e-40)]:
  add(f"quantize/static-scale-{_n}", Err(ValueError, r"scale entries are non-finite, <= 0 or below float32's smallest normal",
                                        lambda r, v=_v: jq.quantize(X(r), I8T, scale=np.full((1, 1), v, np.float32))))
add("quantize/static-scale-huge", Err(ValueError, r"cannot be stored and used.*1/scale flushes to 0", lambda r: jq.quantize(X(r), I8T, scale=np.full((1, 1), 1e38, np.float32))))
add("quantize/static-scale-fp16-overflow", Err(ValueError, r"scale_dtype='float16'", lambda r: jq.quantize(X(r), I8T.replace(scale_dtype="float16"), scale=np.full((1, 1), 1e5, np.float32))))
add("quantize/zp-for-symmetric", Err(ValueError, r"a symmetric spec takes no zero_point", lambda r: jq.quantize(X(r), I8T, scale=np.ones((1, 1)), zero_point=np.zeros((1, 1)))))
add("quantize/asym-static-no-zp", Err(ValueError, r"needs zero_point= as well", lambda r: jq.quantize(X(r), U8A, scale=np.ones((1, 1)))))
add("quantize/zp-without-scale", Err(ValueError, r"zero_point was given without scale", lambda r: jq.quantize(X(r), U8A, zero_point=np.zeros((1, 1)))))
add("quantize/zp-shape", Err(ValueError, r"zero_point has shape \(2, 1\), expected \(1, 1\)", lambda r: jq.quantize(X(r), U8A, scale=np.ones((1, 1)), zero_point=np.zeros((2, 1)))))
for _n, _v in [("out-of-range", 300.0), ("negative", -1.0), ("fractional", 3.5), ("nan", np.nan)]:
  add(f"quantize/zp-{_n}", Err(ValueError, r"zero_point entries are not integers in uint8's range \[0, 255\]",
                               lambda r, v=_v: jq.quantize(X(r), U8A, scale=np.ones((1, 1)), zero_point=np.full((1, 1), v))))
add("quantize/stochastic-no-key", Err(ValueError, r"stochastic_rounding=True needs key=", lambda r: jq.quantize(X(r), I8.replace(stochastic_rounding=True))))
add("quantize/bad-key", Err(TypeError, r"key must be a PRNG key", lambda r: jq.quantize(X(r), I8.replace(stochastic_rounding=True), key=3)))
for _n, _v in [("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)]:
  add(f"quantize/eager-{_n}", Err(ValueError, r"1 NaN/inf values \(first at index \(3, 5\)\)", lambda r, v=_v: jq.quantize(Xnan(r, v), I8)))
add("quantize/fp16-overflowed-input", Err(ValueError, r"NaN/inf values", lambda r: jq.quantize(jnp.asarray([[7e4, 1.0]], jnp.float32).astype(jnp.float16), I8)))
add("quantize/fp16-scales-of-1e7-range", Err(ValueError, r"does not fit scale_dtype='float16'.*overflow", lambda r: jq.quantize(X(r, scale=1e7), I8.replace(scale_dtype="float16"))))
add("quantize/fp16-scales-underflow", Err(ValueError, r"underflow to 0", lambda r: jq.quantize(X(r, scale=1e-9), I8.replace(scale_dtype="float16"))))
add("quantize/uint8-asym-near-max", Err(ValueError, r"spans more than float32 can hold", lambda r: jq.quantize(np.array([[-3e38, 3e38, 1.0]], np.float32), U8A)))
add("quantize/nf4-absmax-1e38", Err(ValueError, r"exceeds 8.507e\+37", lambda r: jq.quantize(np.array([[1e38, -0.5]], np.float32), NF4)))
add("quantize/int4-sym-absmax-f32max", Ok(lambda r: np.array([[3.4e38, -1.0, 2e38, 0.0]], np.float32), lambda x, r: _round_trip(x, jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerTensor()))))

# ---- jq.quantize: extreme but valid inputs give the reference result ---------------------------------------------
add("extreme/all-zero-int8", Ok(lambda r: jq.dequantize(jq.quantize(np.zeros((4, 4), np.float32), I8)), _equal(np.zeros((4, 4)))))
add("extreme/all-zero-asym", Ok(lambda r: jq.dequantize(jq.quantize(np.zeros((4, 4), np.float32), U8A)), _equal(np.zeros((4, 4)))))
add("extreme/constant-asym", rt_ok(lambda r: np.full((4, 4), -2.5, np.float32), U8A))
add("extreme/negative-only-asym", rt_ok(lambda r: -np.abs(X(r)) - 1.0, U8A))
add("extreme/positive-only-asym", rt_ok(lambda r: np.abs(X(r)) + 1.0, U8A))
add("extreme/single-element", rt_ok(lambda r: np.array([[1.7]], np.float32), I8))
add("extreme/tiny-range", rt_ok(lambda r: X(r, scale=1e-36), I8))
add("extreme/subnormal-scale-range", rt_ok(lambda r: X(r, scale=1e-37), I8T))
add("extreme/huge-1e30", rt_ok(lambda r: X(r, scale=1e30), I8))
add("extreme/huge-1e37-asym", rt_ok(lambda r: X(r, scale=1e37), U8A))
add("extreme/one-outlier-channel", rt_ok(lambda r: X(r) * np.array([1, 1, 1, 1e6, 1, 1, 1, 1], np.float32), I8))
add("extreme/int3", rt_ok(lambda r: X(r), jq.QuantSpec(qtype=jq.INT3)))
add("extreme/uint3-asym", rt_ok(lambda r: X(r), jq.QuantSpec(qtype=jq.UINT3, symmetric=False)))
add("extreme/int2-pertoken", rt_ok(lambda r: X(r), jq.QuantSpec(qtype=jq.INT2, granularity=jq.PerToken())))
add("extreme/group-equals-axis", rt_ok(lambda r: X(r, (8, 4)), U4G))
add("extreme/perblock-whole", rt_ok(lambda r: X(r, (4, 4)), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerBlock((4, 4)))))
add("extreme/rank-1", rt_ok(lambda r: X(r, (32,)), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=0))))
add("extreme/rank-4-batch", rt_ok(lambda r: X(r, (2, 3, 4, 8)), jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1, batch_axes=(0, 1)))))
add("extreme/fp8-e4m3", rt_ok(lambda r: X(r, scale=1e3), jq.QuantSpec(qtype=jq.FP8_E4M3)))
add("extreme/fp8-e5m2-tiny", rt_ok(lambda r: X(r, scale=1e-30), jq.QuantSpec(qtype=jq.FP8_E5M2)))
add("extreme/nf4-ties", rt_ok(lambda r: np.array([[0.0, 1.0, -1.0, 0.5, -0.5, 0.039790149778127670]], np.float32), NF4))
add("extreme/bf16-input", Ok(lambda r: jnp.asarray(X(r), jnp.bfloat16), lambda x, r: _round_trip(np.asarray(x, np.float32), I8)))
add("extreme/fp16-input", Ok(lambda r: X(r).astype(np.float16), lambda x, r: _round_trip(x.astype(np.float32), I8)))
add("extreme/jit-equals-eager", Ok(lambda r: X(r), lambda x, r: np.testing.assert_array_equal(
    np.asarray(jax.jit(lambda a: jq.dequantize(jq.quantize(a, U4G)))(x)), np.asarray(jq.dequantize(jq.quantize(x, U4G))))))
add("extreme/static-scale-clips", Ok(lambda r: jq.dequantize(jq.quantize(np.array([[1000.0, -1000.0, 0.26]], np.float32), I8T, scale=np.full((1, 1), 0.5, np.float32))),
                                     _equal(np.array([[63.5, -64.0, 0.5]], np.float32))))
add("extreme/asym-zero-exact", Ok(lambda r: jq.dequantize(jq.quantize(np.array([[0.0, 0.3, -7.1, 2.2]], np.float32), U8A)), lambda y, r: np.testing.assert_equal(float(y[0, 0]), 0.0)))

# ---- granularity / spec / calibration construction -----------------------------------------------------------------
for _n, _f, _e, _m in [
    ("perchannel-float-axis", lambda r: jq.PerChannel(axis=1.5), TypeError, r"axis must be an int axis"),
    ("perchannel-str-axis", lambda r: jq.PerChannel(axis="-1"), TypeError, r"axis must be an int axis"),
    ("perchannel-bool-axis", lambda r: jq.PerChannel(axis=False), TypeError, r"axis must be an int axis"),
    ("batch-axes-int", lambda r: jq.PerChannel(batch_axes=0), TypeError, r"write batch_axes=\(0,\)"),
    ("batch-axes-float", lambda r: jq.PerTensor(batch_axes=(0.0,)), TypeError, r"tuple of int axes"),
    ("batch-axes-dup", lambda r: jq.PerChannel(batch_axes=(0, 0)), ValueError, r"lists an axis twice"),
    ("pergroup-size-float", lambda r: jq.PerGroup(size=64.0), TypeError, r"size must be an int"),
    ("pergroup-size-zero", lambda r: jq.PerGroup(size=0), ValueError, r"positive int"),
    ("pergroup-size-negative", lambda r: jq.PerGroup(size=-8), ValueError, r"positive int"),
    ("perblock-zero", lambda r: jq.PerBlock((0, 4)), ValueError, r"tuple of positive ints"),
    ("perblock-empty", lambda r: jq.PerBlock(()), ValueError, r"non-empty tuple"),
    ("spec-qtype-str", lambda r: jq.QuantSpec(qtype="int8"), TypeError, r"expected a jq QType"),
    ("spec-granularity-str", lambda r: jq.QuantSpec(qtype=jq.INT8, granularity="channel"), TypeError, r"expected one of"),
    ("spec-symmetric-str", lambda r: jq.QuantSpec(qtype=jq.INT8, symmetric="no"), TypeError, r"symmetric must be True or False"),
    ("spec-symmetric-int", lambda r: jq.QuantSpec(qtype=jq.INT8, symmetric=0), TypeError, r"symmetric must be True or False"),
    ("spec-dq-str", lambda r: jq.QuantSpec(qtype=jq.NF4, double_quant="true"), TypeError, r"double_quant must be True or False"),
    ("spec-dq-block-zero", lambda r: jq.QuantSpec(qtype=jq.NF4, double_quant_block=0), ValueError, r"positive int"),
    ("spec-dq-block-float", lambda r: jq.QuantSpec(qtype=jq.NF4, double_quant_block=2.5), TypeError, r"must be an int"),
    ("spec-scale-dtype-bad", lambda r: jq.QuantSpec(qtype=jq.INT8, scale_dtype="float64"), ValueError, r"must be one of"),
    ("spec-scale-dtype-type", lambda r: jq.QuantSpec(qtype=jq.INT8, scale_dtype=np.float16), TypeError, r"must be one of the strings"),
    ("spec-asym-fp8", lambda r: jq.QuantSpec(qtype=jq.FP8_E4M3, symmetric=False), ValueError, r"has no zero point, so it must be symmetric"),
    ("spec-sym-unsigned", lambda r: jq.QuantSpec(qtype=jq.UINT4), ValueError, r"unsigned uint4 cannot hold a symmetric grid"),
    ("spec-sym-minmax", lambda r: jq.QuantSpec(qtype=jq.INT8, calibration=jq.MinMax()), ValueError, r"MinMax is an asymmetric range"),
    ("spec-asym-absmax", lambda r: jq.QuantSpec(qtype=jq.UINT8, symmetric=False, calibration=jq.AbsMax()), ValueError, r"AbsMax is a symmetric range"),
    ("spec-kl-asym", lambda r: jq.QuantSpec(qtype=jq.UINT8, symmetric=False, calibration=jq.KL()), ValueError, r"KL calibration supports symmetric integer"),
    ("spec-stochastic-fp8", lambda r: jq.QuantSpec(qtype=jq.FP8_E4M3, stochastic_rounding=True), ValueError, r"stochastic_rounding needs an integer qtype"),
    ("spec-calibration-str", lambda r: jq.QuantSpec(qtype=jq.INT8, calibration="absmax"), TypeError, r"expected jq.AbsMax\(\)"),
    ("percentile-150", lambda r: jq.Percentile(150), ValueError, r"must be in \(50, 100\]"),
    ("percentile-nan", lambda r: jq.Percentile(float("nan")), ValueError, r"Percentile\(q=nan\) must be in"),
    ("percentile-str", lambda r: jq.Percentile("99"), TypeError, r"must be a real number"),
    ("percentile-bool", lambda r: jq.Percentile(True), TypeError, r"must be a number, got the bool"),
    ("mse-grid-float", lambda r: jq.MSE(grid=10.5), TypeError, r"MSE\(grid=10.5\) must be an int"),
    ("mse-grid-one", lambda r: jq.MSE(grid=1), ValueError, r"at least 2 candidates"),
    ("mse-min-ratio-zero", lambda r: jq.MSE(min_ratio=0.0), ValueError, r"must be in \(0, 1\)"),
    ("mse-min-ratio-array", lambda r: jq.MSE(min_ratio=jnp.asarray(1.5)), ValueError, r"min_ratio=1.5\) must be in \(0, 1\)"),
    ("kl-bins-few", lambda r: jq.KL(bins=8), ValueError, r"too few"),
    ("kl-bins-float", lambda r: jq.KL(bins=2048.0), TypeError, r"must be an int, got the float"),
    ("ema-decay-one", lambda r: jq.EMA(decay=1.0), ValueError, r"must be in \[0, 1\)"),
    ("ema-decay-nan-array", lambda r: jq.EMA(decay=jnp.asarray(jnp.nan)), ValueError, r"EMA\(decay=nan\)"),
    ("ema-decay-vector", lambda r: jq.EMA(decay=jnp.ones(2)), TypeError, r"must be a real scalar, got an array of shape \(2,\)"),
]:
  add(f"construct/{_n}", Err(_e, _m, _f))
add("construct/percentile-array-is-number", Ok(lambda r: jq.Percentile(jnp.asarray(99.5)), lambda p, r: (
    np.testing.assert_equal(type(p.q), float), np.testing.assert_equal(p.q, 99.5), hash(p))))
for _n, _g, _shape, _m in [
    ("batch-axis-out-of-range", jq.PerChannel(axis=1, batch_axes=(5,)), (4, 4), r"axis=5 is out of range"),
    ("axis-is-batch-axis", jq.PerChannel(axis=0, batch_axes=(0,)), (4, 4), r"axis 0 is also a batch axis"),
    ("group-axis-is-batch-axis", jq.PerGroup(axis=1, size=2, batch_axes=(1,)), (4, 4), r"axis 1 is also a batch axis"),
    ("pertoken-empty", jq.PerToken(), (3, 0), r"has no elements"),
]:
  add(f"granularity/{_n}", Err(ValueError, _m, lambda r, g=_g, s=_shape: jq.quantize(np.ones(s, np.float32), jq.QuantSpec(qtype=jq.INT8, granularity=g))))

# ---- dequantize / metrics ------------------------------------------------------------------------------------------
add("dequantize/not-qarray", Err(TypeError, r"expected a jq.QArray, got ndarray", lambda r: jq.dequantize(X(r))))
add("dequantize/int-dtype", Err(TypeError, r"dtype=int32 is not floating", lambda r: jq.dequantize(jq.quantize(X(r), I8), dtype=jnp.int32)))
add("dequantize/bad-dtype", Err(TypeError, r"is not a dtype", lambda r: jq.dequantize(jq.quantize(X(r), I8), dtype="float99")))
add("dequantize/bf16-out", Ok(lambda r: X(r), lambda x, r: np.testing.assert_array_equal(
    np.asarray(jq.dequantize(jq.quantize(x, I8), dtype=jnp.bfloat16)), np.asarray(jq.dequantize(jq.quantize(x, I8))).astype(jnp.bfloat16))))
add("sqnr/shape-mismatch", Err(ValueError, r"ref has shape \(16, 8\) but approx has shape \(8, 8\)", lambda r: jq.sqnr(X(r), X(r, (8, 8)))))
add("sqnr/qarray", Err(TypeError, r"got a QArray", lambda r: jq.sqnr(X(r), jq.quantize(X(r), I8))))
add("sqnr/value", Ok(lambda r: jq.sqnr(np.array([3.0, 4.0], np.float32), np.array([3.0, 4.5], np.float32)),
                     lambda v, r: np.testing.assert_allclose(float(v), 10 * np.log10(25.0 / 0.25), rtol=1e-6)))
add("sqnr/nan-propagates", Ok(lambda r: jq.sqnr(Xnan(r), X(r)), lambda v, r: np.testing.assert_(np.isnan(float(v)))))
add("quant_error/nan", Err(ValueError, r"NaN/inf values", lambda r: jq.quant_error(Xnan(r), I8)))

# ---- QAT -----------------------------------------------------------------------------------------------------------
add("fake_quant/int-input", Err(TypeError, r"fake_quant: x has dtype int32", lambda r: jq.fake_quant(np.ones((2, 2), np.int32), I8)))
add("fake_quant/scalar", Err(ValueError, r"got a scalar", lambda r: jq.fake_quant(np.float32(1), I8)))
add("fake_quant/stochastic", Err(ValueError, r"stochastic_rounding=True is not supported", lambda r: jq.fake_quant(X(r), I8.replace(stochastic_rounding=True))))
add("fake_quant/spec-type", Err(TypeError, r"spec must be a jq.QuantSpec", lambda r: jq.fake_quant(X(r), None)))
add("fake_quant/scale-shape", Err(ValueError, r"scale has shape \(1, 1\), expected \(1, 8\)", lambda r: jq.fake_quant(X(r), I8, scale=np.ones((1, 1)))))
add("fake_quant/scale-nan", Err(ValueError, r"non-finite, <= 0", lambda r: jq.fake_quant(X(r), I8T, scale=np.full((1, 1), np.nan))))
add("fake_quant/zp-missing", Err(ValueError, r"symmetric=False spec needs zero_point", lambda r: jq.fake_quant(X(r), U8A, scale=np.ones((1, 1)))))
add("fake_quant/zp-without-scale", Err(ValueError, r"zero_point was given without scale", lambda r: jq.fake_quant(X(r), U8A, zero_point=np.ones((1, 1)))))
add("fake_quant/empty", Err(ValueError, r"has no elements", lambda r: jq.fake_quant(np.ones((0, 3), np.float32), I8)))
add("fake_quant/equals-round-trip", Ok(lambda r: X(r), lambda x, r: np.testing.assert_array_equal(
    np.asarray(jq.fake_quant(x, U4G)), np.asarray(jq.dequantize(jq.quantize(x, U4G))))))
add("fake_quant/nan-grad", Ok(lambda r: jax.grad(lambda a: jnp.sum(jq.fake_quant(a, I8TOK)))(jnp.asarray(Xnan(r))),
                              lambda g, r: np.testing.assert_(np.isnan(np.asarray(g)[3]).all() and np.isfinite(np.delete(np.asarray(g), 3, 0)).all())))
add("fake_quant_with_range/inverted", Err(ValueError, r"lo > hi", lambda r: fake_quant_with_range(X(r), np.ones((1, 1)), -np.ones((1, 1)), U8A)))
add("fake_quant_with_range/shape", Err(ValueError, r"lo \(1, 1\) and hi \(1, 2\) must have the same shape", lambda r: fake_quant_with_range(X(r), np.zeros((1, 1)), np.ones((1, 2)), U8A)))
add("lsq/negative-step-is-its-magnitude", Ok(lambda r: (lambda x: (lsq_fake_quant(x, -np.full((1, 8), 0.05, np.float32), None, I8),
                                                                    lsq_fake_quant(x, np.full((1, 8), 0.05, np.float32), None, I8)))(X(r)),
                                              lambda y, r: np.testing.assert_array_equal(np.asarray(y[0]), np.asarray(y[1]))))
add("lsq/zero-step", Err(ValueError, r"not finite and non-zero \(e.g. 0.0\)", lambda r: lsq_fake_quant(X(r), np.zeros((1, 8), np.float32), None, I8)))
add("lsq/inf-step", Err(ValueError, r"not finite and non-zero \(e.g. inf\)", lambda r: lsq_fake_quant(X(r), np.full((1, 8), np.inf, np.float32), None, I8)))
add("lsq/fp8", Err(ValueError, r"LSQ learns integer-grid step sizes; got qtype fp8_e4m3", lambda r: lsq_init(X(r), jq.QuantSpec(qtype=jq.FP8_E4M3))))
add("lsq/scale-shape", Err(ValueError, r"scale has shape \(1, 4\), expected \(1, 8\)", lambda r: lsq_fake_quant(X(r), np.ones((1, 4), np.float32), None, I8)))
add("lsq/zp-for-symmetric", Err(ValueError, r"a symmetric spec learns no zero point", lambda r: lsq_fake_quant(X(r), np.ones((1, 8), np.float32), np.zeros((1, 8)), I8)))
add("lsq/nan-input", Ok(lambda r: lsq_fake_quant(jnp.asarray(Xnan(r)), jnp.full((1, 8), 0.1), None, I8),
                        lambda y, r: np.testing.assert_(np.isnan(np.asarray(y)[3, 5]) and np.isfinite(np.asarray(y)).sum() == 127)))

# ---- solvers -------------------------------------------------------------------------------------------------------
add("rtn/nan", Err(ValueError, r"NaN/inf", lambda r: S.rtn(Xnan(r), I8)))
add("rtn/scalar", Err(ValueError, r"w is a scalar", lambda r: S.rtn(np.float32(1.0), I8)))
add("rtn/spec", Err(TypeError, r"rtn: spec must be a jq.QuantSpec", lambda r: S.rtn(X(r), 8)))
add("gptq/w-1d", Err(ValueError, r"w must be a 2-D kernel", lambda r: S.gptq(X(r, (16,)), H(r), I8)))
add("gptq/h-not-square", Err(ValueError, r"hessian must be square", lambda r: S.gptq(X(r), np.ones((16, 8), np.float32), I8)))
add("gptq/h-wrong-k", Err(ValueError, r"hessian is \(8, 8\) but w has K=16", lambda r: S.gptq(X(r), H(r, 8), I8)))
add("gptq/h-nan", Err(ValueError, r"hessian has 1 NaN/inf entries", lambda r: S.gptq(X(r), np.where(np.eye(16) * np.arange(16) == 3, np.nan, H(r)).astype(np.float32), I8)))
add("gptq/h-asym", Err(ValueError, r"hessian is not symmetric", lambda r: S.gptq(X(r), (H(r) + np.triu(np.ones((16, 16)), 1) * 50).astype(np.float32), I8)))
add("gptq/h-neg-diag", Err(ValueError, r"negative diagonal entry", lambda r: S.gptq(X(r), (H(r) - np.eye(16) * 1e4).astype(np.float32), I8)))
add("gptq/w-nan", Err(ValueError, r"gptq: w of shape \(16, 8\) has 1 NaN/inf", lambda r: S.gptq(Xnan(r), H(r), I8)))
add("gptq/block-size-zero", Err(ValueError, r"block_size must be a positive int", lambda r: S.gptq(X(r), H(r), I8, block_size=0)))
add("gptq/block-size-float", Err(ValueError, r"block_size must be a positive int", lambda r: S.gptq(X(r), H(r), I8, block_size=64.0)))
add("gptq/damp-negative", Err(ValueError, r"damp must be a finite float >= 0", lambda r: S.gptq(X(r), H(r), I8, damp=-0.1)))
add("gptq/damp-nan", Err(ValueError, r"damp must be a finite float >= 0", lambda r: S.gptq(X(r), H(r), I8, damp=float("nan"))))
add("gptq/static-groups-no-groups", Err(ValueError, r"static_groups=True needs a PerGroup spec", lambda r: S.gptq(X(r), H(r), I8, static_groups=True)))
add("gptq/double-quant", Err(ValueError, r"double_quant or stochastic_rounding are not supported", lambda r: S.gptq(X(r), H(r), jq.QuantSpec(qtype=jq.NF4, double_quant=True))))
add("gptq/range-overflow", Err(ValueError, r"gptq: w of shape \(16, 8\).*tile \(0, 0\).*spans more than float32 can hold",
                              lambda r: S.gptq(np.where(np.arange(128).reshape(16, 8) == 0, 3e38, np.where(np.arange(128).reshape(16, 8) == 8, -3e38, X(r))).astype(np.float32), H(r), U4G)))
add("gptq/empty", Err(ValueError, r"gptq: w of shape \(0, 8\) has no elements", lambda r: S.gptq(np.zeros((0, 8), np.float32), np.zeros((0, 0), np.float32), I8)))
add("smoothquant/empty", Err(ValueError, r"got K=0 input features", lambda r: S.smoothquant_scales(np.zeros(0, np.float32), np.zeros(0, np.float32))))
add("rtn/empty", Err(ValueError, r"shape \(0, 4\) has no elements", lambda r: S.rtn(np.zeros((0, 4), np.float32), I8)))
add("lsq_init/empty", Err(ValueError, r"has no elements", lambda r: lsq_init(np.zeros((0, 4), np.float32), I8)))
add("qdot/empty-batch-ok", Ok(lambda r: jq.qdot(np.zeros((0, 16), np.float32), jq.quantize(X(r), I8)), lambda y, r: np.testing.assert_equal(y.shape, (0, 8))))
add("hessian/init-zero", Err(ValueError, r"k must be a positive int", lambda r: S.hessian_init(0)))
add("hessian/init-float", Err(ValueError, r"k must be a positive int", lambda r: S.hessian_init(16.0)))
add("hessian/update-wrong-k", Err(ValueError, r"x has shape \(16, 8\), expected \(\.\.\., 4\)", lambda r: S.hessian_update(S.hessian_init(4), X(r))))
add("hessian/finalize-empty", Err(ValueError, r"no calibration samples were added", lambda r: S.hessian_finalize(S.hessian_init(8))))
add("hessian/finalize-nan", Err(ValueError, r"held NaN/inf activations", lambda r: S.hessian_finalize(S.hessian_update(S.hessian_init(8), jnp.asarray(Xnan(r))))))
add("hessian/value", Ok(lambda r: X(r, (32, 4)), lambda x, r: np.testing.assert_allclose(
    np.asarray(S.hessian_finalize(S.hessian_update(S.hessian_init(4), jnp.asarray(x))), np.float64),
    2.0 * x.astype(np.float64).T @ x.astype(np.float64), rtol=1e-5, atol=1e-5)))   # a 2-D batch is one sample
add("smoothquant/alpha-range", Err(ValueError, r"alpha must be in \[0, 1\], got 1.5", lambda r: S.smoothquant_scales(np.ones(4, np.float32), np.ones(4, np.float32), 1.5)))
add("smoothquant/alpha-nan", Err(ValueError, r"alpha must be in \[0, 1\], got nan", lambda r: S.smoothquant_scales(np.ones(4, np.float32), np.ones(4, np.float32), float("nan"))))
add("smoothquant/alpha-bool", Err(TypeError, r"alpha must be a number, got the bool", lambda r: S.smoothquant_scales(np.ones(4, np.float32), np.ones(4, np.float32), True)))
add("smoothquant/shape", Err(ValueError, r"must both be \(K,\)", lambda r: S.smoothquant_scales(np.ones(4, np.float32), np.ones(3, np.float32))))
add("smoothquant/negative-stat", Err(ValueError, r"act_absmax must be >= 0", lambda r: S.smoothquant_scales(-np.ones(4, np.float32), np.ones(4, np.float32))))
add("smoothquant/nan-stat", Err(ValueError, r"w_absmax of shape \(4,\) has 1 NaN/inf", lambda r: S.smoothquant_scales(np.ones(4, np.float32), np.array([1, np.nan, 1, 1], np.float32))))
add("smoothquant/alpha-array-value", Ok(lambda r: (np.abs(X(r, (8,))) + 0.1, np.abs(X(r, (8,))) + 0.1), lambda aw, r: np.testing.assert_allclose(
    np.asarray(S.smoothquant_scales(aw[0], aw[1], jnp.asarray(0.75)), np.float64),
    np.maximum(aw[0].astype(np.float64) ** 0.75 / np.maximum(aw[1].astype(np.float64), 1e-5) ** 0.25, 1e-5), rtol=1e-5)))
add("w8a8/act-mode", Err(ValueError, r"act must be one of", lambda r: S.w8a8_matmul(X(r, (4, 16)), S.w8a8_quantize_weight(X(r)), act="per_channel")))
add("w8a8/act-scale-zero", Err(ValueError, r"act_scale=0.0 must be a finite positive scale", lambda r: S.w8a8_matmul(X(r, (4, 16)), S.w8a8_quantize_weight(X(r)), act_scale=0.0)))
add("w8a8/act-scale-neg", Err(ValueError, r"act_scale=-1.0 must be a finite positive", lambda r: S.w8a8_matmul(X(r, (4, 16)), S.w8a8_quantize_weight(X(r)), act_scale=-1.0)))
add("w8a8/act-scale-nan", Err(ValueError, r"act_scale=nan", lambda r: S.w8a8_matmul(X(r, (4, 16)), S.w8a8_quantize_weight(X(r)), act_scale=float("nan"))))
add("w8a8/act-scale-vector", Err(ValueError, r"act_scale must be a scalar", lambda r: S.w8a8_matmul(X(r, (4, 16)), S.w8a8_quantize_weight(X(r)), act_scale=np.ones(2))))
add("w8a8/k-mismatch", Err(ValueError, r"does not match inputs with K=8", lambda r: S.w8a8_matmul(X(r, (4, 8)), S.w8a8_quantize_weight(X(r)))))
add("w8a8/weight-not-int8", Err(ValueError, r"expected a symmetric INT8 QArray", lambda r: S.w8a8_matmul(X(r, (4, 16)), jq.quantize(X(r), U4G))))
add("w8a8/weight-3d", Err(ValueError, r"w must be a kernel \(K, N\)", lambda r: S.w8a8_quantize_weight(X(r, (2, 16, 8)))))


def _w8a8_check(args, rng):
  x, w = args
  y = np.asarray(S.w8a8_matmul(x, S.w8a8_quantize_weight(w)), np.float64)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  sx = np.abs(x64).max(1, keepdims=True) / 127
  sx = np.where(sx > 0, sx, 1.0)
  sw = np.abs(w64).max(0, keepdims=True) / 127
  y_ref = (np.clip(np.round(x64 / sx), -127, 127) @ np.clip(np.round(w64 / sw), -127, 127)) * sx * sw
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())


add("w8a8/reference", Ok(lambda r: (X(r, (6, 16)), X(r)), _w8a8_check))
add("w8a8/zero-row", Ok(lambda r: (np.vstack([np.zeros((1, 16), np.float32), X(r, (3, 16))]), X(r)), _w8a8_check))
add("llm_int8/threshold-negative", Err(ValueError, r"threshold must be a float >= 0", lambda r: S.llm_int8_matmul(X(r, (4, 16)), S.llm_int8_prepare(X(r)), threshold=-1.0)))
add("llm_int8/threshold-nan", Err(ValueError, r"got nan", lambda r: S.llm_int8_matmul(X(r, (4, 16)), S.llm_int8_prepare(X(r)), threshold=float("nan"))))
add("llm_int8/threshold-bool", Err(TypeError, r"threshold must be a number, got the bool", lambda r: S.llm_int8_matmul(X(r, (4, 16)), S.llm_int8_prepare(X(r)), threshold=True)))
add("llm_int8/threshold-str", Err(TypeError, r"threshold must be a real number, got str", lambda r: S.llm_int8_matmul(X(r, (4, 16)), S.llm_int8_prepare(X(r)), threshold="6")))
add("llm_int8/outlier-weights", Err(ValueError, r"outlier_weights must be 'int8' or 'fp'", lambda r: S.llm_int8(X(r, (4, 16)), X(r), outlier_weights="fp16")))
add("llm_int8/w-fp-shape", Err(ValueError, r"w_fp has shape \(8, 8\), expected \(16, 8\)", lambda r: S.llm_int8_matmul(X(r, (4, 16)), S.llm_int8_prepare(X(r)), w_fp=X(r, (8, 8)))))
add("llm_int8/threshold-array", Ok(lambda r: (X(r, (4, 16), scale=4.0), X(r)), lambda a, r: np.testing.assert_array_equal(
    np.asarray(S.llm_int8_matmul(a[0], S.llm_int8_prepare(a[1]), threshold=jnp.asarray(6.0))),
    np.asarray(S.llm_int8_matmul(a[0], S.llm_int8_prepare(a[1]), threshold=6.0)))))
add("weight_absmax/empty", Err(ValueError, r"got no kernels", lambda r: S.weight_absmax([])))
add("weight_absmax/k-mismatch", Err(ValueError, r"kernels must be \(K, N_i\) with one K", lambda r: S.weight_absmax([X(r), X(r, (8, 8))])))

# ---- QLoRA ----------------------------------------------------------------------------------------------------------
from jquant.flax.qlora import QLoRADense  # noqa: E402  (flax: imported here, next to its cases)

add("qlora/alpha-str", Err(TypeError, r"QLoRADense: alpha must be a real number, got str", lambda r: QLoRADense(features=4, alpha="16")))
add("qlora/alpha-bool", Err(TypeError, r"alpha must be a number, got the bool", lambda r: QLoRADense(features=4, alpha=True)))
add("qlora/alpha-inf", Err(ValueError, r"alpha=inf must be a finite number > 0", lambda r: QLoRADense(features=4, alpha=float("inf"))))
add("qlora/rank-zero", Err(ValueError, r"rank=0 must be a positive int", lambda r: QLoRADense(features=4, rank=0)))
add("qlora/base-spec", Err(TypeError, r"base_spec must be a jq.QuantSpec", lambda r: QLoRADense(features=4, base_spec="nf4")))

# ---- params / rules ------------------------------------------------------------------------------------------------
CFG = jq.QuantConfig(rules=[jq.QuantRule(r".*kernel", I8)])
add("rules/bad-regex", Err(ValueError, r"'\(' is not a valid regex", lambda r: jq.QuantRule("(", I8)))
add("rules/pattern-not-str", Err(TypeError, r"the pattern must be a regex string", lambda r: jq.QuantRule(3, I8)))
add("rules/spec-not-spec", Err(TypeError, r"spec must be a jq.QuantSpec or None", lambda r: jq.QuantRule(".*", "int8")))
add("rules/batch-axes-int", Err(TypeError, r"batch_axes must be a tuple of int axes", lambda r: jq.QuantRule(".*", I8, batch_axes=0)))
add("config/no-rules", Err(ValueError, r"has no rules", lambda r: jq.QuantConfig(rules=[])))
add("config/rule-not-list", Err(TypeError, r"write rules=\[rule\]", lambda r: jq.QuantConfig(rules=jq.QuantRule(".*", I8))))
add("config/rule-type", Err(TypeError, r"rules must be QuantRule objects", lambda r: jq.QuantConfig(rules=[(".*", I8)])))
add("config/skip-str", Err(TypeError, r"a bare string would be read character by character", lambda r: jq.QuantConfig(rules=[jq.QuantRule(".*", I8)], skip=".*bias")))
add("config/skip-non-str", Err(TypeError, r"every skip pattern must be a regex string", lambda r: jq.QuantConfig(rules=[jq.QuantRule(".*", I8)], skip=[3])))
add("quantize_params/cfg-type", Err(TypeError, r"cfg must be a jq.QuantConfig", lambda r: jq.quantize_params({"kernel": X(r)}, {"rules": []})))
add("quantize_params/int-leaf", Err(TypeError, r"rule 0 \('.\*kernel'\) matched 'a/kernel'.*only floating arrays", lambda r: jq.quantize_params({"a": {"kernel": np.ones((4, 4), np.int32)}}, CFG)))
add("quantize_params/scalar-leaf", Err(ValueError, r"leaf 'a/kernel' is a scalar", lambda r: jq.quantize_params({"a": {"kernel": jnp.float32(1)}}, CFG)))
add("quantize_params/group-mismatch", Err(ValueError, r"matched 'a/kernel' of shape \(12, 4\).*multiple of 8", lambda r: jq.quantize_params({"a": {"kernel": jnp.asarray(X(r, (12, 4)))}}, jq.QuantConfig(rules=[jq.QuantRule(".*", U4G)]))))
add("quantize_params/nan-leaf", Err(ValueError, r"parameter 'a/kernel' of shape \(16, 8\) has 1 NaN/inf", lambda r: jq.quantize_params({"a": {"kernel": jnp.asarray(Xnan(r))}}, CFG)))
add("quantize_params/huge-leaf", Err(ValueError, r"parameter 'a/kernel'.*exceeds 8.507e\+37", lambda r: jq.quantize_params({"a": {"kernel": jnp.asarray(np.array([[1e38, 1.0]], np.float32))}}, jq.QuantConfig(rules=[jq.QuantRule(".*", NF4)]))))
add("quantize_params/strict-unused", Err(ValueError, r"matched no parameter", lambda r: jq.quantize_params({"a": {"kernel": jnp.asarray(X(r))}}, jq.QuantConfig(rules=[jq.QuantRule(".*kernel", I8), jq.QuantRule(".*nothing", I8)]), strict=True)))
add("quantize_params/rule-batch-out-of-range", Err(ValueError, r"axis 4 is out of range for a leaf of rank 3", lambda r: jq.quantize_params({"w": jnp.asarray(X(r, (2, 4, 4)))}, jq.QuantConfig(rules=[jq.QuantRule(".*", I8, batch_axes=(4,))]))))
add("quantize_params/empty-leaf", Err(ValueError, r"matched 'w' of shape \(0, 4\).*no elements", lambda r: jq.quantize_params({"w": jnp.ones((0, 4))}, jq.QuantConfig(rules=[jq.QuantRule(".*", I8)]))))
add("quantize_params/stacked-3d", Ok(lambda r: X(r, (3, 8, 4)), lambda w, r: [
    _round_trip(w[i], I8) for i in range(3)] and np.testing.assert_array_equal(
        np.asarray(jq.dequantize_params(jq.quantize_params({"w": jnp.asarray(w)}, jq.QuantConfig(rules=[jq.QuantRule(".*", I8)])))["w"]),
        np.stack([np.asarray(jq.dequantize(jq.quantize(w[i], I8))) for i in range(3)]))))

# ---- mixed precision -----------------------------------------------------------------------------------------------
for _n, _kw, _e, _m in [
    ("dls-scale-inf-array", dict(scale=jnp.asarray(jnp.inf)), ValueError, r"scale=inf: must be a finite number > 0"),
    ("dls-scale-nan", dict(scale=float("nan")), ValueError, r"scale=nan"),
    ("dls-scale-zero-array", dict(scale=jnp.asarray(0.0)), ValueError, r"scale=0.0"),
    ("dls-scale-vector", dict(scale=jnp.ones(3)), ValueError, r"must be a scalar, got shape \(3,\)"),
    ("dls-scale-bool", dict(scale=True), TypeError, r"must be a number"),
    ("dls-period-zero", dict(period=jnp.asarray(0)), ValueError, r"period=0: must be an int >= 1"),
    ("dls-period-float", dict(period=1.5), ValueError, r"period=1.5"),
    ("dls-factor-one", dict(factor=jnp.asarray(1.0)), ValueError, r"factor=1.0: must be a finite number > 1"),
    ("dls-min-scale-neg", dict(min_scale=-1.0), ValueError, r"min_scale=-1.0"),
    ("dls-good-steps-neg", dict(good_steps=jnp.asarray(-2)), ValueError, r"good_steps=-2"),
    ("dls-scale-str", dict(scale="big"), TypeError, r"must be a number or a scalar array, got str"),
]:
  add(f"mixed_precision/{_n}", Err(_e, _m, lambda r, kw=_kw: mp.DynamicLossScale(**kw)))
add("mixed_precision/static-inf-array", Err(ValueError, r"StaticLossScale.scale=inf", lambda r: mp.StaticLossScale(scale=jnp.asarray(jnp.inf))))
add("mixed_precision/policy-int", Err(ValueError, r"param_dtype must be a floating dtype", lambda r: mp.Policy(param_dtype=jnp.int32)))
add("mixed_precision/policy-str", Err(TypeError, r"compute_dtype='float17' is not a dtype", lambda r: mp.Policy(compute_dtype="float17")))
add("mixed_precision/loss-scaled-inner", Err(TypeError, r"inner must be an optax.GradientTransformation", lambda r: mp.loss_scaled(None, mp.NoOpLossScale())))
add("mixed_precision/loss-scaled-scale", Err(TypeError, r"loss_scale must be NoOpLossScale", lambda r: mp.loss_scaled(optax.sgd(0.1), 1024.0)))
add("mixed_precision/select-tree-vector", Err(ValueError, r"needs a scalar bool predicate", lambda r: mp.select_tree(jnp.asarray([True, False]), 1.0, 2.0)))
add("mixed_precision/adjust-float-flag", Err(TypeError, r"adjust\(grads_finite\) needs a bool.*got dtype float32", lambda r: mp.DynamicLossScale().adjust(jnp.asarray(0.5))))
add("mixed_precision/adjust-vector-flag", Err(ValueError, r"needs a scalar bool, got shape \(2,\)", lambda r: mp.DynamicLossScale().adjust(jnp.asarray([True, False]))))
add("mixed_precision/static-adjust-int-flag", Err(TypeError, r"needs a bool", lambda r: mp.StaticLossScale().adjust(1)))
add("mixed_precision/cast-to-int", Err(TypeError, r"cast_floating: dtype=int32 is not floating", lambda r: mp.cast_floating({"w": jnp.ones(2)}, jnp.int32)))
add("mixed_precision/cast-bad-dtype", Err(TypeError, r"dtype='float17' is not a dtype", lambda r: mp.cast_floating({"w": jnp.ones(2)}, "float17")))
add("mixed_precision/cast-keeps-ints", Ok(lambda r: mp.cast_floating({"w": jnp.ones(2), "i": jnp.arange(2)}, jnp.bfloat16),
                                          lambda t, r: np.testing.assert_equal((t["w"].dtype, t["i"].dtype), (jnp.bfloat16, jnp.arange(2).dtype))))
add("mixed_precision/adjust-arithmetic", Ok(lambda r: mp.DynamicLossScale(scale=jnp.asarray(8.0), min_scale=jnp.asarray(3.0)).adjust(jnp.asarray(False)).adjust(jnp.asarray(False)),
                                            lambda s, r: np.testing.assert_equal(float(s.scale), 3.0)))
add("mixed_precision/overflow-grow-stays-finite", Ok(lambda r: mp.DynamicLossScale(scale=float(np.finfo(np.float32).max), period=1).adjust(jnp.asarray(True)),
                                                     lambda s, r: np.testing.assert_equal(float(s.scale), float(np.finfo(np.float32).max))))

# ---- qdot ----------------------------------------------------------------------------------------------------------
add("qdot/k-mismatch", Err(ValueError, r"must end in K=8 features", lambda r: jq.qdot(X(r, (4, 16)), jq.quantize(X(r, (8, 4)), I8))))
add("qdot/implementation", Err(ValueError, r"implementation='cuda'; expected None, 'pallas' or 'xla'", lambda r: jq.qdot(X(r, (4, 16)), jq.quantize(X(r), I8), implementation="cuda")))
add("qdot/int-x", Err(TypeError, r"x must be a float array or a quantized jq.QArray; got dtype int32", lambda r: jq.qdot(np.ones((2, 16), np.int32), jq.quantize(X(r), I8))))
add("qdot/w-not-qarray", Err(TypeError, r"w must be a jq.QArray or a PreparedWeight", lambda r: jq.qdot(X(r, (4, 16)), X(r))))
add("qdot/w-3d", Err(ValueError, r"w must be a \(K, N\) weight", lambda r: jq.qdot(X(r, (4, 16)), jq.quantize(X(r, (2, 16, 8)), I8))))
add("qdot/nan-propagates-under-jit", Ok(lambda r: jax.jit(lambda a, w: jq.qdot(a, w))(
    np.where(np.arange(64).reshape(4, 16) == 5, np.nan, X(r, (4, 16))).astype(np.float32), jq.quantize(X(r), I8)),
                                        lambda y, r: np.testing.assert_(np.isnan(np.asarray(y)[0]).all() and np.isfinite(np.asarray(y)[1:]).all())))
def _qdot_check(a, rng):
  """|y - x @ deq(w)| <= K * eps * (|x| @ |deq(w)|): float32 accumulation on CPU; on a GPU the default matmul
  precision rounds the inputs to TF32 (10-bit mantissa, eps 2^-11)."""
  x, w = a
  wd = np.asarray(jq.dequantize(jq.quantize(w, I8)), np.float64)
  y = np.asarray(jq.qdot(x, jq.quantize(w, I8)), np.float64)
  eps = 2.0**-11 if jax.default_backend() == "gpu" else 2.0**-23
  bound = x.shape[-1] * eps * (np.abs(x.astype(np.float64)) @ np.abs(wd))
  assert (np.abs(y - x.astype(np.float64) @ wd) <= bound).all()


add("qdot/reference", Ok(lambda r: (X(r, (4, 16)), X(r)), _qdot_check))

# ---- io --------------------------------------------------------------------------------------------------------------
add("io/save-nan-scale", Err(ValueError, r"cannot save leaf 'k': 1 scales are not finite and positive \(e.g. nan\)",
                            lambda r: jq.io.to_storage({"k": jax.jit(lambda a: jq.quantize(a, I8))(Xnan(r))})))
add("io/load-missing", Err(ValueError, r"does not exist", lambda r: jq.io.load_safetensors("/nonexistent/x.safetensors")))
add("io/orbax-missing", Err(ValueError, r"is not a directory", lambda r: jq.io.load_orbax("/nonexistent/dir")))
add("io/slash-key", Err(ValueError, r"contains '/'", lambda r: jq.io.to_storage({"a/b": X(r)})))
add("io/object-leaf", Err(TypeError, r"cannot store 'a' of dtype", lambda r: jq.io.to_storage({"a": np.array(["x"], object)})))
add("io/from-storage-not-dict", Err(ValueError, r"src: the jquant metadata is a list", lambda r: jq.io.from_storage({}, [], source="src")))
add("io/from-storage-format", Err(ValueError, r"src: not a jquant checkpoint", lambda r: jq.io.from_storage({}, {"format": "x"}, source="src")))


# ---- CLI -------------------------------------------------------------------------------------------------------------
def _cli(argv):
  def run(rng):
    code = cli_main(argv)
    if code != 0:
      raise RuntimeError(f"exit {code}")
  return run


add("cli/eval-nothing", Err(RuntimeError, r"exit 1", _cli(["eval"])))
add("cli/eval-not-checkpoint", Err(RuntimeError, r"exit 1", _cli(["eval", "/nonexistent_dir_for_jquant"])))
add("cli/quantize-calib-zero", Err(RuntimeError, r"exit 1", _cli(["quantize", "--model", "minilm", "--method", "rtn", "--calib-samples", "0", "--out", "/nonexistent_parent_for_jquant/q"])))
add("cli/quantize-calib-text-missing", Err(RuntimeError, r"exit 1", _cli(["quantize", "--model", "minilm", "--method", "rtn", "--calib-text", "/nonexistent.txt", "--out", "/nonexistent_parent_for_jquant/q"])))
add("cli/quantize-out-is-file", Err(RuntimeError, r"exit 1", _cli(["quantize", "--model", "minilm", "--method", "rtn", "--out", __file__])))
add("cli/report-samples-zero", Err(RuntimeError, r"exit 1", _cli(["report", "/nonexistent_dir_for_jquant", "--samples", "0"])))
add("cli/report-budget-negative", Err(RuntimeError, r"exit 1", _cli(["report", "/nonexistent_dir_for_jquant", "--budget-mb", "-5"])))
add("cli/report-budget-nan", Err(RuntimeError, r"exit 1", _cli(["report", "/nonexistent_dir_for_jquant", "--budget-mb", "nan"])))
add("cli/report-not-checkpoint", Err(RuntimeError, r"exit 1", _cli(["report", "/nonexistent_dir_for_jquant"])))
add("cli/eval-windows-zero", Err(RuntimeError, r"exit 1", _cli(["eval", "--model", "smollm2", "--windows", "0"])))
add("cli/eval-both-dir-and-model", Err(RuntimeError, r"exit 1", _cli(["eval", "/x", "--model", "smollm2"])))
add("cli/demo-windows-zero", Err(RuntimeError, r"exit 1", _cli(["demo", "--model", "minilm", "--windows", "0"])))
add("cli/demo-calib-zero", Err(RuntimeError, r"exit 1", _cli(["demo", "--model", "minilm", "--calib-samples", "0"])))
add("cli/demo-bad-methods", Err(RuntimeError, r"exit 1", _cli(["demo", "--model", "minilm", "--methods", "rtn,foo"])))
add("cli/bad-method", Err(SystemExit, r"2", _cli(["quantize", "--model", "minilm", "--method", "nope", "--out", "x"])))
add("cli/bad-bits", Err(SystemExit, r"2", _cli(["quantize", "--model", "minilm", "--method", "rtn", "--bits", "5", "--out", "x"])))
add("cli/bad-grid", Err(SystemExit, r"2", _cli(["quantize", "--model", "minilm", "--method", "rtn", "--grid", "l2", "--out", "x"])))



CLI_MESSAGES = {   # what the one error line must name
    "cli/eval-nothing": r"give either a checkpoint DIR or --model",
    "cli/eval-not-checkpoint": r"is not a jquant checkpoint folder",
    "cli/quantize-calib-zero": r"--calib-samples 0: calibration needs at least 1 sample",
    "cli/quantize-calib-text-missing": r"--calib-text '/nonexistent.txt' is not a file",
    "cli/quantize-out-is-file": r"exists and is not a directory",
    "cli/report-samples-zero": r"--samples 0: need at least 1",
    "cli/report-budget-negative": r"--budget-mb -5.0: the size budget must be a positive",
    "cli/report-budget-nan": r"--budget-mb nan",
    "cli/report-not-checkpoint": r"is not a jquant checkpoint folder",
    "cli/eval-windows-zero": r"--windows must be >= 1",
    "cli/eval-both-dir-and-model": r"give either a checkpoint DIR or --model",
    "cli/demo-windows-zero": r"--windows 0: evaluate on at least 1 window",
    "cli/demo-calib-zero": r"--calib-samples 0",
    "cli/demo-bad-methods": r"unknown \['foo'\]",
}


@pytest.mark.parametrize("name", list(CASES))
def test_matrix(name, rng, capsys):
  case = CASES[name]
  if isinstance(case, Err):
    with pytest.raises(case.exc, match=case.match):
      case.fn(rng)
    if name.startswith("cli/") and case.exc is RuntimeError:
      err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
      assert len(err) == 1 and err[0].startswith("error: "), err
      assert re.search(CLI_MESSAGES[name], err[0]), (name, err[0])
  else:
    case.check(case.fn(rng), rng)


def test_matrix_size_and_readme_count():
  """The issue asks for >= 150 cases, and README.md states the count: keep them in step."""
  import pathlib
  assert len(CASES) >= 150, len(CASES)
  readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
  m = re.search(r"a matrix of (\d+) bad or extreme inputs", readme)
  assert m is not None and int(m.group(1)) == len(CASES), (m and m.group(1), len(CASES))
