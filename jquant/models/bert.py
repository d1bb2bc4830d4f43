"""A BERT sentence encoder in Flax Linen (the shape of all-MiniLM-L6-v2).

Post-LayerNorm blocks (LN eps 1e-12), erf-GELU, padding mask, then mean pooling over real tokens and L2
normalisation (sentence-transformers' pipeline). The BERT pooler is not used by the sentence embedding.

Param paths (``params[...]``): ``embeddings/{word,position,token_type}_embeddings/embedding``,
``embeddings/LayerNorm/{scale,bias}``; per layer ``layer_{i}/attention/{query,key,value,output}/{kernel,bias}``,
``layer_{i}/attention_layernorm/{scale,bias}``, ``layer_{i}/intermediate/{kernel,bias}``,
``layer_{i}/output/{kernel,bias}``, ``layer_{i}/output_layernorm/{scale,bias}``. Kernels are (in, out).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jquant.models.layers import Embed, Linear, MatmulFn

__all__ = ["BertConfig", "BertBlock", "BertEncoder", "mean_pool_normalize"]


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters. Defaults are all-MiniLM-L6-v2."""

  vocab_size: int = 30522
  hidden: int = 384
  intermediate: int = 1536
  num_layers: int = 6
  num_heads: int = 12
  max_positions: int = 512
  type_vocab_size: int = 2
  ln_eps: float = 1e-12

  def __post_init__(self):
    for f in ("vocab_size", "hidden", "intermediate", "num_layers", "num_heads", "max_positions",
              "type_vocab_size"):
      v = getattr(self, f)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"BertConfig.{f} must be a positive int, got {v!r}.")
    if self.hidden % self.num_heads:
      raise ValueError(f"BertConfig: hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads}).")
    if not self.ln_eps > 0.0:
      raise ValueError(f"BertConfig.ln_eps must be > 0, got {self.ln_eps}.")


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.ln_eps, use_fast_variance=False, name=name)


class BertEmbeddings(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    cfg = self.config
    t = input_ids.shape[1]
    x = Embed(cfg.vocab_size, cfg.hidden, name="word_embeddings")(input_ids)
    x = x + nn.Embed(cfg.max_positions, cfg.hidden, name="position_embeddings")(jnp.arange(t)[None, :])
    x = x + nn.Embed(cfg.type_vocab_size, cfg.hidden, name="token_type_embeddings")(token_type_ids)
    return _layer_norm(cfg, "LayerNorm")(x)


class BertSelfAttention(nn.Module):
  config: BertConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    bsz, t, _ = x.shape
    nh, hd = cfg.num_heads, cfg.hidden // cfg.num_heads
    lin = lambda name: Linear(cfg.hidden, matmul=self.matmul, name=name)
    q = lin("query")(x).reshape(bsz, t, nh, hd)
    k = lin("key")(x).reshape(bsz, t, nh, hd)
    v = lin("value")(x).reshape(bsz, t, nh, hd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(hd)
    logits = jnp.where(mask[:, None, None, :], logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=jax.lax.Precision.HIGHEST).reshape(bsz, t, cfg.hidden)
    return lin("output")(out)


class BertBlock(nn.Module):
  """One post-LN encoder layer. Input/output (B, T, hidden); mask (B, T) bool, True for real tokens."""

  config: BertConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    x = _layer_norm(cfg, "attention_layernorm")(x + BertSelfAttention(cfg, self.matmul, name="attention")(x, mask))
    h = Linear(cfg.intermediate, matmul=self.matmul, name="intermediate")(x)
    h = jax.nn.gelu(h, approximate=False)
    h = Linear(cfg.hidden, matmul=self.matmul, name="output")(h)
    return _layer_norm(cfg, "output_layernorm")(x + h)


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over real tokens, then L2 normalisation.

  Args:
    hidden: (B, T, D).
    mask: (B, T) bool.

  Returns:
    (B, D) float32 unit vectors (a row with no real token gives zeros).
  """
  m = mask.astype(jnp.float32)[..., None]
  summed = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
  pooled = summed / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


class BertEncoder(nn.Module):
  """(B, T) token ids + (B, T) attention mask -> (B, hidden) unit-norm sentence embeddings."""

  config: BertConfig
  matmul: MatmulFn | None = None

  def setup(self):
    self.embeddings = BertEmbeddings(self.config, name="embeddings")
    self.layers = [BertBlock(self.config, self.matmul, name=f"layer_{i}") for i in range(self.config.num_layers)]

  def embed(self, input_ids: jax.Array, attention_mask: jax.Array,
            token_type_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    return self.embeddings(input_ids, token_type_ids), {"mask": attention_mask.astype(bool)}

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    hidden, ctx = self.embed(input_ids, attention_mask, token_type_ids)
    for layer in self.layers:
      hidden = layer(hidden, ctx["mask"])
    return mean_pool_normalize(hidden, ctx["mask"])


def linear_groups() -> Sequence[Sequence[str]]:
  return (("attention/query", "attention/key", "attention/value"), ("attention/output",), ("intermediate",),
          ("output",))
