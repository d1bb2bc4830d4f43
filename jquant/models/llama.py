"""The Llama architecture in Flax Linen, one implementation: ``LlamaLM`` (its ``LlamaBlock`` s) is what evaluation,
PTQ capture (``LlamaModel``, a BlockwiseModel) and cached generation (``jquant.inference``, through the optional
``kv`` argument) all run. ``LlamaConfig()``'s defaults are the SmolLM2-135M preset (``jquant.models.smollm2``).

Pre-RMSNorm blocks, grouped-query attention with RoPE, SwiGLU MLP, tied (or separate) embeddings. RoPE rotates
**adjacent pairs** (x[2i], x[2i+1]), the layout of q/k weights stored in GGUF files (llama.cpp permutes the
Hugging Face rotate-half layout into it).

Param paths (``params[...]``): ``embed_tokens/embedding`` (vocab, hidden); ``layers_{i}/input_layernorm/scale``;
``layers_{i}/self_attn/{q,k,v,o}_proj/kernel`` (in, out); ``layers_{i}/post_attention_layernorm/scale``;
``layers_{i}/mlp/{gate,up,down}_proj/kernel``; ``norm/scale``.
"""

from __future__ import annotations

import dataclasses
import warnings
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

__all__ = ["LlamaConfig", "LlamaBlock", "LlamaLM", "LlamaModel", "rope_tables", "apply_rope"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ArchConfig):
  """Hyper-parameters of the Llama architecture. Defaults are the SmolLM2-135M preset."""

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

  _sizes = ("num_kv_heads",)

  def __post_init__(self):
    super().__post_init__()
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
  """Grouped-query self-attention with RoPE; causal over the new tokens, or over a KV cache's positions.

  ``kv`` (optional) is the cache of one forward: ``kv.start`` is the (int32, possibly traced) position of the first
  new token and ``kv.update(layer, k, v)`` stores this layer's rotated keys / values (B, t, G, D) at positions
  [start, start + t) and returns ((keys, values, k_scale, v_scale), kv'): keys / values (B, S, G, D) of positions
  [0, S), S >= start + t, with (B, S, G, 1) scales or None (``jquant.inference`` passes its `CacheView`).
  """

  config: LlamaConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, kv: Any = None, layer: int = 0):
    """(B, t, hidden) -> (B, t, hidden), or ((B, t, hidden), kv') when ``kv`` is given."""
    cfg = self.config
    bsz, t, _ = x.shape
    hd = cfg.head_dim
    lin = lambda n, name, bias=False: Linear(n, use_bias=bias, matmul=self.matmul, name=name)
    q = lin(cfg.num_heads * hd, "q_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_heads, hd)
    k = lin(cfg.num_kv_heads * hd, "k_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_kv_heads, hd)
    v = lin(cfg.num_kv_heads * hd, "v_proj", cfg.qkv_bias)(x).reshape(bsz, t, cfg.num_kv_heads, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scales, start = (None, None), 0
    if kv is not None:
      (k, v, *scales), kv = kv.update(layer, k, v)
      start = kv.start
    q_pos = start + jnp.arange(t, dtype=jnp.int32)
    visible = jnp.arange(k.shape[1], dtype=jnp.int32)[None, :] <= q_pos[:, None]      # causal: (t, S)
    out = attention(q, k, v, visible, *scales)
    y = lin(cfg.hidden, "o_proj", cfg.o_bias)(out.reshape(bsz, t, cfg.num_heads * hd))
    return y if kv is None else (y, kv)


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
  """One decoder block: x + attn(rms(x)), then h + mlp(rms(h)). Input/output (B, T, hidden); with ``kv`` (see
  `LlamaAttention`) the block also returns the updated cache."""

  config: LlamaConfig
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, kv: Any = None, layer: int = 0):
    cfg = self.config
    h = nn.RMSNorm(epsilon=cfg.rms_eps, name="input_layernorm")(x)
    a = LlamaAttention(cfg, self.matmul, name="self_attn")(h, cos, sin, kv, layer)
    if kv is not None:
      a, kv = a
    x = x + a
    h = nn.RMSNorm(epsilon=cfg.rms_eps, name="post_attention_layernorm")(x)
    x = x + LlamaMLP(cfg, self.matmul, name="mlp")(h)
    return x if kv is None else (x, kv)


class LlamaLM(nn.Module):
  """The full LM: (B, T) int token ids -> (B, T, vocab) float32 logits, with or without a KV cache."""

  config: LlamaConfig
  matmul: MatmulFn | None = None

  def setup(self):
    cfg = self.config
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden, name="embed_tokens")
    self.layers = [LlamaBlock(cfg, self.matmul, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = nn.RMSNorm(epsilon=cfg.rms_eps, name="norm")
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.vocab_size, use_bias=False, name="lm_head")

  def embed(self, input_ids: jax.Array, start: Any = 0, dtype=jnp.float32) -> tuple[jax.Array, dict[str, Any]]:
    """(B, T) ids at positions [start, start + T) -> ((B, T, hidden) rows in ``dtype``, {"cos", "sin"})."""
    bsz, t = input_ids.shape
    positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (bsz, t))
    cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_base)
    return self.embed_tokens(input_ids, dtype), {"cos": cos, "sin": sin}

  def head(self, hidden: jax.Array) -> jax.Array:
    """Final RMSNorm and the LM head (tied: the embedding table): (B, T, hidden) -> (B, T, vocab) float32."""
    h = self.norm(hidden)
    if not self.config.tie_embeddings:
      return self.lm_head(h).astype(jnp.float32)
    logits = jnp.einsum("btd,vd->btv", h, self.embed_tokens.table(h.dtype), precision=jax.lax.Precision.HIGHEST)
    return logits.astype(jnp.float32)

  def __call__(self, input_ids: jax.Array, kv: Any = None, *, dtype=jnp.float32, last_only: bool = False):
    """Logits of ``input_ids`` (B, T); with ``kv`` (see `LlamaAttention`) at positions [kv.start, kv.start + T),
    attending to the cached positions, and returns (logits, kv'). ``dtype``: compute dtype of the hidden states;
    ``last_only``: logits of the last position only (B, 1, vocab)."""
    hidden, ctx = self.embed(input_ids, 0 if kv is None else kv.start, dtype)
    for i, layer in enumerate(self.layers):
      if kv is None:
        hidden = layer(hidden, ctx["cos"], ctx["sin"])
      else:
        hidden, kv = layer(hidden, ctx["cos"], ctx["sin"], kv, i)
    logits = self.head(hidden[:, -1:] if last_only else hidden)
    return logits if kv is None else (logits, kv)


