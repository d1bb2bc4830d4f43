"""Building blocks of the cached Llama forward vs NumPy float64 references: RMSNorm, attention over a quantized
cache (scales applied to logits / probabilities), embedding lookup of a QArray embedding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.inference.llama_cached import cached_attention, embed_tokens, rms_norm


def test_rms_norm_matches_numpy(rng):
  x = rng.standard_normal((3, 5, 16)) * 3
  s = 1 + 0.3 * rng.standard_normal(16)
  ref = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-5) * s
  got = rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(s, jnp.float32), 1e-5)
  np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-5, atol=1e-5)
  assert rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16), 1e-5).dtype == jnp.bfloat16


def _np_attention(q, k, v, q_pos, kv_len):
  b, t, h, d = q.shape
  g = k.shape[2]
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for i in range(t):
      for hi in range(h):
        kk, vv = k[bi, :, hi // (h // g)], v[bi, :, hi // (h // g)]
        logit = kk @ q[bi, i, hi] / np.sqrt(d)
        j = np.arange(k.shape[1])
        logit = np.where((j <= q_pos[i]) & (j < kv_len), logit, -np.inf)
        p = np.exp(logit - logit.max())
        out[bi, i, hi] = (p / p.sum()) @ vv
  return out


@pytest.mark.parametrize("quant", [None, "int8", "fp8_e4m3"])
def test_cached_attention_matches_numpy(rng, quant):
  b, t, h, g, d, s = 2, 3, 4, 2, 8, 10
  q = rng.standard_normal((b, t, h, d))
  k = rng.standard_normal((b, s, g, d)) * rng.uniform(0.3, 3, (b, s, g, 1))
  v = rng.standard_normal((b, s, g, d))
  q_pos = np.array([4, 5, 6])
  if quant is None:
    kc, vc, ks, vs = jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), None, None
    kd, vd = k, v
  else:
    spec = jq.QuantSpec(qtype=jq.INT8 if quant == "int8" else jq.FP8_E4M3, granularity=jq.PerToken())
    qk, qv = jq.quantize(jnp.asarray(k, jnp.float32), spec), jq.quantize(jnp.asarray(v, jnp.float32), spec)
    kc, vc, ks, vs = qk.qvalue, qv.qvalue, qk.scale, qv.scale
    kd = np.asarray(kc.astype(jnp.float32), np.float64) * np.asarray(ks, np.float64)
    vd = np.asarray(vc.astype(jnp.float32), np.float64) * np.asarray(vs, np.float64)
  got = jax.jit(cached_attention)(jnp.asarray(q, jnp.float32), kc, vc, ks, vs, jnp.asarray(q_pos, jnp.int32), 7)
  np.testing.assert_allclose(np.asarray(got, np.float64), _np_attention(q, kd, vd, q_pos, 7), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gran", [jq.PerChannel(axis=0), jq.PerGroup(axis=1, size=4), jq.PerGroup(axis=0, size=5)])
def test_embed_tokens_of_qarray(rng, gran):
  emb = rng.standard_normal((20, 8))
  qa = jq.quantize(jnp.asarray(emb, jnp.float32), jq.QuantSpec(qtype=jq.INT4, granularity=gran))
  ids = rng.integers(0, 20, (2, 6))
  got = jax.jit(embed_tokens, static_argnums=2)(qa, jnp.asarray(ids, jnp.int32), jnp.float32)
  ref = np.asarray(jq.dequantize(qa), np.float64)[ids]
  np.testing.assert_array_equal(np.asarray(got, np.float64), ref)
