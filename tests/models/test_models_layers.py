"""jquant.models.layers.Linear: plain kernels, input_scale, matmul override, QArray kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.models.layers import Linear


def _params(rng, k, n, bias=True, input_scale=False):
  p = {"kernel": jnp.asarray(rng.standard_normal((k, n)), jnp.float32)}
  if bias:
    p["bias"] = jnp.asarray(rng.standard_normal(n), jnp.float32)
  if input_scale:
    p["input_scale"] = jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32)
  return p


def test_plain_with_bias_and_input_scale(rng):
  x = rng.standard_normal((2, 3, 8))
  p = _params(rng, 8, 5, input_scale=True)
  got = Linear(5).apply({"params": p}, jnp.asarray(x, jnp.float32))
  want = (x * np.asarray(p["input_scale"], np.float64)) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_init_creates_input_scale_only_when_asked(key):
  x = jnp.ones((1, 4))
  assert set(Linear(3).init(key, x)["params"]) == {"kernel", "bias"}
  assert set(Linear(3, use_bias=False, use_input_scale=True).init(key, x)["params"]) == {"kernel", "input_scale"}


def _custom_matmul(x, kernel):
  return 2.0 * (x @ kernel)


def test_matmul_override_and_hashable(rng):
  x = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
  p = _params(rng, 6, 4, bias=False)
  layer = Linear(4, use_bias=False, matmul=_custom_matmul)
  hash(layer)
  np.testing.assert_allclose(jax.jit(layer.apply)({"params": p}, x), 2.0 * (x @ p["kernel"]), rtol=1e-5)


def test_qarray_kernel_equals_dequantized_matmul(rng):
  x = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)
  p = _params(rng, 64, 16)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), symmetric=True)
  qp = dict(p, kernel=jq.quantize(p["kernel"], spec))
  got = jax.jit(Linear(16).apply)({"params": qp}, x)
  want = np.asarray(x, np.float64) @ np.asarray(jq.dequantize(qp["kernel"]), np.float64) + np.asarray(p["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_kernel_shape(rng):
  p = _params(rng, 5, 6)
  with pytest.raises(ValueError, match=r"expected \(in, out\)"):
    Linear(6).apply({"params": p}, jnp.ones((2, 8)))
