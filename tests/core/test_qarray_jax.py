"""QArray as a pytree: jit (one trace per shape), vmap, tree maps, device_put; bad-input errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq

W4G = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=32), symmetric=False)


def test_quantize_traces_once_per_shape(rng):
  chex.clear_trace_counter()
  q = jax.jit(chex.assert_max_traces(lambda x: jq.quantize(x, W4G), n=1))
  for _ in range(3):
    q(jnp.asarray(rng.standard_normal((64, 16)), jnp.float32))
  dq = jax.jit(chex.assert_max_traces(lambda qa: jq.dequantize(qa), n=1))
  for _ in range(3):
    dq(jq.quantize(jnp.asarray(rng.standard_normal((64, 16)), jnp.float32), W4G))


def test_qarray_survives_jit_vmap_tree_map_device_put(rng):
  x = jnp.asarray(rng.standard_normal((4, 64, 16)), jnp.float32)
  qa = jax.vmap(lambda a: jq.quantize(a, W4G))(x)
  assert isinstance(qa, jq.QArray) and qa.qvalue.shape == (4, 64, 16) and qa.scale.shape == (4, 2, 16)
  deq = jax.vmap(jq.dequantize)(qa)
  for i in range(4):
    np.testing.assert_array_equal(np.asarray(deq[i]), np.asarray(jq.dequantize(jq.quantize(x[i], W4G))))
  same = jax.jit(lambda a: a)(qa)
  assert same.spec == qa.spec and same.qtype is qa.qtype
  moved = jax.device_put(qa, jax.devices()[0])
  np.testing.assert_array_equal(np.asarray(moved.qvalue.astype(jnp.int8)), np.asarray(qa.qvalue.astype(jnp.int8)))
  leaves = jax.tree.leaves(qa)
  assert len(leaves) == 3      # qvalue, scale, zero_point (g_idx is None)
  doubled = jax.tree.map(lambda a: a, qa)
  assert doubled.shape == qa.shape


def test_grad_through_dequantize_wrt_scale(rng):
  x = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
  qa = jq.quantize(x, jq.QuantSpec(qtype=jq.INT8))
  g = jax.grad(lambda s: jnp.sum(jq.dequantize(jq.QArray(qa.qvalue, s, None, None, qa.qtype, qa.spec, qa.dtype))))(
      qa.scale)
  np.testing.assert_allclose(np.asarray(g), np.asarray(qa.qvalue.astype(jnp.float32)).sum(0, keepdims=True), rtol=1e-5)


def test_nbytes_counts_packed_storage(rng):
  x = jnp.asarray(rng.standard_normal((256, 64)), jnp.float32)
  qa = jq.quantize(x, jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=128)))
  assert qa.nbytes == 256 * 64 // 2 + 2 * 64 * 4


@pytest.mark.parametrize("bad, exc, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), ValueError, "NaN/inf"),
    (np.array([[1.0, np.inf], [0.0, 1.0]], np.float32), ValueError, "NaN/inf"),
    (np.array([[1, 2], [3, 4]], np.int32), TypeError, "floating"),
])
def test_bad_values(bad, exc, match):
  with pytest.raises(exc, match=match):
    jq.quantize(jnp.asarray(bad), jq.QuantSpec(qtype=jq.INT8))


def test_bad_specs_and_shapes(rng):
  x = jnp.asarray(rng.standard_normal((96, 10)), jnp.float32)
  with pytest.raises(ValueError, match="multiple of 64.*Choose a size that divides 96"):
    jq.quantize(x, jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=64)))
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    jq.quantize(x, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=2)))
  with pytest.raises(ValueError, match="size must be a positive int"):
    jq.PerGroup(axis=0, size=0)
  with pytest.raises(ValueError, match="must be symmetric"):
    jq.QuantSpec(qtype=jq.FP8_E4M3, symmetric=False)
  with pytest.raises(ValueError, match="unsigned"):
    jq.QuantSpec(qtype=jq.UINT4, symmetric=True)
  with pytest.raises(ValueError, match="MinMax is an asymmetric"):
    jq.QuantSpec(qtype=jq.INT8, calibration=jq.MinMax())
  with pytest.raises(TypeError, match="QType"):
    jq.QuantSpec(qtype="int8")
  with pytest.raises(TypeError, match="granularity"):
    jq.QuantSpec(qtype=jq.INT8, granularity="per_channel")
  with pytest.raises(ValueError, match="scalar"):
    jq.quantize(jnp.float32(1.0), jq.QuantSpec(qtype=jq.INT8))
  with pytest.raises(TypeError, match="QArray"):
    jq.dequantize(x)


def test_spec_is_hashable_and_usable_as_static_arg(rng):
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())
  assert hash(spec) == hash(jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()))
  f = jax.jit(jq.quantize, static_argnames=("spec",))
  qa = f(jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32), spec=spec)
  assert qa.scale.shape == (3, 5, 1)
