"""A Llama-architecture causal LM in Flax Linen (the shape of SmolLM2-135M).

Pre-RMSNorm blocks, grouped-query attention with RoPE, SwiGLU MLP, tied input/output embeddings. RoPE rotates
**adjacent pairs** (x[2i], x[2i+1]), the layout of q/k weights stored in GGUF files (llama.cpp permutes the
Hugging Face rotate-half layout into it).

Param paths (``params[...]``): ``embed_tokens/embedding`` (vocab, hidden); ``layers_{i}/input_layernorm/scale``;
``layers_{i}/self_attn/{q,k,v,o}_proj/kernel`` (in, out); ``layers_{i}/post_attention_layernorm/scale``;
``layers_{i}/mlp/{gate,up,down}_proj/kernel``; ``norm/scale``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jquant.models.layers import Embed, Linear, MatmulFn
from jquant.ops.hadamard import hadamard_transform
from jquant.ops.hadamard import supported as hadamard_supported

__all__ = ["LlamaConfig", "LlamaBlock", "LlamaLM", "rope_tables", "apply_rope"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Hyper-parameters. Defaults are SmolLM2-135M."""

  vocab_size: int = 49152
  hidden: int = 576
  intermediate: int = 1536
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  rope_base: float = 100000.0
  rms_eps: float = 1e-5
  tie_embeddings: bool = True    # False: a separate ``lm_head/kernel`` (hidden, vocab), as most HF Llamas
  qkv_bias: bool = False         # q/k/v projections have biases (Qwen2; HF Llama ``attention_bias``)
  o_bias: bool = False           # o_proj has a bias (HF Llama ``attention_bias``)
  rotate_down: bool = False      # R4: down_proj inputs go through the Hadamard transform at run time (rotated
                                 # models, `jquant.models.rotation`; the kernel holds H^T W)

  def __post_init__(self):
    for f in ("vocab_size", "hidden", "intermediate", "num_layers", "num_heads", "num_kv_heads"):
      v = getattr(self, f)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"LlamaConfig.{f} must be a positive int, got {v!r}.")
    if self.hidden % self.num_heads:
      raise ValueError(f"LlamaConfig: hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads}).")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({self.num_kv_heads}) for grouped-query attention.")
    if (self.hidden // self.num_heads) % 2:
      raise ValueError(f"LlamaConfig: head_dim = {self.hidden // self.num_heads} must be even for RoPE.")
    if self.rotate_down and not hadamard_supported(self.intermediate):
      raise ValueError(f"LlamaConfig: rotate_down needs a Hadamard size, got intermediate = {self.intermediate} "
                       "(supported: K x 2^m, see jquant.ops.hadamard).")
    if not self.rope_base > 1.0 or not self.rms_eps > 0.0:
      raise ValueError(f"LlamaConfig: need rope_base > 1 and rms_eps > 0, got {self.rope_base}, {self.rms_eps}.")

  @property
  def head_dim(self) -> int:
    return self.hidden // self.num_heads


def rope_tables(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables for RoPE.

  Args:
    positions: (B, T) integer positions.
    head_dim: per-head width D (even).
    base: RoPE base theta.

  Returns:
    (cos, sin), each (B, T, D // 2) float32; pair i rotates by ``pos * base ** (-2i / D)``.
  """
  inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  ang = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates adjacent pairs (x[..., 2i], x[..., 2i+1]).

  Args:
    x: (B, T, H, D).
    cos, sin: (B, T, D // 2).

  Returns:
    (B, T, H, D): out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i] sin + x[2i+1] cos.
  """
  x2 = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  a, b = x2[..., 0], x2[..., 1]
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.stack([a * c - b * s, a * s + b * c], axis=-1)
  return out.reshape(x.shape)


class LlamaAttention(nn.Module):
  config: LlamaConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    cfg = self.config
    bsz, t, _ = x.shape
    hd = cfg.head_dim
    lin = lambda n, name, bias=False: Linear(n, use_bias=bias, matmul=self.matmul, name=name)
    q = lin(cfg.num_heads * hd, "q_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_heads, hd)
    k = lin(cfg.num_kv_heads * hd, "k_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_kv_heads, hd)
    v = lin(cfg.num_kv_heads * hd, "v_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_kv_heads, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    rep = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(bsz, t, cfg.num_kv_heads, rep, hd)
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, k, precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(hd)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    logits = jnp.where(causal, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v, precision=jax.lax.Precision.HIGHEST)
    return lin(cfg.hidden, "o_proj", cfg.o_bias)(out.reshape(bsz, t, cfg.num_heads * hd))


class LlamaMLP(nn.Module):
  config: LlamaConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    gate = Linear(cfg.intermediate, use_bias=False, matmul=self.matmul, name="gate_proj")(x)
    up = Linear(cfg.intermediate, use_bias=False, matmul=self.matmul, name="up_proj")(x)
    h = jax.nn.silu(gate) * up
    if cfg.rotate_down:     # online R4 (O(n log n)): spreads the SwiGLU outliers before the (quantized) down_proj
      h = hadamard_transform(h)
    return Linear(cfg.hidden, use_bias=False, matmul=self.matmul, name="down_proj")(h)


class LlamaBlock(nn.Module):
  """One decoder block: x + attn(rms(x)), then h + mlp(rms(h)). Input/output (B, T, hidden)."""

  config: LlamaConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    cfg = self.config
    h = nn.RMSNorm(epsilon=cfg.rms_eps, name="input_layernorm")(x)
    x = x + LlamaAttention(cfg, self.matmul, name="self_attn")(h, cos, sin)
    h = nn.RMSNorm(epsilon=cfg.rms_eps, name="post_attention_layernorm")(x)
    return x + LlamaMLP(cfg, self.matmul, name="mlp")(h)


class LlamaLM(nn.Module):
  """The full LM: (B, T) int token ids -> (B, T, vocab) float32 logits."""

  config: LlamaConfig
  matmul: MatmulFn | None = None

  def setup(self):
    cfg = self.config
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden, name="embed_tokens")
    self.layers = [LlamaBlock(cfg, self.matmul, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = nn.RMSNorm(epsilon=cfg.rms_eps, name="norm")
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.vocab_size, use_bias=False, name="lm_head")

  def embed(self, input_ids: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    bsz, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (bsz, t))
    cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_base)
    return self.embed_tokens(input_ids), {"cos": cos, "sin": sin}

  def head(self, hidden: jax.Array) -> jax.Array:
    h = self.norm(hidden)
    if not self.config.tie_embeddings:
      return self.lm_head(h).astype(jnp.float32)
    return jnp.einsum("btd,vd->btv", h, self.embed_tokens.table(h.dtype), precision=jax.lax.Precision.HIGHEST)

  def __call__(self, input_ids: jax.Array) -> jax.Array:
    hidden, ctx = self.embed(input_ids)
    for layer in self.layers:
      hidden = layer(hidden, ctx["cos"], ctx["sin"])
    return self.head(hidden)


def linear_groups() -> Sequence[Sequence[str]]:
  return (("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj"), ("self_attn/o_proj",),
          ("mlp/gate_proj", "mlp/up_proj"), ("mlp/down_proj",))
