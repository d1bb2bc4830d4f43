"""MX formats through the public API: checkpoints (bit-exact), quantize_params, fake_quant (QAT) and qdot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.core import mx
from jquant.core.quantize import scale_f32

pytestmark = pytest.mark.randomized
ALL = [jq.MXFP8_E4M3, jq.MXFP8_E5M2, jq.MXFP4, jq.NVFP4]


def spec_of(qt, axis=0):
  return jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=axis, size=qt.block_size))


def bits(a):
  a = jnp.asarray(a)
  if a.dtype == jnp.float4_e2m1fn:
    return np.asarray(mx.fp4_codes(a))
  return np.asarray(jax.lax.bitcast_convert_type(a, {1: jnp.uint8, 4: jnp.uint32}[a.dtype.itemsize]))


@pytest.mark.parametrize("qt", ALL, ids=lambda q: q.name)
def test_checkpoint_round_trip_bit_exact(rng, tmp_path, qt):
  w = rng.normal(size=(64, 7)).astype(np.float32) * np.exp2(rng.integers(-8, 8, size=(64, 1)))
  qa = jq.quantize(jnp.asarray(w), spec_of(qt))
  tree = {"blk": {"kernel": qa, "bias": jnp.asarray(w[0])}}
  jq.io.save_safetensors(tmp_path / "p.safetensors", tree)
  back = jq.io.load_safetensors(tmp_path / "p.safetensors")["blk"]["kernel"]
  assert back.spec == qa.spec and back.qvalue.dtype == qa.qvalue.dtype
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(qa)):
    np.testing.assert_array_equal(bits(got), bits(want))
  np.testing.assert_array_equal(np.asarray(jq.dequantize(back)), np.asarray(jq.dequantize(qa)))


def test_checkpoint_fp4_is_packed_and_corrupt_scale_refused(rng):
  qa = jq.quantize(jnp.asarray(rng.normal(size=(32, 6)).astype(np.float32)), spec_of(jq.NVFP4))
  tensors, meta = jq.io.to_storage({"k": qa})
  assert tensors["k.qvalue"].shape == (32, 3) and tensors["k.qvalue"].dtype == np.uint8    # two per byte
  tensors = dict(tensors)
  tensors["k.scale.tensor"] = np.array(tensors["k.scale.tensor"]) * 0
  with pytest.raises(ValueError, match="not finite and positive"):
    jq.io.from_storage(tensors, meta)


@pytest.mark.parametrize("qt", [jq.MXFP4, jq.NVFP4], ids=lambda q: q.name)
def test_quantize_params_and_qdot(rng, qt):
  w = rng.normal(size=(64, 16)).astype(np.float32)
  params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.zeros(16)}}
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*kernel", spec_of(qt))])
  qp = jq.quantize_params(params, cfg)
  qa = qp["dense"]["kernel"]
  assert isinstance(qa, jq.QArray) and qa.qtype is qt
  x = rng.normal(size=(5, 64)).astype(np.float32)
  wd = np.asarray(jq.dequantize(qa), np.float64)
  got = np.asarray(jax.jit(lambda x, w: jq.qdot(x, w, implementation="xla"))(jnp.asarray(x), qa))
  np.testing.assert_allclose(got, x.astype(np.float64) @ wd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qt", [jq.MXFP8_E4M3, jq.NVFP4], ids=lambda q: q.name)
def test_fake_quant_forward_and_straight_through_gradient(rng, qt):
  x = jnp.asarray(rng.normal(size=(3, 64)).astype(np.float32))
  spec = spec_of(qt, axis=-1)
  y = jq.fake_quant(x, spec)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(jq.dequantize(jq.quantize(x, spec))))
  g = np.asarray(jax.grad(lambda v: jnp.sum(jq.fake_quant(v, spec) * 2.0))(x))
  # MX saturates: a block's amax can exceed qmax * scale (up to 2**(emax+1) * X); those elements get a clipped
  # (zero) gradient, every element inside the format's range passes it through.
  lim = qt.qmax * np.repeat(np.asarray(scale_f32(jq.quantize(x, spec)), np.float64), qt.block_size, axis=-1)
  ax = np.abs(np.asarray(x, np.float64))
  np.testing.assert_array_equal(g[ax <= lim * (1 - 1e-6)], 2.0)
  np.testing.assert_array_equal(g[ax > lim * (1 + 1e-6)], 0.0)
  assert (g == 2.0).mean() > 0.9
