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
import numpy as np

from jquant.models.blockwise import ArchConfig, BlockwiseBase, PyTree, run_method
from jquant.models.layers import Embed, Linear, MatmulFn, attention
from jquant.ops.hadamard import hadamard_transform
from jquant.ops.hadamard import supported as hadamard_supported
from jquant.ptq.scaling import ScalePlan, ScaleTarget

__all__ = ["BertConfig", "BertBlock", "BertEncoder", "BertModel", "mean_pool_normalize"]


@dataclasses.dataclass(frozen=True)
class BertConfig(ArchConfig):
  """Hyper-parameters of the BERT architecture. Defaults are the all-MiniLM-L6-v2 preset."""

  vocab_size: int = 30522
  hidden: int = 384
  intermediate: int = 1536
  num_layers: int = 6
  num_heads: int = 12
  max_positions: int = 512
  type_vocab_size: int = 2
  ln_eps: float = 1e-12
  rotate_inputs: bool = False    # every encoder linear's input goes through the Hadamard transform at run time
                                 # (rotated models, `jquant.models.rotation`; each kernel holds H^T W)

  _sizes = ("max_positions", "type_vocab_size")

  def __post_init__(self):
    super().__post_init__()
    if not self.ln_eps > 0.0:
      raise ValueError(f"BertConfig.ln_eps must be > 0, got {self.ln_eps}.")
    for n, what in ((self.hidden, "hidden"), (self.intermediate, "intermediate")):
      if self.rotate_inputs and not hadamard_supported(n):
        raise ValueError(f"BertConfig: rotate_inputs needs Hadamard sizes, got {what} = {n} (supported: K x 2^m, "
                         "see jquant.ops.hadamard).")


def _rot(cfg: BertConfig, x: jax.Array) -> jax.Array:
  """The input of a linear: ``x H`` when the model is rotated (O(n log n); the kernel holds ``H^T W``)."""
  return hadamard_transform(x) if cfg.rotate_inputs else x


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
    nh, hd = cfg.num_heads, cfg.head_dim
    lin = lambda name: Linear(cfg.hidden, matmul=self.matmul, name=name)
    x = _rot(cfg, x)
    q, k, v = (lin(n)(x).reshape(bsz, t, nh, hd) for n in ("query", "key", "value"))
    out = attention(q, k, v, mask[:, None, :])          # every query sees the real (unpadded) keys
    return lin("output")(_rot(cfg, out.reshape(bsz, t, cfg.hidden)))


class BertBlock(nn.Module):
  """One post-LN encoder layer. Input/output (B, T, hidden); mask (B, T) bool, True for real tokens."""

  config: BertConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    x = _layer_norm(cfg, "attention_layernorm")(x + BertSelfAttention(cfg, self.matmul, name="attention")(x, mask))
    h = Linear(cfg.intermediate, matmul=self.matmul, name="intermediate")(_rot(cfg, x))
    h = jax.nn.gelu(h, approximate=False)
    h = Linear(cfg.hidden, matmul=self.matmul, name="output")(_rot(cfg, h))
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


def _check_batch(batch: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  if not isinstance(batch, dict) or "input_ids" not in batch or "attention_mask" not in batch:
    keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
    raise TypeError(f"BertModel batch must be a dict with 'input_ids' and 'attention_mask' (B, T) arrays (as "
                    f"encode_batch returns), got {type(batch).__name__}{keys}.")
  ids, mask = batch["input_ids"], batch["attention_mask"]
  if ids.ndim != 2 or ids.shape != mask.shape:
    raise ValueError(f"BertModel batch: input_ids {ids.shape} and attention_mask {mask.shape} must be equal (B, T).")
  return ids, mask, batch.get("token_type_ids")


class BertModel(BlockwiseBase):
  """A BERT encoder with mean pooling as a BlockwiseModel (``MiniLM`` is this class under its preset's name).

  A batch is a dict with ``"input_ids"`` and ``"attention_mask"`` (B, T) int arrays (optional ``"token_type_ids"``),
  as ``encode_batch`` returns.

  Args:
    config: architecture (default: all-MiniLM-L6-v2).
    matmul: optional hashable ``matmul(x, kernel)`` used by every Linear.
    tokenizer: optional ``tokenizers.Tokenizer`` (``load_minilm`` / ``from_pretrained`` load ``tokenizer.json``).
  """

  config_type, module_type, block_type, block_prefix = BertConfig, BertEncoder, BertBlock, "layer_"

  def init(self, rng: jax.Array, seq_len: int = 8) -> PyTree:
    """Random params (for tests and tiny configs)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return jax.jit(self.module.init)(rng, ids, jnp.ones_like(ids))["params"]

  def scale_plan(self, groups) -> ScalePlan | None:
    """AWQ / SmoothQuant fold targets (`jquant.ptq.scaling`). BERT is post-LN: the LayerNorm output is the
    residual stream, so the LN-fed groups take an explicit input_scale; value -> attention output folds exactly
    (not across the online Hadamard of a rotated encoder: there the output linear takes an input_scale too)."""
    if len(groups) != 4:
      return None
    o_target = ScaleTarget("input_scale") if self.config.rotate_inputs else ScaleTarget("linear", "attention/value")
    return ScalePlan((ScaleTarget("input_scale", None, True), o_target,
                      ScaleTarget("input_scale", None, True), ScaleTarget("input_scale")),
                     frozenset({"attention/query", "attention/key"}))

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return linear_groups()

  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    return run_method(self.module, params, BertEncoder.embed, *_check_batch(batch))

  def _block_args(self, ctx: PyTree) -> tuple:
    return (ctx["mask"],)

  def head(self, params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """(B, T, hidden) -> (B, hidden) mean-pooled, L2-normalised embeddings."""
    return mean_pool_normalize(hidden, ctx["mask"])

  def apply(self, params: PyTree, batch: PyTree) -> jax.Array:
    """Batch -> (B, hidden) unit-norm sentence embeddings."""
    self._check_params(params)
    return self.module.apply({"params": params}, *_check_batch(batch))

  def encode_batch(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes ``texts`` ([CLS] ... [SEP], truncated as the tokenizer says: 256 tokens for MiniLM) and right-pads.

    Args:
      texts: B strings.
      pad_to: pad length T (>= the longest encoding); default: the longest encoding.

    Returns:
      {"input_ids", "attention_mask", "token_type_ids"}: (B, T) int32 arrays.
    """
    tokenizer = self._tokenizer("encode_batch")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
      raise TypeError(f"BertModel.encode_batch: texts must be a non-empty sequence of str, got "
                      f"{type(texts).__name__}.")
    encs = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encs)
    t = longest if pad_to is None else pad_to
    if not isinstance(t, int) or t < longest:
      raise ValueError(f"BertModel.encode_batch: pad_to={pad_to!r} is shorter than the longest encoding ({longest}).")
    ids = np.zeros((len(encs), t), np.int32)
    mask = np.zeros((len(encs), t), np.int32)
    for r, e in enumerate(encs):
      ids[r, :len(e.ids)] = e.ids
      mask[r, :len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
