"""What only the int8 kernel has: per-token quantization, fused dynamic quantization, int8 operand rules.

The checks int8 shares with fp8 (reference, interpret numerics, lowering, shape errors) are in
test_scaled_matmul.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from pk_testutil import DEVICE_KINDS, SCALED_KINDS, assert_close, lower_for_cuda, sds

from pallas_kernels.int8_matmul import (Config, default_config, int8_matmul, int8_matmul_dynamic, quantize_per_token,
                                        reference_dynamic, supports)
from pallas_kernels._scaled_matmul import round_half_even

INT8 = SCALED_KINDS[0]


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


def test_round_half_even_matches_numpy_rint(rng):
  v = np.concatenate([rng.uniform(-300, 300, 1000), np.arange(-8.5, 9.0, 0.5)]).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(round_half_even(jnp.asarray(v))), np.rint(v))


@pytest.mark.parametrize("m,n,k,dtype", [(1, 32, 128, jnp.bfloat16), (9, 40, 160, jnp.float32),
                                         (3, 64, 256, jnp.float16)])
def test_dynamic_interpret_matches_reference(rng, m, n, k, dtype):
  x = jnp.asarray(rng.standard_normal((m, k)), dtype)
  x = x.at[0].set(0)  # an all-zero token gets scale 1
  _, w, _, ws = INT8.make_inputs(rng, m, n, k)
  got = int8_matmul_dynamic(x, w, ws, interpret=True)
  assert got.dtype == dtype
  assert_close(got, reference_dynamic(x, w, ws), dtype)


@pytest.mark.parametrize("device_kind", DEVICE_KINDS)
@pytest.mark.parametrize("m", [1, 16, 48, 512])
def test_dynamic_default_configs_lower_for_cuda(device_kind, m):
  for dtype in (jnp.bfloat16, jnp.float32):
    lower_for_cuda(int8_matmul_dynamic, sds((m, 512), dtype), sds((256, 512), jnp.int8), sds((1, 256), jnp.float32),
                   device_kind=device_kind)


def test_default_config_fits_shared_memory():
  for m in (1, 16, 48, 4096):
    for itemsize in (1, 2, 4):
      cfg = default_config(m, 4096, x_itemsize=itemsize)
      assert supports(sds((m, 64), {1: jnp.int8, 2: jnp.bfloat16, 4: jnp.float32}[itemsize]), sds((64, 64), jnp.int8),
                      None if itemsize > 1 else sds((m, 1), jnp.float32), config=cfg) is None


def test_unsupported_inputs_raise_with_reason(rng):
  x, w, xs, ws = INT8.make_inputs(rng, 2, 32, 64)
  with pytest.raises(NotImplementedError, match="int8 activations"):
    int8_matmul(x.astype(jnp.bfloat16), w, xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="int8 weights"):
    int8_matmul(x, w.astype(jnp.bfloat16), xs, ws, interpret=True)
  with pytest.raises(NotImplementedError, match="dynamic quantization needs"):
    int8_matmul_dynamic(x, w, ws, interpret=True)
  with pytest.raises(ValueError, match="block_k"):
    Config(block_m=16, block_n=64, block_k=16)
  assert supports(x, w, xs, ws) is None


def test_dynamic_empty_m_returns_empty(rng):
  _, w, _, ws = INT8.make_inputs(rng, 1, 32, 64)
  assert int8_matmul_dynamic(jnp.zeros((0, 64), jnp.bfloat16), w, ws, interpret=True).shape == (0, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 2048), (1024, 4096, 4096)])
def test_gpu_dynamic_matches_reference(rng, m, n, k):
  _, w, _, ws = INT8.make_inputs(rng, m, n, k)
  xf = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  assert_close(int8_matmul_dynamic(xf, w, ws), reference_dynamic(xf, w, ws), jnp.bfloat16)
