"""The cached forward is the model's own forward: float-cache logits == ``LlamaLM`` without a cache (every config
the architecture has), and its pieces vs NumPy float64 references (attention over a quantized cache, with the scales
applied to logits / probabilities; embedding lookup of a QArray embedding)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.inference.cached_forward import CacheView, forward_cached
from jquant.inference.generation import generate, new_cache
from jquant.inference.kv_cache import KVCacheConfig
from jquant.models.layers import attention, embed_rows
from tests.inference.helpers import TINY, reference_greedy, tiny_model

# One tiny config per architecture option the cached runtime used to refuse (it had its own block then).
_CONFIGS = {"plain": TINY,
            "biases_untied_rotated": dataclasses.replace(TINY, qkv_bias=True, o_bias=True, tie_embeddings=False,
                                                         rotate_down=True)}


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_float_cache_equals_uncached_forward(rng, name):
  model, params = tiny_model(rng, _CONFIGS[name])
  ids = jnp.asarray(rng.integers(0, TINY.vocab_size, (2, 9)), jnp.int32)
  ref = np.asarray(jax.jit(model.apply)(params, ids))
  run = jax.jit(lambda p, i, c, start: forward_cached(model.module, p, i, c, dtype=jnp.float32, start=start),
                static_argnums=3)
  # prefill through the cache: same program shapes as the uncached forward, so equal to the last bit
  logits, cache = run(params, ids, new_cache(model, KVCacheConfig(), 2, 9), 0)
  np.testing.assert_array_equal(np.asarray(logits), ref)
  assert int(cache.length) == 9
  # token by token against a longer cache (attention over 12 positions, the unwritten ones masked): float32 error
  step = jax.jit(lambda p, i, c: forward_cached(model.module, p, i, c, dtype=jnp.float32))
  cache = new_cache(model, KVCacheConfig(), 2, 12)
  for t in range(9):
    logits, cache = step(params, ids[:, t:t + 1], cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), ref[:, t], rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_generation_works_for_every_config(rng, name):
  model, params = tiny_model(rng, _CONFIGS[name])
  prompt = rng.integers(0, TINY.vocab_size, (2, 4)).astype(np.int32)
  res = generate(model, params, prompt, max_new_tokens=6)
  np.testing.assert_array_equal(np.asarray(res.tokens), reference_greedy(model, params, prompt, 6))


def test_cache_view_writes_then_reads(rng):
  cache = new_cache(TINY, KVCacheConfig(), 1, 6)
  k = jnp.asarray(rng.standard_normal((1, 2, TINY.num_kv_heads, TINY.head_dim)), jnp.float32)
  (kc, vc, ks, vs), view = CacheView(cache, jnp.asarray(3, jnp.int32), 5).update(1, k, 2 * k)
  assert kc.shape == (1, 5, TINY.num_kv_heads, TINY.head_dim) and ks is None and vs is None
  np.testing.assert_array_equal(np.asarray(kc[:, 3:5]), np.asarray(k))
  np.testing.assert_array_equal(np.asarray(vc[:, 3:5]), 2 * np.asarray(k))
  assert not np.any(np.asarray(kc[:, :3])) and not np.any(np.asarray(view.cache.k[0]))   # other layer untouched


def _np_attention(q, k, v, visible):
  b, t, h, d = q.shape
  g = k.shape[2]
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for i in range(t):
      for hi in range(h):
        kk, vv = k[bi, :, hi // (h // g)], v[bi, :, hi // (h // g)]
        logit = np.where(visible[bi, i], kk @ q[bi, i, hi] / np.sqrt(d), -np.inf)
        p = np.exp(logit - logit.max())
        out[bi, i, hi] = (p / p.sum()) @ vv
  return out


@pytest.mark.parametrize("quant", [None, "int8", "fp8_e4m3"])
def test_attention_over_a_cache_matches_numpy(rng, quant):
  b, t, h, g, d, s = 2, 3, 4, 2, 8, 10
  q = rng.standard_normal((b, t, h, d))
  k = rng.standard_normal((b, s, g, d)) * rng.uniform(0.3, 3, (b, s, g, 1))
  v = rng.standard_normal((b, s, g, d))
  visible = np.arange(s)[None, :] <= np.array([4, 5, 6])[:, None]        # queries at positions 4..6
  if quant is None:
    kc, vc, ks, vs = jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), None, None
    kd, vd = k, v
  else:
    spec = jq.QuantSpec(qtype=jq.INT8 if quant == "int8" else jq.FP8_E4M3, granularity=jq.PerToken())
    qk, qv = jq.quantize(jnp.asarray(k, jnp.float32), spec), jq.quantize(jnp.asarray(v, jnp.float32), spec)
    kc, vc, ks, vs = qk.qvalue, qv.qvalue, qk.scale, qv.scale
    kd = np.asarray(kc.astype(jnp.float32), np.float64) * np.asarray(ks, np.float64)
    vd = np.asarray(vc.astype(jnp.float32), np.float64) * np.asarray(vs, np.float64)
  got = jax.jit(attention)(jnp.asarray(q, jnp.float32), kc, vc, jnp.asarray(visible), ks, vs)
  want = _np_attention(q, kd, vd, np.broadcast_to(visible, (b, t, s)))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4)


def test_attention_per_row_padding_mask(rng):
  b, t, h, d = 2, 5, 2, 4
  q, k, v = (rng.standard_normal((b, t, h, d)) for _ in range(3))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  got = attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask[:, None, :]))
  want = _np_attention(q, k, v, np.broadcast_to(mask[:, None, :], (b, t, t)))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gran", [jq.PerChannel(axis=0), jq.PerGroup(axis=1, size=4), jq.PerGroup(axis=0, size=5)])
def test_embed_rows_of_qarray(rng, gran):
  emb = rng.standard_normal((20, 8))
  qa = jq.quantize(jnp.asarray(emb, jnp.float32), jq.QuantSpec(qtype=jq.INT4, granularity=gran))
  ids = rng.integers(0, 20, (2, 6))
  got = jax.jit(embed_rows, static_argnums=2)(qa, jnp.asarray(ids, jnp.int32), jnp.float32)
  ref = np.asarray(jq.dequantize(qa), np.float64)[ids]
  np.testing.assert_array_equal(np.asarray(got, np.float64), ref)
