"""A model's own forward run against a `KVCache`: the cache view its attention writes to and reads from.

There is no second Llama here: ``forward_cached`` calls the model's Linen module (``jquant.models.llama.LlamaLM``,
the one evaluation and PTQ capture run) with a `CacheView`. Each block's attention hands the view its new rotated
keys / values; the view writes them into the cache (quantizing them for int8 / fp8 caches) and gives back the cached
positions with their scales, which ``jquant.models.layers.attention`` applies to the logits and probabilities.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jquant.inference.kv_cache import KVCache, read_layer, write_layer

__all__ = ["CacheView", "forward_cached"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CacheView:
  """The cache as one forward's attention sees it (the ``kv`` argument of ``LlamaLM``).

  Attributes:
    cache: the `KVCache` (written layer by layer as the blocks run).
    start: int32 scalar (possibly traced), the position of the first new token.
    read_upto: static number of cached positions attention reads (prefill from a static start: ``start + t``), or
      None for all ``max_len`` (positions after the newest token are masked by causality).
  """

  cache: KVCache
  start: jax.Array
  read_upto: int | None = dataclasses.field(default=None, metadata=dict(static=True))

  def update(self, layer: int, k: jax.Array, v: jax.Array):
    """Writes layer ``layer``'s (B, t, kv_heads, head_dim) keys / values at [start, start + t); returns
    ((keys, values, k_scale, v_scale) of positions [0, read_upto), the updated view)."""
    cache = write_layer(self.cache, layer, k, v, self.start)
    return read_layer(cache, layer, self.read_upto), dataclasses.replace(self, cache=cache)


def forward_cached(module: Any, params: dict, ids: jax.Array, cache: KVCache, *, dtype,
                   start: int | None = None, last_only: bool = False) -> tuple[jax.Array, KVCache]:
  """Runs ``ids`` at positions [cache.length, cache.length + t), writing their keys / values into the cache.

  Args:
    module: the model's Linen LM (``jquant.models.llama.LlamaLM``, or one with its ``__call__(ids, kv, dtype=,
      last_only=)``).
    params: its params (float, or with QArray / PreparedWeight kernels and optionally a QArray embedding).
    ids: (B, t) int token ids.
    cache: the `KVCache` (its ``length`` is the position of ids[:, 0]).
    dtype: compute dtype of the hidden states.
    start: the static position of ids[:, 0] when known (prefill from 0): attention then reads only the first
      ``start + t`` cached positions instead of all ``max_len``.
    last_only: compute logits for the last position only.

  Returns:
    (logits (B, t or 1, vocab) float32, cache with ``length`` advanced by t).
  """
  t = ids.shape[1]
  pos = cache.length if start is None else jnp.asarray(start, jnp.int32)
  view = CacheView(cache, pos, None if start is None else start + t)
  logits, view = module.apply({"params": params}, ids, view, dtype=dtype, last_only=last_only)
  return logits, dataclasses.replace(view.cache, length=pos + t)


def param_dtype(params: Any) -> jnp.dtype:
  """The default compute dtype: the token embedding's float dtype (for a QArray, the dtype it was quantized from)."""
  return jnp.dtype(params["embed_tokens"]["embedding"].dtype)
