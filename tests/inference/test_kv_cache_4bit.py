"""4-bit KV caches (int4 per-token-per-head groups, symmetric / asymmetric; NVFP4; Hadamard-rotated): the packed
bytes, scales and decoded values vs a NumPy float64 reference, memory, the jit decode loop, bad configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.inference.cached_eval import cached_perplexity
from jquant.inference.generation import decode, generate, new_cache, prefill
from jquant.inference.kv_cache import KVCache, KVCacheConfig, cache_nbytes, init_cache, read_layer, write_layer
from jquant.models import LlamaConfig
from jquant.ops.hadamard import hadamard_matrix, random_signs
from tests.core import mx_reference as mxref
from tests.core import reference as ref
from tests.inference.helpers import tiny_model

B, T, H, D, L = 2, 9, 3, 32, 2
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
# head_dim 16 (NVFP4 blocks are 16 elements)
TINY16 = LlamaConfig(vocab_size=67, hidden=64, intermediate=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     rope_base=10000.0, rms_eps=1e-5)


def _cache(cfg):
  return init_cache(cfg, num_layers=L, batch=B, max_len=T, kv_heads=H, head_dim=D)


def _nibbles(packed) -> np.ndarray:
  """uint8 (.., D/2) -> (.., D) 4-bit codes 0..15: element 2i is the low nibble of byte i."""
  b = np.asarray(packed).astype(np.int64)
  return np.stack([b & 15, b >> 4], axis=-1).reshape(b.shape[:-1] + (-1,))


def _kv(rng, t):
  """Keys with per-head magnitudes and a few outlier channels (as real keys have), values plain normal."""
  k = rng.standard_normal((B, t, H, D)) * rng.uniform(0.1, 5, (B, t, H, 1))
  k[..., [3, 17]] *= 8.0
  return k.astype(np.float32), rng.standard_normal((B, t, H, D)).astype(np.float32)


def _write(cfg, rng, t=4):
  cache = _cache(cfg)
  k, v = _kv(rng, t)
  pos = int(rng.integers(0, T - t))
  cache = jax.jit(write_layer, static_argnums=1)(cache, 1, jnp.asarray(k), jnp.asarray(v), pos)
  return cache, k, v, slice(pos, pos + t)


@pytest.mark.parametrize("group,symmetric", [(None, True), (8, True), (8, False), (None, False)])
def test_int4_cache_matches_numpy(rng, group, symmetric):
  cfg = KVCacheConfig("int4", group_size=group, symmetric=symmetric)
  cache, k, v, sl = _write(cfg, rng)
  qt = jq.INT4 if symmetric else jq.UINT4
  block = (1, 1, 1, group or D)
  assert cache.k[1].dtype == jnp.uint8 and cache.k[1].shape == (B, T, H, D // 2)
  for codes, scale, zero, x in ((cache.k[1], cache.k_scale[1], cache.k_zero, k),
                                (cache.v[1], cache.v_scale[1], cache.v_zero, v)):
    q_ref, deq_ref, s_ref, z_ref = ref.quantize(x, qt, block, symmetric)
    got = _nibbles(codes[:, sl]).astype(np.float64)
    if symmetric:
      got = np.where(got >= 8, got - 16, got)          # two's complement nibbles
      assert zero is None
    else:
      np.testing.assert_array_equal(np.asarray(zero[1][:, sl], np.float64), z_ref)
    np.testing.assert_allclose(np.asarray(scale[:, sl], np.float64), s_ref, rtol=1e-6)
    assert np.abs(got - q_ref).max() <= 1 and np.mean(got == q_ref) > 0.98   # float32 vs float64 ties
    assert np.all(_nibbles(codes)[:, [i for i in range(T) if i not in range(sl.start, sl.stop)]] == 0)
  kd, vd, ks, vs = read_layer(cache, 1)
  assert ks is None and vs is None and kd.dtype == jnp.float32
  for got, x in ((kd, k), (vd, v)):
    _, deq_ref, s_ref, _ = ref.quantize(x, qt, block, symmetric)
    step = ref.expand(s_ref, x.shape)
    assert np.all(np.abs(np.asarray(got[:, sl], np.float64) - x) <= 0.5 * step * (1 + 1e-5) + 1e-7)
    # same code: equal up to a few float32 roundings of the scale and the product
    close = np.abs(np.asarray(got[:, sl], np.float64) - deq_ref) <= 1e-6 * (np.abs(deq_ref) + step)
    assert np.mean(close) > 0.98


def test_nvfp4_cache_bit_exact(rng):
  cache, k, v, sl = _write(KVCacheConfig("nvfp4"), rng)
  kd, vd, _, _ = read_layer(cache, 1)
  for codes, scale, x, dec in ((cache.k[1], cache.k_scale[1], k, kd), (cache.v[1], cache.v_scale[1], v, vd)):
    c = _nibbles(codes[:, sl])
    vals = np.where(c >= 8, -1.0, 1.0) * E2M1[c & 7]
    blocks = np.asarray(scale.block[:, sl].astype(jnp.float32), np.float64)
    tensor = np.asarray(scale.tensor[:, sl], np.float64)
    assert blocks.shape == (B, 4, H, D // 16) and tensor.shape == (B, 4, H, 1)
    for i in np.ndindex(B, 4, H):       # the format's per-tensor scale is taken per token and head
      p, s, t = mxref.nvfp4_encode(x[i], axis=0, block=16)
      np.testing.assert_array_equal(vals[i][vals[i] != 0], p[p != 0])
      np.testing.assert_array_equal(blocks[i], s)
      assert tensor[i][0] == t
      np.testing.assert_array_equal(np.asarray(dec[:, sl][i]), mxref.nvfp4_decode(p, s, t, x[i].shape))


@pytest.mark.parametrize("dtype", ["int4", "nvfp4"])
def test_rotated_cache_is_rotated_quantization(rng, dtype):
  cfg = KVCacheConfig(dtype, rotate=True)
  cache, k, _, sl = _write(cfg, rng)
  kd = np.asarray(read_layer(cache, 1)[0][:, sl], np.float64)
  r = hadamard_matrix(D, random_signs(D, 0))
  y = k.astype(np.float64) @ r                                 # float64: the rotation is exact up to rounding
  if dtype == "int4":
    _, deq, s, _ = ref.quantize(y, jq.INT4, (1, 1, 1, D), True)
    bound = 0.5 * s[..., 0] * np.sqrt(D)                       # |error| per element <= half a step, in any basis
  else:
    deq = np.stack([mxref.nvfp4_decode(*mxref.nvfp4_encode(y[i], axis=0, block=16), (D,))
                    for i in np.ndindex(B, 4, H)]).reshape(y.shape)
    bound = np.linalg.norm(y - deq, axis=-1) * 1.5 + 1e-6
  back = deq @ r.T
  err = np.linalg.norm(kd - k, axis=-1)
  assert np.all(err <= bound * (1 + 1e-4))
  same = np.all(np.abs(kd - back) <= 1e-4 * np.abs(k).max(axis=-1, keepdims=True), axis=-1)
  assert np.mean(same) > 0.9                                   # a float32 rounding flip changes a whole vector
  plain, _, _, _ = _write(KVCacheConfig(dtype), np.random.default_rng(0))
  assert not np.array_equal(np.asarray(cache.k[1]), np.asarray(plain.k[1]))


def test_4bit_cache_nbytes():
  n = L * B * T * H       # head vectors per k (or v)
  assert cache_nbytes(_cache(KVCacheConfig("int4"))) == 2 * n * (D // 2 + 4)
  assert cache_nbytes(_cache(KVCacheConfig("int4", group_size=8))) == 2 * n * (D // 2 + 4 * D // 8)
  assert cache_nbytes(_cache(KVCacheConfig("int4", group_size=8, symmetric=False))) == 2 * n * (D // 2 + 5 * D // 8)
  abstract = jax.eval_shape(lambda: _cache(KVCacheConfig("nvfp4", rotate=True)))
  assert isinstance(abstract, KVCache) and cache_nbytes(abstract) == 2 * n * (D // 2 + D // 16 + 4)
  assert cache_nbytes(_cache(KVCacheConfig("int8"))) == 2 * n * (D + 4)


@pytest.mark.parametrize("dtype", ["int4", pytest.param("nvfp4", marks=pytest.mark.slow)])
def test_jit_decode_loop_with_4bit_cache(rng, dtype):
  model, params = tiny_model(rng, TINY16)
  prompt = rng.integers(0, TINY16.vocab_size, (1, 4)).astype(np.int32)
  cfg = KVCacheConfig(dtype)
  cache = new_cache(model, cfg, batch=1, max_len=16)
  assert cache.k[0].shape == (1, 16, TINY16.num_kv_heads, TINY16.head_dim // 2) and cache.k[0].dtype == jnp.uint8
  logits, cache = prefill(model, params, prompt, cache)
  ref_logits = np.asarray(model.apply(params, jnp.asarray(prompt))[:, -1], np.float64)
  rel = np.linalg.norm(np.asarray(logits, np.float64) - ref_logits) / np.linalg.norm(ref_logits)
  assert 0 < rel < 0.5, rel         # 4-bit keys / values perturb the logits, but keep them the model's
  res = decode(model, params, jnp.argmax(logits, -1), cache, max_new_tokens=8)
  full = generate(model, params, prompt, max_new_tokens=8, max_len=16, cache_config=cfg)
  np.testing.assert_array_equal(np.asarray(res.tokens), np.asarray(full.tokens))
  assert int(full.cache.length) == 4 + 8 - 1


@pytest.mark.slow
def test_4bit_cache_perplexity_close(rng):
  model, params = tiny_model(rng, TINY16, kernel_scale=1.0)
  params = dict(params, norm={"scale": params["norm"]["scale"] * 0.3})
  ids = rng.integers(0, TINY16.vocab_size, 4 * 48)
  run = lambda cfg: cached_perplexity(model, params, cfg, ids=ids, windows=4, seq_len=48, batch_size=4).ppl
  base = run(KVCacheConfig("float32"))
  for cfg in (KVCacheConfig("int4"), KVCacheConfig("int4", group_size=8, symmetric=False), KVCacheConfig("nvfp4")):
    p = run(cfg)
    assert p != base and abs(p / base - 1) < 0.05, (cfg, p, base)


def test_bad_4bit_configs():
  with pytest.raises(ValueError, match=r"group_size applies to int4"):
    KVCacheConfig("nvfp4", group_size=16)
  with pytest.raises(ValueError, match=r"even int >= 2"):
    KVCacheConfig("int4", group_size=3)
  with pytest.raises(ValueError, match=r"symmetric=False \(zero points\) applies to int4"):
    KVCacheConfig("nvfp4", symmetric=False)
  with pytest.raises(ValueError, match=r"rotate=True applies to 4-bit"):
    KVCacheConfig("int8", rotate=True)
  with pytest.raises(ValueError, match=r"static scales only apply to int8 / fp8_e4m3"):
    KVCacheConfig("int4", k_scale=0.1, v_scale=0.1)
  with pytest.raises(TypeError, match=r"must be bools"):
    KVCacheConfig("int4", symmetric=0)
  with pytest.raises(ValueError, match=r"PerGroup\(axis=-1, size=12\)"):
    init_cache(KVCacheConfig("int4", group_size=12), num_layers=1, batch=1, max_len=2, kv_heads=1, head_dim=32)
  with pytest.raises(ValueError, match=r"head_dim must be even"):
    init_cache(KVCacheConfig("int4"), num_layers=1, batch=1, max_len=2, kv_heads=1, head_dim=7)
  with pytest.raises(ValueError, match=r"size=16"):
    init_cache(KVCacheConfig("nvfp4"), num_layers=1, batch=1, max_len=2, kv_heads=1, head_dim=8)
  with pytest.raises(ValueError, match=r"no Hadamard matrix of size 26"):
    init_cache(KVCacheConfig("int4", rotate=True), num_layers=1, batch=1, max_len=2, kv_heads=1, head_dim=26)
