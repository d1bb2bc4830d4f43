"""The Llama LM of ``jquant.models.llama`` run position by position against a `KVCache`.

Same params tree (``embed_tokens/embedding``, ``layers_{i}/...``, ``norm/scale``), the same ``Linear`` layer (so
QArray / PreparedWeight kernels go through ``jquant.ops.qdot``, and ``input_scale`` from AWQ / SmoothQuant is
honoured) and the same RoPE functions; RMSNorm repeats Flax's ``nn.RMSNorm`` arithmetic. On top of the model:

* the embedding may be a QArray (quantized tied embedding / LM head) with one scale row per token (PerChannel
  axis 0, or PerGroup along the hidden axis): rows are gathered before dequantizing;
* attention writes the new keys / values into the cache (quantizing them for int8 / fp8 caches), then attends
  over the cached positions; per-token cache scales are applied to the logits (keys) and to the probabilities
  (values), so the dequantized cache is never materialised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jquant.core import QArray, dequantize
from jquant.inference.kv_cache import KVCache, read_layer, write_layer
from jquant.models.layers import Linear, MatmulFn, embed_rows
from jquant.models.llama import LlamaConfig, apply_rope, rope_tables

__all__ = ["rms_norm", "embed_tokens", "lm_head", "cached_attention", "forward_cached", "param_dtype"]

_HI = jax.lax.Precision.HIGHEST


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """Flax ``nn.RMSNorm`` arithmetic: float32 statistics, result in promote(x.dtype, scale.dtype). x: (..., D)."""
  var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  y = x.astype(jnp.float32) * (jax.lax.rsqrt(var + eps) * scale)
  return y.astype(jnp.result_type(x, scale))


def param_dtype(params: dict) -> jnp.dtype:
  """The model's compute dtype: the embedding's float dtype (for a QArray, the dtype it was quantized from)."""
  emb = params["embed_tokens"]["embedding"]
  return jnp.dtype(emb.dtype)


# (B, T) ids -> (B, T, hidden) rows of a float or QArray embedding: the model's own lookup (one definition)
embed_tokens = embed_rows


def lm_head(params: dict, hidden: jax.Array, eps: float) -> jax.Array:
  """Final RMSNorm and the tied head: (B, T, hidden) -> (B, T, vocab) logits (as ``LlamaLM.head``)."""
  h = rms_norm(hidden, params["norm"]["scale"], eps)
  emb = params["embed_tokens"]["embedding"]
  w = dequantize(emb, h.dtype) if isinstance(emb, QArray) else emb.astype(h.dtype)
  return jnp.einsum("btd,vd->btv", h, w, precision=_HI)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, k_scale, v_scale, q_pos: jax.Array,
                     kv_len) -> jax.Array:
  """Grouped-query attention of new queries against cached keys / values.

  Args:
    q: (B, t, H, D) rotated queries at absolute positions ``q_pos``.
    k, v: (B, S, G, D) cached keys (rotated) / values in storage dtype, G = kv heads dividing H.
    k_scale, v_scale: (B, S, G, 1) float32 per-token scales, or None for a float cache.
    q_pos: (t,) int32 absolute positions of the queries; key j is visible to query i when j <= q_pos[i].
    kv_len: number of valid cached positions (keys at j >= kv_len are masked).

  Returns:
    (B, t, H, D) in q's dtype.
  """
  bsz, t, nh, hd = q.shape
  g = k.shape[2]
  dt = q.dtype
  qg = q.reshape(bsz, t, g, nh // g, hd)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k.astype(dt), precision=_HI) / jnp.sqrt(hd)
  if k_scale is not None:
    logits = logits.astype(jnp.float32) * jnp.transpose(k_scale[..., 0], (0, 2, 1))[:, :, None, None, :]
  j = jnp.arange(k.shape[1], dtype=jnp.int32)
  visible = (j[None, :] <= q_pos[:, None]) & (j[None, :] < kv_len)
  logits = jnp.where(visible, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if v_scale is not None:
    probs = probs * jnp.transpose(v_scale[..., 0], (0, 2, 1))[:, :, None, None, :]
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs.astype(dt), v.astype(dt), precision=_HI)
  return out.reshape(bsz, t, nh, hd)


def _linear(p: dict, x: jax.Array, features: int, matmul: MatmulFn | None) -> jax.Array:
  return Linear(features, use_bias=False, matmul=matmul).apply({"params": p}, x)


def _block(cfg: LlamaConfig, p: dict, x, cos, sin, cache: KVCache, layer: int, pos, q_pos, read_upto,
           matmul) -> tuple[jax.Array, KVCache]:
  bsz, t, _ = x.shape
  hd = cfg.head_dim
  a = p["self_attn"]
  h = rms_norm(x, p["input_layernorm"]["scale"], cfg.rms_eps)
  q = _linear(a["q_proj"], h, cfg.num_heads * hd, matmul).reshape(bsz, t, cfg.num_heads, hd)
  k = _linear(a["k_proj"], h, cfg.num_kv_heads * hd, matmul).reshape(bsz, t, cfg.num_kv_heads, hd)
  v = _linear(a["v_proj"], h, cfg.num_kv_heads * hd, matmul).reshape(bsz, t, cfg.num_kv_heads, hd)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  cache = write_layer(cache, layer, k, v, pos)
  kc, vc, ks, vs = read_layer(cache, layer, read_upto)
  att = cached_attention(q, kc, vc, ks, vs, q_pos, pos + t)
  x = x + _linear(a["o_proj"], att.reshape(bsz, t, cfg.num_heads * hd), cfg.hidden, matmul)
  h = rms_norm(x, p["post_attention_layernorm"]["scale"], cfg.rms_eps)
  m = p["mlp"]
  gate = _linear(m["gate_proj"], h, cfg.intermediate, matmul)
  up = _linear(m["up_proj"], h, cfg.intermediate, matmul)
  return x + _linear(m["down_proj"], jax.nn.silu(gate) * up, cfg.hidden, matmul), cache


def forward_cached(cfg: LlamaConfig, params: dict, ids: jax.Array, cache: KVCache, *, matmul: MatmulFn | None = None,
                   dtype=None, start: int | None = None, last_only: bool = False) -> tuple[jax.Array, KVCache]:
  """Runs ``ids`` at positions [cache.length, cache.length + t), writing their keys / values into the cache.

  Args:
    cfg: the LlamaConfig.
    params: the model params (float, or with QArray / PreparedWeight kernels and optionally a QArray embedding).
    ids: (B, t) int token ids.
    cache: the `KVCache` (its ``length`` is the position of ids[:, 0]).
    matmul: optional ``matmul(x, kernel)`` for every Linear (e.g. W8A8 with dynamic activation quantization).
    dtype: compute dtype; default `param_dtype`.
    start: the static position of ids[:, 0] when known (prefill from 0): attention then reads only the first
      ``start + t`` cached positions instead of all ``max_len``.
    last_only: compute logits for the last position only.

  Returns:
    (logits (B, t or 1, vocab) float32, cache with ``length`` advanced by t).
  """
  dtype = jnp.dtype(dtype or param_dtype(params))
  bsz, t = ids.shape
  pos = cache.length if start is None else jnp.asarray(start, jnp.int32)
  q_pos = pos + jnp.arange(t, dtype=jnp.int32)
  cos, sin = rope_tables(jnp.broadcast_to(q_pos, (bsz, t)), cfg.head_dim, cfg.rope_base)
  x = embed_tokens(params["embed_tokens"]["embedding"], ids, dtype)
  read_upto = None if start is None else start + t
  for i in range(cfg.num_layers):
    x, cache = _block(cfg, params[f"layers_{i}"], x, cos, sin, cache, i, pos, q_pos, read_upto, matmul)
  if last_only:
    x = x[:, -1:]
  logits = lm_head(params, x, cfg.rms_eps)
  return logits.astype(jnp.float32), dataclasses.replace(cache, length=pos + t)
