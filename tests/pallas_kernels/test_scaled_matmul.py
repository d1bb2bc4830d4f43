"""int8_matmul and fp8_matmul (one ``_scaled_matmul`` kernel), one test base parameterised by operand type.

Each kind checks: reference vs NumPy float64, interpret numerics vs reference, CUDA lowering of the default and
autotune configs, shape errors, out_dtype refusals, empty M and (on a GPU) the compiled kernel. What only one
operand type has lives in test_int8_matmul.py (dynamic quantization) and test_fp8_matmul.py (format rules).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from pk_testutil import A100, DEVICE_KINDS, SCALED_KINDS, assert_close, lower_for_cuda, sds

from pallas_kernels.int8_matmul import Config

all_kinds = pytest.mark.parametrize("kind", SCALED_KINDS, ids=str)


@all_kinds
def test_reference_matches_numpy_float64(rng, kind):
  x, w, xs, ws = kind.make_inputs(rng, 5, 24, 300)
  xn, wn = (np.asarray(a).astype(kind.np_dtype).astype(np.float64) for a in (x, w))
  want = (xn @ wn.T) * np.asarray(xs, np.float64) * np.asarray(ws, np.float64)
  np.testing.assert_allclose(np.asarray(kind.reference(x, w, xs, ws, out_dtype=jnp.float32)), want,
                             rtol=kind.ref_rtol, atol=1e-7 * np.abs(want).max())


@all_kinds
@pytest.mark.parametrize("m,n,k,per_tensor,out_dtype,config", [
    (1, 64, 128, False, jnp.float32, None),
    (7, 48, 200, True, jnp.bfloat16, None),                        # non-multiple N and K, per-tensor scales
    (40, 96, 256, False, jnp.float16, Config(block_m=32, block_n=32, block_k=64, num_stages=2)),
])
def test_interpret_matches_reference(rng, kind, m, n, k, per_tensor, out_dtype, config):
  x, w, xs, ws = kind.make_inputs(rng, m, n, k, per_tensor=per_tensor)
  got = kind.fn(x, w, xs, ws, out_dtype=out_dtype, config=config, interpret=True)
  assert got.dtype == out_dtype and got.shape == (m, n)
  assert_close(got, kind.reference(x, w, xs, ws, out_dtype=out_dtype), out_dtype)


@all_kinds
@pytest.mark.parametrize("device_kind", DEVICE_KINDS)
@pytest.mark.parametrize("m", [1, 16, 48, 512])
def test_default_configs_lower_for_cuda(kind, device_kind, m):
  args = (sds((m, 512), kind.dtype), sds((256, 512), kind.dtype), sds((m, 1), jnp.float32), sds((1, 256), jnp.float32))
  if device_kind == A100 and kind.dtype == jnp.float8_e4m3fn:
    # Triton cannot convert e4m3 below sm89 (its compiler aborts), so supports() refuses it up front.
    with pytest.raises(NotImplementedError, match="compute capability >= 8.9"):
      lower_for_cuda(kind.fn, *args, device_kind=device_kind)
  else:
    lower_for_cuda(kind.fn, *args, device_kind=device_kind)


@pytest.mark.parametrize("kind,config", [(kd, c) for kd in SCALED_KINDS[:2] for c in kd.autotune_configs()], ids=str)
def test_autotune_configs_lower_for_cuda(kind, config):
  fn = functools.partial(kind.fn, config=config)
  lower_for_cuda(fn, sds((64, 1024), kind.dtype), sds((512, 1024), kind.dtype), sds((64, 1), jnp.float32),
                 sds((1, 1), jnp.float32))


@all_kinds
def test_unsupported_out_dtype_and_tiles_raise_with_reason(rng, kind):
  x, w, xs, ws = kind.make_inputs(rng, 2, 32, 64)
  with pytest.raises(NotImplementedError, match="out_dtype"):
    kind.fn(x, w, xs, ws, out_dtype=jnp.int32, interpret=True)
  big = Config(block_m=128, block_n=256, block_k=256, num_stages=4)
  with pytest.raises(NotImplementedError, match="shared memory"):
    kind.fn(x, w, xs, ws, config=big, interpret=True)


@all_kinds
def test_bad_inputs_raise(rng, kind):
  x, w, xs, ws = kind.make_inputs(rng, 2, 32, 64)
  with pytest.raises(ValueError, match="2-D"):
    kind.fn(x[None], w, xs, ws)
  with pytest.raises(ValueError, match="disagree on K"):
    kind.fn(x, w[:, :32], xs, ws)
  with pytest.raises(ValueError, match="x_scale"):
    kind.fn(x, w, xs[:1, :1].repeat(3, 0), ws)
  with pytest.raises(ValueError, match="w_scale"):
    kind.fn(x, w, xs, ws.T)


@all_kinds
def test_empty_m_returns_empty(rng, kind):
  x, w, xs, ws = kind.make_inputs(rng, 1, 32, 64)
  out = kind.fn(x[:0], w, xs[:0], ws, out_dtype=jnp.float32, interpret=True)
  assert out.shape == (0, 32) and out.dtype == jnp.float32


@pytest.mark.gpu
@all_kinds
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 2048), (1024, 4096, 4096)])
def test_gpu_matches_reference(rng, kind, m, n, k):
  x, w, xs, ws = kind.make_inputs(rng, m, n, k)
  assert_close(kind.fn(x, w, xs, ws, autotune=True), kind.reference(x, w, xs, ws), jnp.bfloat16)
