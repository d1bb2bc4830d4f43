"""int4_matmul: reference vs NumPy float64, interpret-mode numerics, CUDA lowering, supports(), GPU runs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pk_testutil import DEVICE_KINDS, assert_close, lower_for_cuda, sds

from pallas_kernels.int4_matmul import Config, autotune_configs, default_config, int4_matmul, reference, supports


def make_inputs(rng, m, n, k, g, *, zeros=False, g_idx=False, signed=True, dtype=jnp.bfloat16):
  x = jnp.asarray(rng.standard_normal((m, k)), dtype)
  w = jnp.asarray(rng.integers(0, 256, (n, k // 2)), jnp.uint8)
  s = jnp.asarray(rng.uniform(0.005, 0.05, (k // g, n)), jnp.float32)
  z = None
  if zeros:
    lo, hi = (-8, 8) if signed else (0, 16)
    z = jnp.asarray(rng.integers(lo, hi, (k // g, n)), jnp.int8 if signed else jnp.uint8)
  gi = jnp.asarray(rng.permutation(np.arange(k) // g), jnp.int32) if g_idx else None
  return x, w, s, z, gi


def numpy_reference(x, w, s, z, gi, *, group_size, signed):
  """float64 unpack -> dequant -> matmul, written independently of the jnp reference."""
  b = np.asarray(w).astype(np.int64)
  q = np.empty((b.shape[0], b.shape[1] * 2), np.int64)
  q[:, 0::2], q[:, 1::2] = b & 15, b >> 4
  if signed:
    q = np.where(q >= 8, q - 16, q)
  k = q.shape[1]
  rows = np.arange(k) // group_size if gi is None else np.asarray(gi)
  deq = q.T.astype(np.float64)
  if z is not None:
    deq = deq - np.asarray(z).astype(np.float64)[rows]
  deq = deq * np.asarray(s, np.float64)[rows]
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64) @ deq


@pytest.mark.parametrize("signed,zeros,g_idx,g", [(True, False, False, 32), (True, True, False, 64),
                                                   (False, True, False, 128), (False, True, True, 32),
                                                   (True, False, True, 64), (False, False, False, 32)])
def test_reference_matches_numpy_float64(rng, signed, zeros, g_idx, g):
  x, w, s, z, gi = make_inputs(rng, 3, 24, 256, g, zeros=zeros, g_idx=g_idx, signed=signed,
                               dtype=jnp.float32)
  got = reference(x, w, s, z, gi, group_size=g, signed=signed)
  want = numpy_reference(x, w, s, z, gi, group_size=g, signed=signed)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


CASES = [  # m, n, k, g, zeros, g_idx, signed, dtype, config
    (1, 64, 256, 32, False, False, True, jnp.bfloat16, None),
    (1, 48, 256, 128, True, False, True, jnp.float16, None),                   # N not a block multiple
    (5, 64, 192, 64, True, False, False, jnp.bfloat16, None),                  # K not a block multiple
    (3, 32, 128, 32, True, True, False, jnp.bfloat16, None),                   # act-order g_idx + zeros (GPTQ)
    (20, 80, 128, 32, False, False, True, jnp.float16, None),
    (2, 64, 512, 128, False, False, True, jnp.bfloat16,
     Config(block_m=16, block_n=32, block_k=64, split_k=4)),                   # split-K decode
    (4, 64, 256, 32, True, False, True, jnp.bfloat16,
     Config(block_m=16, block_n=32, block_k=64)),                              # groups smaller than block_k
    (4, 32, 128, 64, True, False, False, jnp.float16,
     Config(block_m=16, block_n=32, block_k=64, fast_convert=False)),
]


@pytest.mark.parametrize("m,n,k,g,zeros,g_idx,signed,dtype,config", CASES)
def test_interpret_matches_reference(rng, m, n, k, g, zeros, g_idx, signed, dtype, config):
  x, w, s, z, gi = make_inputs(rng, m, n, k, g, zeros=zeros, g_idx=g_idx, signed=signed, dtype=dtype)
  got = int4_matmul(x, w, s, z, gi, group_size=g, signed=signed, config=config, interpret=True)
  assert got.dtype == dtype and got.shape == (m, n)
  want = reference(x, w, s, z, gi, group_size=g, signed=signed)
  assert_close(got, want, dtype)


LOWER_CASES = [  # m, n, k, g, zeros, g_idx: covers every default_config branch
    (1, 4096, 4096, 128, False, False), (1, 256, 1024, 32, True, True), (16, 512, 512, 64, True, False),
    (48, 320, 512, 128, False, False), (1024, 256, 512, 128, True, False), (200, 96, 384, 32, False, True),
]


@pytest.mark.parametrize("device_kind", DEVICE_KINDS)
@pytest.mark.parametrize("m,n,k,g,zeros,g_idx", LOWER_CASES)
def test_default_configs_lower_for_cuda(device_kind, m, n, k, g, zeros, g_idx):
  z = sds((k // g, n), jnp.int8) if zeros else None
  gi = sds((k,), jnp.int32) if g_idx else None
  fn = functools.partial(int4_matmul, group_size=g)
  lowered = lower_for_cuda(lambda x, w, s, z, gi: fn(x, w, s, z, gi), sds((m, k), jnp.bfloat16),
                           sds((n, k // 2), jnp.uint8), sds((k // g, n), jnp.float32), z, gi,
                           device_kind=device_kind)
  assert "int4_matmul" in lowered.as_text()


@pytest.mark.parametrize("config", autotune_configs(), ids=str)
def test_autotune_configs_lower_for_cuda(config):
  fn = functools.partial(int4_matmul, group_size=128, config=config)
  lower_for_cuda(fn, sds((64, 1024), jnp.float16), sds((512, 512), jnp.uint8), sds((8, 512), jnp.float32))


def test_default_config_branches():
  assert default_config(1, 4096, 4096, group_size=128).split_k > 1
  assert default_config(1, 28672, 8192, group_size=128).split_k == 1
  assert default_config(1024, 4096, 4096, group_size=128).block_m == 128
  assert default_config(1, 4096, 4096, group_size=32, has_g_idx=True).block_k == 64
  assert default_config(1, 4096, 4096, group_size=32).block_k == 32


def test_unsupported_inputs_raise_with_reason(rng):
  x, w, s, _, _ = make_inputs(rng, 2, 32, 128, 32)
  x32 = x.astype(jnp.float32)
  reason = supports(x32, w, s, group_size=32)
  assert reason and "bfloat16" in reason
  with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
    int4_matmul(x32, w, s, group_size=32, interpret=True)
  big = Config(block_m=128, block_n=256, block_k=256, num_stages=4)
  assert supports(x, w, s, group_size=32, config=big) is not None
  with pytest.raises(NotImplementedError, match="shared memory"):
    int4_matmul(x, w, s, group_size=32, config=big, interpret=True)
  assert supports(x, w, s, group_size=32) is None


def test_bad_inputs_raise(rng):
  x, w, s, z, gi = make_inputs(rng, 2, 32, 128, 32, zeros=True, g_idx=True)
  with pytest.raises(ValueError, match="2-D"):
    int4_matmul(x[None], w, s, group_size=32)
  with pytest.raises(TypeError, match="uint8"):
    int4_matmul(x, w.astype(jnp.int8), s, group_size=32)
  with pytest.raises(ValueError, match="holds K"):
    int4_matmul(x[:, :64], w, s, group_size=32)
  with pytest.raises(ValueError, match="group_size"):
    int4_matmul(x, w, s, group_size=48)
  with pytest.raises(ValueError, match="scales shape"):
    int4_matmul(x, w, s[:2], group_size=32)
  with pytest.raises(TypeError, match="integer zero points"):
    int4_matmul(x, w, s, z.astype(jnp.float32), group_size=32)
  with pytest.raises(ValueError, match="g_idx"):
    int4_matmul(x, w, s, z, gi[:64], group_size=32)
  with pytest.raises(ValueError, match="block_m"):
    Config(block_m=24, block_n=64, block_k=64)
  with pytest.raises(ValueError, match="split_k"):
    Config(block_m=16, block_n=64, block_k=64, split_k=0)
  with pytest.raises(ValueError, match="num_warps"):
    Config(block_m=16, block_n=64, block_k=64, num_warps=3)


def test_low_precision_scales_and_unsigned_zero_points(rng):
  x, w, s, z, _ = make_inputs(rng, 3, 32, 128, 32, zeros=True, signed=False)
  s16 = s.astype(jnp.bfloat16)
  got = int4_matmul(x, w, s16, z, group_size=32, signed=False, interpret=True)
  assert_close(got, reference(x, w, s16, z, group_size=32, signed=False), jnp.bfloat16)


def test_jit_and_interpret_agree_under_jit(rng):
  x, w, s, z, _ = make_inputs(rng, 2, 32, 128, 64, zeros=True)
  f = jax.jit(functools.partial(int4_matmul, group_size=64, interpret=True))
  assert_close(f(x, w, s, z), reference(x, w, s, z, group_size=64), jnp.bfloat16)


@pytest.mark.parametrize("m,n,k,g,zeros,g_idx", [(1, 4096, 4096, 128, False, False), (16, 1024, 2048, 32, True, True),
                                                 (333, 1000, 1024, 64, True, False)])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.gpu
def test_gpu_matches_reference(rng, m, n, k, g, zeros, g_idx, dtype):
  x, w, s, z, gi = make_inputs(rng, m, n, k, g, zeros=zeros, g_idx=g_idx, dtype=dtype)
  got = int4_matmul(x, w, s, z, gi, group_size=g, autotune=True)
  assert_close(got, reference(x, w, s, z, gi, group_size=g), dtype)


def test_empty_m_returns_empty(rng):
  x, w, s, _, _ = make_inputs(rng, 1, 32, 128, 32)
  out = int4_matmul(x[:0], w, s, group_size=32, interpret=True)
  assert out.shape == (0, 32) and out.dtype == x.dtype