def linear_groups() -> Sequence[Sequence[str]]:
  return (("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj"), ("self_attn/o_proj",),
          ("mlp/gate_proj", "mlp/up_proj"), ("mlp/down_proj",))


def _input_ids(batch: Any, vocab_size: int | None = None) -> jax.Array:
  ids = batch["input_ids"] if isinstance(batch, dict) else batch
  if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"LlamaModel batch must be a (B, T) integer array of token ids or a dict with 'input_ids', got "
                    f"{type(ids).__name__} with shape {getattr(ids, 'shape', None)} and dtype "
                    f"{getattr(ids, 'dtype', None)}.")
  if vocab_size is not None and ids.size and not isinstance(ids, jax.core.Tracer):
    lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
    if lo < 0 or hi >= vocab_size:    # the embedding would read outside the table (NaN rows), not fail
      raise ValueError(f"LlamaModel: token ids in [{lo}, {hi}] lie outside the vocabulary [0, {vocab_size}); encode "
                       "text with model.encode / encode_batch.")
  return ids


class LlamaModel(BlockwiseBase):
  """A Llama-architecture causal LM as a BlockwiseModel (``SmolLM2`` is this class under its preset's name).

  A batch is a (B, T) int array of token ids or a dict with ``"input_ids"``. ``jquant.inference`` generates with
  it (``self.module`` run against a KV cache).

  Args:
    config: architecture (default: SmolLM2-135M).
    matmul: optional hashable ``matmul(x, kernel)`` used by every Linear (see ``jquant.models.layers.Linear``).
    tokenizer: optional ``tokenizers.Tokenizer`` (``load_smollm2`` / ``from_pretrained`` build it).
  """

  config_type, module_type, block_type, block_prefix = LlamaConfig, LlamaLM, LlamaBlock, "layers_"

  def init(self, rng: jax.Array, seq_len: int = 8) -> PyTree:
    """Random params (for tests and tiny configs)."""
    return jax.jit(self.module.init)(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]

  def scale_plan(self, groups) -> ScalePlan | None:
    """AWQ / SmoothQuant fold targets (`jquant.ptq.scaling`): input_layernorm -> q/k/v, v_proj -> o_proj (only
    without grouped-query attention), post_attention_layernorm -> gate/up, up_proj -> down_proj (an input_scale
    when the model is rotated online: R4 sits between up_proj and down_proj)."""
    if len(groups) != 4:
      return None
    cfg = self.config
    o_target = ScaleTarget("linear", "self_attn/v_proj") if cfg.num_kv_heads == cfg.num_heads else ScaleTarget("none")
    down_target = ScaleTarget("input_scale") if cfg.rotate_down else ScaleTarget("linear", "mlp/up_proj")
    return ScalePlan((ScaleTarget("norm", "input_layernorm", True), o_target,
                      ScaleTarget("norm", "post_attention_layernorm", True), down_target),
                     frozenset({"self_attn/q_proj", "self_attn/k_proj"}))

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return linear_groups()

  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    return run_method(self.module, params, LlamaLM.embed, _input_ids(batch, self.config.vocab_size))

  def _block_args(self, ctx: PyTree) -> tuple:
    return ctx["cos"], ctx["sin"]

  def head(self, params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """(B, T, hidden) -> (B, T, vocab) logits."""
    return run_method(self.module, params, LlamaLM.head, hidden)

  def apply(self, params: PyTree, batch: PyTree) -> jax.Array:
    """(B, T) token ids -> (B, T, vocab) float32 logits."""
    self._check_params(params)
    return self.module.apply({"params": params}, _input_ids(batch, self.config.vocab_size))

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no BOS: the SmolLM2 GGUF says add_bos_token = False)."""
    if not isinstance(text, str):
      raise TypeError(f"LlamaModel.encode: text must be a str, got {type(text).__name__}.")
    return self._tokenizer("encode").encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
    """(B, T) int32 ids for texts that tokenize to the same length (use ``encode`` for ragged text)."""
    ids = [self.encode(t) for t in texts]
    if len({len(i) for i in ids}) != 1:
      raise ValueError(f"LlamaModel.encode_batch: texts tokenize to different lengths {[len(i) for i in ids]}; "
                       f"encode them one by one.")
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer("decode").decode(list(int(i) for i in ids))

  def generate_greedy(self, params: PyTree, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Deprecated alias: greedy continuation of one prompt by ``jquant.inference.generate`` (use that)."""
    warnings.warn("LlamaModel.generate_greedy is deprecated; use jquant.inference.generate(model, params, "
                  "prompt_ids[None], max_new_tokens=n).tokens[0].", DeprecationWarning, stacklevel=2)
    from jquant.inference import generate  # pylint: disable=import-outside-toplevel  (inference builds on models)

    ids = [int(i) for i in prompt_ids]
    if not ids:
      raise ValueError("generate_greedy: prompt_ids is empty; give at least one token.")
    res = generate(self, params, np.asarray([ids], np.int32), max_new_tokens=max_new_tokens)
    return [int(t) for t in res.tokens[0]]
