"""NumPy float64 references for the model building blocks (written from the papers/configs, not from jquant)."""

from __future__ import annotations

import math

import numpy as np


def np_params(tree):
  """A nested dict of arrays as float64 NumPy."""
  return {k: np_params(v) if isinstance(v, dict) else np.asarray(v, np.float64) for k, v in tree.items()}


def rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def layer_norm(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def rope_adjacent(x, positions, base):
  """x (B, T, H, D); rotate pairs (2i, 2i+1) by positions * base**(-2i/D), element by element."""
  out = np.array(x, np.float64)
  d = x.shape[-1]
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      for i in range(d // 2):
        ang = positions[b, t] * base ** (-2.0 * i / d)
        c, s = math.cos(ang), math.sin(ang)
        a, bb = x[b, t, :, 2 * i], x[b, t, :, 2 * i + 1]
        out[b, t, :, 2 * i] = a * c - bb * s
        out[b, t, :, 2 * i + 1] = a * s + bb * c
  return out


def llama_block(p, x, cfg):
  """One pre-RMSNorm Llama block with GQA, adjacent-pair RoPE, causal mask, SwiGLU. x (B, T, D)."""
  bsz, t, _ = x.shape
  hd, nh, nkv = cfg.hidden // cfg.num_heads, cfg.num_heads, cfg.num_kv_heads
  pos = np.broadcast_to(np.arange(t), (bsz, t))
  h = rms_norm(x, p["input_layernorm"]["scale"], cfg.rms_eps)
  a = p["self_attn"]
  q = rope_adjacent((h @ a["q_proj"]["kernel"]).reshape(bsz, t, nh, hd), pos, cfg.rope_base)
  k = rope_adjacent((h @ a["k_proj"]["kernel"]).reshape(bsz, t, nkv, hd), pos, cfg.rope_base)
  v = (h @ a["v_proj"]["kernel"]).reshape(bsz, t, nkv, hd)
  out = np.zeros((bsz, t, nh, hd))
  for head in range(nh):
    kv = head // (nh // nkv)
    s = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    out[:, :, head] = np.einsum("bqk,bkd->bqd", softmax(s), v[:, :, kv])
  x = x + out.reshape(bsz, t, nh * hd) @ a["o_proj"]["kernel"]
  h = rms_norm(x, p["post_attention_layernorm"]["scale"], cfg.rms_eps)
  m = p["mlp"]
  g = h @ m["gate_proj"]["kernel"]
  return x + ((g / (1 + np.exp(-g))) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]


def llama_lm(p, ids, cfg):
  x = p["embed_tokens"]["embedding"][ids]
  for i in range(cfg.num_layers):
    x = llama_block(p[f"layers_{i}"], x, cfg)
  return rms_norm(x, p["norm"]["scale"], cfg.rms_eps) @ p["embed_tokens"]["embedding"].T


def _erf(x):
  return np.vectorize(math.erf)(x)


def bert_block(p, x, mask, cfg):
  """One post-LN BERT layer with erf-GELU; mask (B, T) bool."""
  bsz, t, d = x.shape
  nh, hd = cfg.num_heads, d // cfg.num_heads
  a = p["attention"]
  lin = lambda z, n: z @ n["kernel"] + n["bias"]
  q, k, v = (lin(x, a[n]).reshape(bsz, t, nh, hd) for n in ("query", "key", "value"))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
  s = np.where(mask[:, None, None, :], s, -np.inf)
  ctx = np.einsum("bhqk,bkhd->bqhd", softmax(s), v).reshape(bsz, t, d)
  ln1 = p["attention_layernorm"]
  x = layer_norm(x + lin(ctx, a["output"]), ln1["scale"], ln1["bias"], cfg.ln_eps)
  h = lin(x, p["intermediate"])
  h = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
  ln2 = p["output_layernorm"]
  return layer_norm(x + lin(h, p["output"]), ln2["scale"], ln2["bias"], cfg.ln_eps)


def bert_encoder(p, ids, mask, cfg):
  e = p["embeddings"]
  x = e["word_embeddings"]["embedding"][ids] + e["position_embeddings"]["embedding"][np.arange(ids.shape[1])][None]
  x = x + e["token_type_embeddings"]["embedding"][np.zeros_like(ids)]
  x = layer_norm(x, e["LayerNorm"]["scale"], e["LayerNorm"]["bias"], cfg.ln_eps)
  for i in range(cfg.num_layers):
    x = bert_block(p[f"layer_{i}"], x, mask, cfg)
  m = mask[..., None].astype(np.float64)
  pooled = (x * m).sum(1) / m.sum(1)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
