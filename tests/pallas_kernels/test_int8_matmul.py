"""int8_matmul / int8_matmul_dynamic: reference vs NumPy float64, interpret numerics, CUDA lowering, supports()."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from pk_testutil import DEVICE_KINDS, assert_close, lower_for_cuda, sds

from pallas_kernels.int8_matmul import (Config, autotune_configs, default_config, int8_matmul, int8_matmul_dynamic,
                                        quantize_per_token, reference, reference_dynamic, supports)


def make_inputs(rng, m, n, k, *, per_tensor=False):
  x = jnp.asarray(rng.integers(-128, 128, (m, k)), jnp.int8)
  w = jnp.asarray(rng.integers(-128, 128, (n, k)), jnp.int8)
  xs = jnp.asarray(rng.uniform(0.001, 0.01, (1, 1) if per_tensor else (m, 1)), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.001, 0.01, (1, 1) if per_tensor else (1, n)), jnp.float32)
  return x, w, xs, ws


def test_reference_matches_numpy_float64(rng):
  x, w, xs, ws = make_inputs(rng, 5, 24, 300)
  want = (np.asarray(x, np.float64) @ np.asarray(w, np.float64).T) * np.asarray(xs, np.float64) * np.asarray(ws)
  np.testing.assert_allclose(np.asarray(reference(x, w, xs, ws, out_dtype=jnp.float32)), want, rtol=1e-6)


def test_quantize_per_token_matches_numpy(rng):
  xf = rng.standard_normal((6, 100)).astype(np.float32)
  xf[2] = 0.0
  q, s = quantize_per_token(jnp.asarray(xf))
  amax = np.abs(xf).max(axis=1, keepdims=True).astype(np.float64)
  s_np = np.where(amax > 0, amax / 127.0, 1.0)
  # XLA may divide by the constant 127 via a reciprocal: allow one float32 ulp on the scale.
  np.testing.assert_allclose(np.asarray(s, np.float64), s_np, rtol=2e-7)
  q_np = np.clip(np.rint(xf / np.asarray(s)), -128, 127).astype(np.int8)
  np.testing.assert_array_equal(np.asarray(q), q_np)


@pytest.mark.parametrize("m,n,k,per_tensor,out_dtype,config", [
    (1, 64, 128, False, jnp.float32, None),
    (7, 48, 200, True, jnp.bfloat16, None),                        # non-multiple N and K, per-tensor scales
    (40, 96, 256, False, jnp.float16, Config(block_m=32, block_n=32, block_k=64, num_stages=2)),
])
def test_interpret_matches_reference(rng, m, n, k, per_tensor, out_dtype, config):
  x, w, xs, ws = make_inputs(rng, m, n, k, per_tensor=per_tensor)
  got = int8_matmul(x, w, xs, ws, out_dtype=out_dtype, config=config, interpret=True)
  assert got.dtype == out_dtype and got.shape == (m, n)
  assert_close(got, reference(x, w, xs, ws, out_dtype=out_dtype), out_dtype)


@pytest.mark.parametrize("m,n,k,dtype", [(1, 32, 128, jnp.bfloat16), (9, 40, 160, jnp.float32),
                                         (3, 64, 256, jnp.float16)])
def test_dynamic_interpret_matches_reference(rng, m, n, k, dtype):
  rng = rng
  x = jnp.asarray(rng.standard_normal((m, k)), dtype)
  x = x.at[0].set(0)  # an all-zero token gets scale 1
  _, w, _, ws = make_inputs(rng, m, n, k)
  got = int8_matmul_dynamic(x, w, ws, interpret=True)
  assert got.dtype == dtype
  assert_close(got, reference_dynamic(x, w, ws), dtype)


@pytest.mark.parametrize("device_kind", DEVICE_KINDS)
@pytest.mark.parametrize("m", [1, 16, 48, 512])
def test_default_configs_lower_for_cuda(device_kind, m):
  lower_for_cuda(int8_matmul, sds((m, 512), jnp.int8), sds((256, 512), jnp.int8), sds((m, 1), jnp.float32),
                 sds((1, 256), jnp.float32), device_kind=device_kind)
  for dtype in (jnp.bfloat16, jnp.float32):
    lower_for_cuda(int8_matmul_dynamic, sds((m, 512), dtype), sds((256, 512), jnp.int8), sds((1, 256), jnp.float32),
                   device_kind=device_kind)


@pytest.mark.parametrize("config", autotune_configs(), ids=str)
def test_autotune_configs_lower_for_cuda(config):
  fn = functools.partial(int8_matmul, config=config)
  lower_for_cuda(fn, sds((64, 1024), jnp.int8), sds((512, 1024), jnp.int8), sds((64, 1), jnp.float32),
                 sds((1, 512), jnp.float32))


def test_default_config_fits_shared_memory():
  for m in (1, 16, 48, 4096):
    for itemsize in (1, 2, 4):
      cfg = default_config(m, 4096, x_itemsize=itemsize)
      assert supports(sds((m, 64), {1: jnp.int8, 2: jnp.bfloat16, 4: jnp.float32}[itemsize]), sds((64, 64), jnp.int8),
                      None if itemsize > 1 else sds((m, 1), jnp.float32), config=cfg) is None


def test_unsupported_inputs_raise_with_reason(rng):
  x, w, xs, ws = make_inputs(rng, 2, 32, 64)
  with pytest.raises(NotImplementedError, match="int8 activations"):
    int8_matmul(x.astype(jnp.bfloat16), w, xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="int8 weights"):
    int8_matmul(x, w.astype(jnp.bfloat16), xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="out_dtype"):
    int8_matmul(x, w, xs, ws, out_dtype=jnp.int32, interpret=True)
  with pytest.raises(NotImplementedError, match="dynamic quantization needs"):
    int8_matmul_dynamic(x, w, ws, interpret=True)
  assert supports(x, w, xs, ws) is None


def test_bad_inputs_raise(rng):
  x, w, xs, ws = make_inputs(rng, 2, 32, 64)
  with pytest.raises(ValueError, match="2-D"):
    int8_matmul(x[None], w, xs, ws)
  with pytest.raises(ValueError, match="disagree on K"):
    int8_matmul(x, w[:, :32], xs, ws)
  with pytest.raises(ValueError, match="x_scale"):
    int8_matmul(x, w, xs[:1, :1].repeat(3, 0), ws)
  with pytest.raises(ValueError, match="w_scale"):
    int8_matmul(x, w, xs, ws.T)
  with pytest.raises(ValueError, match="block_k"):
    Config(block_m=16, block_n=64, block_k=16)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 2048), (1024, 4096, 4096)])
def test_gpu_matches_reference(rng, m, n, k):
  x, w, xs, ws = make_inputs(rng, m, n, k)
  assert_close(int8_matmul(x, w, xs, ws, autotune=True), reference(x, w, xs, ws), jnp.bfloat16)
  xf = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  assert_close(int8_matmul_dynamic(xf, w, ws), reference_dynamic(xf, w, ws), jnp.bfloat16)


def test_empty_m_returns_empty(rng):
  x, w, xs, ws = make_inputs(rng, 1, 32, 64)
  assert int8_matmul(x[:0], w, xs[:0], ws, interpret=True).shape == (0, 32)
  assert int8_matmul_dynamic(x[:0].astype(jnp.bfloat16), w, ws, interpret=True).shape == (0, 32)
