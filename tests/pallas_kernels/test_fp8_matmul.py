"""fp8_matmul: reference vs NumPy float64, interpret numerics, CUDA lowering, supports()."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from pk_testutil import A100, DEVICE_KINDS, assert_close, lower_for_cuda, sds

from pallas_kernels.fp8_matmul import Config, autotune_configs, fp8_matmul, reference, supports

E4, E5 = jnp.float8_e4m3fn, jnp.float8_e5m2


def make_inputs(rng, m, n, k, dtype=E4, *, per_tensor=False):
  x = jnp.asarray(rng.standard_normal((m, k)) * 4, dtype)
  w = jnp.asarray(rng.standard_normal((n, k)) * 4, dtype)
  xs = jnp.asarray(rng.uniform(0.01, 0.1, (1, 1) if per_tensor else (m, 1)), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.01, 0.1, (1, 1) if per_tensor else (1, n)), jnp.float32)
  return x, w, xs, ws


@pytest.mark.parametrize("dtype", [E4, E5])
def test_reference_matches_numpy_float64(rng, dtype):
  x, w, xs, ws = make_inputs(rng, 5, 24, 300, dtype)
  np_dtype = {E4: ml_dtypes.float8_e4m3fn, E5: ml_dtypes.float8_e5m2}[dtype]
  xn = np.asarray(x).astype(np_dtype).astype(np.float64)
  wn = np.asarray(w).astype(np_dtype).astype(np.float64)
  want = (xn @ wn.T) * np.asarray(xs, np.float64) * np.asarray(ws, np.float64)
  np.testing.assert_allclose(np.asarray(reference(x, w, xs, ws, out_dtype=jnp.float32)), want, rtol=1e-5,
                             atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("m,n,k,dtype,per_tensor,out_dtype,config", [
    (1, 64, 128, E4, False, jnp.float32, None),
    (7, 48, 200, E5, True, jnp.bfloat16, None),
    (40, 96, 256, E4, True, jnp.float16, Config(block_m=32, block_n=32, block_k=64, num_stages=2)),
])
def test_interpret_matches_reference(rng, m, n, k, dtype, per_tensor, out_dtype, config):
  x, w, xs, ws = make_inputs(rng, m, n, k, dtype, per_tensor=per_tensor)
  got = fp8_matmul(x, w, xs, ws, out_dtype=out_dtype, config=config, interpret=True)
  assert got.dtype == out_dtype and got.shape == (m, n)
  assert_close(got, reference(x, w, xs, ws, out_dtype=out_dtype), out_dtype)


@pytest.mark.parametrize("device_kind", DEVICE_KINDS)
@pytest.mark.parametrize("m", [1, 48, 512])
@pytest.mark.parametrize("dtype", [E4, E5])
def test_default_configs_lower_for_cuda(device_kind, m, dtype):
  args = (sds((m, 512), dtype), sds((256, 512), dtype), sds((m, 1), jnp.float32), sds((1, 256), jnp.float32))
  if device_kind == A100 and dtype == E4:
    # Triton cannot convert e4m3 below sm89 (its compiler aborts), so supports() refuses it up front.
    with pytest.raises(NotImplementedError, match="compute capability >= 8.9"):
      lower_for_cuda(fp8_matmul, *args, device_kind=device_kind)
  else:
    lower_for_cuda(fp8_matmul, *args, device_kind=device_kind)


@pytest.mark.parametrize("config", autotune_configs(), ids=str)
def test_autotune_configs_lower_for_cuda(config):
  fn = functools.partial(fp8_matmul, config=config)
  lower_for_cuda(fn, sds((64, 1024), E4), sds((512, 1024), E4), sds((1, 1), jnp.float32), sds((1, 1), jnp.float32))


def test_unsupported_inputs_raise_with_reason(rng):
  x, w, xs, ws = make_inputs(rng, 2, 32, 64)
  with pytest.raises(NotImplementedError, match="differ"):
    fp8_matmul(x, w.astype(E5), xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="float8_e4m3fn or float8_e5m2"):
    fp8_matmul(x.astype(jnp.bfloat16), w, xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="out_dtype"):
    fp8_matmul(x, w, xs, ws, out_dtype=jnp.int8, interpret=True)
  big = Config(block_m=128, block_n=256, block_k=256, num_stages=4)
  with pytest.raises(NotImplementedError, match="shared memory"):
    fp8_matmul(x, w, xs, ws, config=big, interpret=True)
  assert supports(x, w, xs, ws) is None


def test_bad_inputs_raise(rng):
  x, w, xs, ws = make_inputs(rng, 2, 32, 64)
  with pytest.raises(ValueError, match="2-D"):
    fp8_matmul(x[None], w, xs, ws)
  with pytest.raises(ValueError, match="disagree on K"):
    fp8_matmul(x, w[:, :32], xs, ws)
  with pytest.raises(ValueError, match="x_scale"):
    fp8_matmul(x, w, xs.T, ws)
  with pytest.raises(ValueError, match="w_scale"):
    fp8_matmul(x, w, xs, ws.T)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 2048), (1024, 4096, 4096)])
@pytest.mark.parametrize("dtype", [E4, E5])
def test_gpu_matches_reference(rng, m, n, k, dtype):
  x, w, xs, ws = make_inputs(rng, m, n, k, dtype)
  assert_close(fp8_matmul(x, w, xs, ws, autotune=True), reference(x, w, xs, ws), jnp.bfloat16)


def test_empty_m_returns_empty(rng):
  x, w, xs, ws = make_inputs(rng, 1, 32, 64)
  out = fp8_matmul(x[:0], w, xs[:0], ws, out_dtype=jnp.float32, interpret=True)
  assert out.shape == (0, 32) and out.dtype == jnp.float32
