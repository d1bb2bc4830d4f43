"""ActQuant: per-token int8 / int4 activations on top of weight-only methods (float64 NumPy reference)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import ptq
from jquant.ptq.methods import ActQuantMatmul, W8A8Matmul
from jquant.ptq.methods.act_quant import MX_FORMATS
from jquant.solvers.rtn import rtn

W4 = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=16), symmetric=False)


def _np_act(x, bits):
  """Per-token symmetric fake quantization: scale absmax / qmax, codes in [-2^(b-1), 2^(b-1) - 1]."""
  qmax = 2 ** (bits - 1) - 1
  s = np.abs(x).max(-1, keepdims=True) / qmax
  return np.clip(np.round(x / s), -qmax - 1, qmax) * s


@pytest.mark.parametrize("bits", [8, 4])
def test_grouped_weights_match_numpy(bits, rng):
  x = rng.standard_normal((2, 5, 64)).astype(np.float32)
  x[..., 3] *= 20.0                                         # an outlier channel
  w = rng.standard_normal((64, 24)).astype(np.float32) / 8
  qa = rtn(jnp.asarray(w), W4)
  ref = _np_act(x.astype(np.float64), bits) @ np.asarray(jq.dequantize(qa), np.float64)
  got = np.asarray(jax.jit(ActQuantMatmul(bits))(jnp.asarray(x), qa), np.float64)
  # float32: 64-term dot products of values <= |x|_inf |w|_inf; a code may flip at a rounding tie (never here)
  np.testing.assert_allclose(got, ref, atol=64 * 1.2e-7 * np.abs(x).max() * np.abs(w).max() * 4)
  plain = np.asarray(jq.ops.qdot(jnp.asarray(x), qa), np.float64)
  assert np.abs(plain - got).max() > 1e-3                   # activations really were quantized


def test_int8_weights_take_the_w8a8_path(rng):
  x = jnp.asarray(rng.standard_normal((6, 32)), jnp.float32)
  qa = rtn(jnp.asarray(rng.standard_normal((32, 8)), jnp.float32), ptq.SmoothQuant.weight_spec())
  np.testing.assert_array_equal(np.asarray(ActQuantMatmul(8)(x, qa)), np.asarray(W8A8Matmul()(x, qa)))
  w = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)           # float kernels keep float inputs
  np.testing.assert_allclose(np.asarray(ActQuantMatmul(4)(x, w)), np.asarray(x) @ np.asarray(w), rtol=1e-5, atol=1e-5)


def test_wrapper_delegates_and_validates():
  inner = ptq.GPTQ(W4, act_order=True)
  m = ptq.ActQuant(inner, act_bits=4)
  assert (m.name, m.bits, m.spec, m.float_inputs, m.has_transform) == ("gptq+a4", 4, W4, False, False)
  assert m.matmul == ActQuantMatmul(4) and hash(m) == hash(ptq.ActQuant(inner, act_bits=4))
  with pytest.raises(ValueError, match="already quantizes activations"):
    ptq.ActQuant(ptq.SmoothQuant())
  with pytest.raises(ValueError, match="act_bits must be 8 or 4"):
    ptq.ActQuant(inner, act_bits=3)
  with pytest.raises(TypeError, match="unknown method"):
    ptq.ActQuant("gptq")


@pytest.mark.slow
def test_rotated_tiny_model_w4a4_end_to_end(rng):
  from jquant.models import SmolLM2
  from jquant.models.rotation import rotate
  from tests.models.test_rotation import TINY
  from tests.models.helpers import randomize
  model = SmolLM2(dataclasses.replace(TINY, num_layers=1))
  params = randomize(model.init(jax.random.PRNGKey(0)), rng)
  ids = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 16)), jnp.int32)
  rmodel, rparams = rotate(model, params, seed=1)
  method = ptq.ActQuant(ptq.RTN(W4), act_bits=4)
  qparams, report = ptq.quantize_model(rmodel, rparams, [ids], method)
  assert {e.method for e in report.layers} == {"rtn+a4"}
  run = ptq.runtime_model(rmodel, method)
  assert run.matmul == ActQuantMatmul(4) and run.config.rotate_down
  a4 = np.asarray(run.apply(qparams, ids))
  a16 = np.asarray(rmodel.apply(qparams, ids))
  ref = np.asarray(model.apply(params, ids))
  assert np.isfinite(a4).all() and np.abs(a4 - a16).max() > 1e-4
  assert np.abs(a16 - ref).max() < 0.5 * np.abs(ref).max()


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp4", "nvfp4"])
def test_mx_activations_match_numpy(fmt, rng):
  from tests.core import mx_reference as mxref
  x = rng.standard_normal((2, 3, 64)).astype(np.float32) * rng.uniform(0.1, 10, (2, 3, 1)).astype(np.float32)
  x[..., 5] *= 30.0                                         # an outlier channel
  wspec = jq.QuantSpec(qtype=MX_FORMATS[fmt], granularity=jq.PerGroup(axis=0, size=MX_FORMATS[fmt].block_size))
  qa = rtn(jnp.asarray(rng.standard_normal((64, 24)).astype(np.float32) / 8), wspec)
  rows = x.reshape(-1, 64)
  if fmt == "nvfp4":     # the second-level float32 scale is taken per token
    deq = np.stack([mxref.nvfp4_decode(*mxref.nvfp4_encode(r, axis=0, block=16), r.shape) for r in rows])
  else:
    elem = "float8_e4m3fn" if fmt == "mxfp8" else "float4_e2m1fn"
    p, s = mxref.mx_encode(rows, elem, axis=1, block=32)
    deq = mxref.mx_decode(p, s, rows.shape)
  ref = deq.reshape(x.shape).astype(np.float64) @ np.asarray(jq.dequantize(qa), np.float64)
  mm = ActQuantMatmul(act_format=fmt)
  assert mm.act_bits == MX_FORMATS[fmt].bits
  got = np.asarray(jax.jit(mm)(jnp.asarray(x), qa), np.float64)
  # the activation codes are bit-exact; float32 64-term dot products of the dequantized values remain
  np.testing.assert_allclose(got, ref, atol=64 * 1.2e-7 * np.abs(deq).max() * np.abs(ref).max() + 1e-6)
  plain = np.asarray(jq.ops.qdot(jnp.asarray(x), qa), np.float64)
  assert np.abs(plain - got).max() > 1e-3


def test_mx_activation_config_checks(rng):
  inner = ptq.RTN(W4)
  m = ptq.ActQuant(inner, act_format="mxfp4")
  assert (m.name, m.act_bits, m.matmul) == ("rtn+amxfp4", 4, ActQuantMatmul(4, "mxfp4"))
  assert ptq.ActQuant(inner) == ptq.ActQuant(inner, act_bits=8) and ptq.ActQuant(inner).name == "rtn+a8"
  with pytest.raises(ValueError, match=r"mxfp4 activations have 4 bits, got act_bits=8"):
    ptq.ActQuant(inner, act_bits=8, act_format="mxfp4")
  with pytest.raises(ValueError, match=r"act_format must be 'int' or one of"):
    ActQuantMatmul(act_format="fp8")
  qa = rtn(jnp.asarray(rng.standard_normal((48, 8)), jnp.float32), W4)
  with pytest.raises(ValueError, match=r"input features \(48\) to be a multiple of 32"):
    ActQuantMatmul(act_format="mxfp8")(jnp.ones((2, 48)), qa)
