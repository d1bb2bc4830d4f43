"""KV cache: quantize-on-write numerics vs a NumPy float64 reference, static scales, memory, bad input."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jquant.inference.kv_cache import (KVCache, KVCacheConfig, cache_nbytes, dequantize_layer, init_cache,
                                       read_layer, write_layer)

B, T, H, D, L = 2, 9, 3, 8, 2


def _np_quant(x: np.ndarray, dtype: str, static=None):
  """(codes as float64, scale (..., 1)) of symmetric per-token-per-head quantization in float64."""
  x = x.astype(np.float64)
  qmax = 127.0 if dtype == "int8" else 448.0
  if static is None:
    s = np.abs(x).max(axis=-1, keepdims=True) / qmax
    s = np.where(s > 0, s, 1.0)
  else:
    s = np.broadcast_to(np.asarray(static, np.float64).reshape(-1, 1), x.shape[:-2] + (x.shape[-2], 1))
  v = np.clip(x / s, -128.0 if dtype == "int8" else -qmax, qmax)   # int8 grid is [-128, 127]
  q = np.round(v) if dtype == "int8" else v.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
  return q, s


def _cache(cfg, **kw):
  return init_cache(cfg, num_layers=L, batch=B, max_len=T, kv_heads=H, head_dim=D, **kw)


@pytest.mark.parametrize("dtype", ["int8", "fp8_e4m3"])
def test_quantize_on_write_matches_numpy(rng, dtype):
  cache = _cache(KVCacheConfig(dtype))
  k = rng.standard_normal((B, 4, H, D)).astype(np.float32) * rng.uniform(0.1, 5, (B, 4, H, 1)).astype(np.float32)
  v = rng.standard_normal((B, 4, H, D)).astype(np.float32)
  pos = int(rng.integers(0, T - 4))
  cache = jax.jit(write_layer, static_argnums=1)(cache, 1, jnp.asarray(k), jnp.asarray(v), pos)
  kc, vc, ks, vs = read_layer(cache, 1)
  assert kc.dtype == (jnp.int8 if dtype == "int8" else jnp.float8_e4m3fn) and ks.shape == (B, T, H, 1)
  for got, gots, x in ((kc, ks, k), (vc, vs, v)):
    q_ref, s_ref = _np_quant(x, dtype)
    np.testing.assert_allclose(np.asarray(gots[:, pos:pos + 4], np.float64), s_ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got[:, pos:pos + 4].astype(jnp.float32), np.float64), q_ref, atol=1.0)
    assert np.mean(np.asarray(got[:, pos:pos + 4].astype(jnp.float32)) == q_ref) > 0.98
  kd, _ = dequantize_layer(cache, 1)
  q_ref, s_ref = _np_quant(k, dtype)
  bound = s_ref * (0.5 if dtype == "int8" else 448.0 * 2.0**-4)  # half a step (int8) / 2^-4 relative (e4m3)
  assert np.all(np.abs(np.asarray(kd[:, pos:pos + 4], np.float64) - k) <= bound + 1e-6)
  untouched = [i for i in range(T) if not pos <= i < pos + 4]
  assert np.all(np.asarray(kc[:, untouched].astype(jnp.float32)) == 0)
  assert np.all(np.asarray(read_layer(cache, 0)[0].astype(jnp.float32)) == 0)   # other layer untouched


def test_static_scales_saturate_and_are_stored(rng):
  ks = tuple(float(s) for s in rng.uniform(0.005, 0.02, H))
  cache = _cache(KVCacheConfig("int8", k_scale=ks, v_scale=0.01))
  k = rng.standard_normal((B, 3, H, D)).astype(np.float32) * 3.0
  cache = write_layer(cache, 0, jnp.asarray(k), jnp.asarray(k), 2)
  kc, vc, kss, vss = read_layer(cache, 0)
  q_ref, s_ref = _np_quant(k, "int8", static=ks)
  np.testing.assert_allclose(np.asarray(kss[:, 2:5]), np.broadcast_to(s_ref, kss[:, 2:5].shape), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vss[:, 2:5]), 0.01, rtol=1e-6)
  got = np.asarray(kc[:, 2:5], np.float64)
  assert np.abs(got - q_ref).max() <= 1.0 and np.mean(got == q_ref) > 0.98
  assert got.max() == 127 and got.min() == -128  # 3-sigma values beyond the static range saturate


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float_cache_stores_values(rng, dtype):
  cache = _cache(KVCacheConfig(dtype))
  k = jnp.asarray(rng.standard_normal((B, 2, H, D)), jnp.float32)
  cache = write_layer(cache, 0, k, -k, 5)
  kd, vd = dequantize_layer(cache, 0)
  np.testing.assert_array_equal(np.asarray(kd[:, 5:7]), np.asarray(k.astype(dtype).astype(jnp.float32)))
  np.testing.assert_array_equal(np.asarray(vd[:, 5:7]), -np.asarray(k.astype(dtype).astype(jnp.float32)))
  assert cache.k_scale is None


def test_cache_nbytes_counts_values_and_scales():
  vals = 2 * L * B * T * H * D
  assert cache_nbytes(_cache(KVCacheConfig("float32"))) == 4 * vals
  assert cache_nbytes(_cache(KVCacheConfig("bfloat16"))) == 2 * vals
  assert cache_nbytes(_cache(KVCacheConfig("int8"))) == vals + 4 * 2 * L * B * T * H
  abstract = jax.eval_shape(lambda: _cache(KVCacheConfig("fp8_e4m3")))
  assert isinstance(abstract, KVCache) and cache_nbytes(abstract) == vals + 4 * 2 * L * B * T * H


def test_bad_cache_configs():
  assert KVCacheConfig("fp8") == KVCacheConfig("fp8_e4m3")   # alias used by `jquant eval --kv-cache fp8`
  with pytest.raises(ValueError, match=r"unsupported cache dtype 'int2'"):
    KVCacheConfig("int2")
  with pytest.raises(ValueError, match=r"only apply to int8 / fp8_e4m3"):
    KVCacheConfig("bfloat16", k_scale=0.1, v_scale=0.1)
  with pytest.raises(ValueError, match=r"give both k_scale and v_scale"):
    KVCacheConfig("int8", k_scale=0.1)
  with pytest.raises(ValueError, match=r"finite positive"):
    KVCacheConfig("int8", k_scale=-1.0, v_scale=0.1)
  with pytest.raises(TypeError, match=r"positive float or a sequence"):
    KVCacheConfig("int8", k_scale="big", v_scale=0.1)
  with pytest.raises(ValueError, match=r"expected 1 \(per tensor\) or kv_heads = 3"):
    _cache(KVCacheConfig("int8", k_scale=(0.1, 0.2), v_scale=0.1))
  with pytest.raises(ValueError, match=r"max_len must be a positive int"):
    init_cache(KVCacheConfig(), num_layers=1, batch=1, max_len=0, kv_heads=1, head_dim=2)
  with pytest.raises(TypeError, match=r"must be a KVCacheConfig"):
    init_cache("int8", num_layers=1, batch=1, max_len=4, kv_heads=1, head_dim=2)
  with pytest.raises(TypeError, match=r"expected a KVCache"):
    cache_nbytes({"k": 1})
