"""What every jquant model is built from: the one linear layer, the one attention and the (QArray-aware) embedding.

Why Flax **Linen** (not NNX) for the real models: the sequential PTQ pipeline captures the input of every linear
layer with ``flax.linen.intercept_methods`` (see ``jquant/ptq/protocol.py``), parameters are plain nested dicts (a
pytree) in which ``jq.quantize_params`` can put ``QArray`` leaves without touching the module code, and a block can
be run on its own with ``Block(...).apply({"params": params[name]}, ...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jquant.core import QArray, dequantize
from jquant.ops import qmatmul

__all__ = ["Embed", "Linear", "MatmulFn", "attention", "default_matmul", "embed_rows"]

# matmul(x, kernel) -> y with x (..., in), kernel (in, out) a plain array or a jquant.QArray, y (..., out).
MatmulFn = Callable[[jax.Array, Any], jax.Array]

_HI = jax.lax.Precision.HIGHEST


# x @ kernel for a float kernel, jquant.ops.qdot for a QArray / PreparedWeight (one definition: jquant.ops.qmatmul)
default_matmul = qmatmul


class Linear(nn.Module):
  """``y = (x * input_scale) @ kernel + bias``.

  Params (paths relative to this module):
    kernel: (in, out), a float array, or a ``jquant.QArray`` (or ``jquant.ops.PreparedWeight``) of that logical
      shape, multiplied with ``jquant.ops.qdot``.
    bias: (out,), present when ``use_bias``.
    input_scale: (in,), optional. Used whenever it is present in the params (PTQ methods such as AWQ or
      SmoothQuant add it where the scale cannot be folded into the previous layer); created at init only when
      ``use_input_scale``.

  Attributes:
    features: output width ``out``.
    use_bias: whether the layer has a bias.
    use_input_scale: create ``input_scale`` (ones) at init.
    matmul: optional hashable ``matmul(x, kernel) -> y`` that replaces the matmul (e.g. W8A8 or LLM.int8
      simulations). ``None`` uses ``x @ kernel`` or ``jquant.ops.qdot`` for a QArray kernel.
  """

  features: int
  use_bias: bool = True
  use_input_scale: bool = False
  matmul: MatmulFn | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x: (..., in). Returns: (..., out)."""
    in_features = x.shape[-1]
    if self.has_variable("params", "kernel"):
      # get_variable, not param: param() checks the stored value against the initializer's shape, which a
      # QArray pytree would fail.
      kernel = self.get_variable("params", "kernel")
    else:
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features), jnp.float32)
    if kernel.shape != (in_features, self.features):
      raise ValueError(f"Linear {'/'.join(self.path)}: kernel has shape {tuple(kernel.shape)}, expected "
                       f"(in, out) = {(in_features, self.features)} for an input of shape {x.shape}. Check that "
                       f"the params match the model config (Flax kernels are (in, out), torch weights (out, in)).")
    if self.has_variable("params", "input_scale") or self.use_input_scale:
      s = self.param("input_scale", nn.initializers.ones, (in_features,), jnp.float32)
      x = x * s.astype(x.dtype)
    fn = self.matmul if self.matmul is not None else default_matmul
    y = fn(x, kernel)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(y.dtype)
    return y


def attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array, k_scale: jax.Array | None = None,
              v_scale: jax.Array | None = None) -> jax.Array:
  """Softmax attention with grouped-query heads, over float keys / values or a quantized cache's values + scales.

  The one attention of the models (Llama causal, with or without a KV cache; BERT with a padding mask).

  Args:
    q: (B, t, H, D) queries.
    k, v: (B, S, G, D) keys / values (a cache's storage dtype is cast to q's), G kv heads dividing H (query head
      h uses kv head h // (H / G)).
    visible: bool (t, S) or (B, t, S) (size-1 axes broadcast): query i attends to key j where True.
    k_scale, v_scale: (B, S, G, 1) float32 per-token scales of a quantized cache, or None: applied to the logits
      (keys) and to the probabilities (values), so the dequantized cache is never materialised.

  Returns:
    (B, t, H, D) in q's dtype; logits and softmax in float32.
  """
  bsz, t, nh, hd = q.shape
  g = k.shape[2]
  dt = q.dtype
  qg = q.reshape(bsz, t, g, nh // g, hd)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k.astype(dt), precision=_HI) / jnp.sqrt(hd)
  if k_scale is not None:
    logits = logits.astype(jnp.float32) * jnp.transpose(k_scale[..., 0], (0, 2, 1))[:, :, None, None, :]
  visible = jnp.asarray(visible)
  if visible.ndim == 3:                     # (B, t, S) -> (B, 1, 1, t, S) against logits (B, G, H / G, t, S)
    visible = visible[:, None, None]
  logits = jnp.where(visible, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if v_scale is not None:
    probs = probs * jnp.transpose(v_scale[..., 0], (0, 2, 1))[:, :, None, None, :]
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs.astype(dt), v.astype(dt), precision=_HI)
  return out.reshape(bsz, t, nh, hd)


def embed_rows(emb: Any, ids: jax.Array, dtype) -> jax.Array:
  """(B, T) ids -> (B, T, hidden) rows of a float or QArray (vocab, hidden) table, in ``dtype``.

  A QArray with one scale row per token (``PerChannel(axis=0)``, or ``PerGroup`` along the hidden axis) has its
  rows gathered before dequantizing; any other layout is dequantized whole first.
  """
  if not isinstance(emb, QArray):
    return jnp.take(emb, ids, axis=0).astype(dtype)
  flat = ids.reshape(-1)
  rows = emb.scale.shape[0] == emb.shape[0] and emb.g_idx is None and isinstance(emb.scale, jax.Array)
  if rows:
    zp = None if emb.zero_point is None else emb.zero_point[flat]
    sub = dataclasses.replace(emb, qvalue=emb.qvalue[flat], scale=emb.scale[flat], zero_point=zp)
    out = dequantize(sub, dtype)
  else:
    out = jnp.take(dequantize(emb, dtype), flat, axis=0)
  return out.reshape(*ids.shape, emb.shape[1])


class Embed(nn.Module):
  """``nn.Embed`` (same ``embedding`` param, same initializer and float32 output) whose table may also be a
  ``jquant.QArray`` (a quantized embedding / tied LM head: ``python -m jquant quantize --embedding int8``).

  Attributes:
    num_embeddings: vocabulary size.
    features: hidden width.
  """

  num_embeddings: int
  features: int

  def setup(self):
    if self.has_variable("params", "embedding"):   # get_variable: a QArray pytree fails param()'s shape check
      self.embedding = self.get_variable("params", "embedding")
    else:
      self.embedding = self.param("embedding", nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                                  (self.num_embeddings, self.features), jnp.float32)
    if tuple(self.embedding.shape) != (self.num_embeddings, self.features):
      raise ValueError(f"Embed {'/'.join(self.path)}: table has shape {tuple(self.embedding.shape)}, expected "
                       f"(vocab, hidden) = {(self.num_embeddings, self.features)}; check the params match the config.")

  def __call__(self, ids: jax.Array, dtype=jnp.float32) -> jax.Array:
    """(..., T) int ids -> (..., T, features) rows in ``dtype`` (float32 by default)."""
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"Embed {'/'.join(self.path)}: input ids must be integers, got {ids.dtype}.")
    return embed_rows(self.embedding, ids, dtype)

  def table(self, dtype) -> jax.Array:
    """The (vocab, hidden) table in ``dtype`` (dequantized when it is a QArray): the tied LM head's weight."""
    emb = self.embedding
    return dequantize(emb, dtype) if isinstance(emb, QArray) else emb.astype(dtype)
