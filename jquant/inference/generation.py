"""Jit-compiled generation for any model built on ``jquant.models.llama.LlamaLM`` (its own blocks run against the
cache, see `cached_forward`): prefill the prompt into a fixed-size `KVCache`, then decode with one
``lax.while_loop`` (no host sync per token), greedy or sampled, stopping each row at EOS through a done mask.

    res = generate(model, params, prompt_ids, max_new_tokens=32, max_len=128,
                   cache_config=KVCacheConfig("int8"), sampling=SamplingConfig(temperature=0.8, top_p=0.9),
                   key=jax.random.key(0), eos_id=2)
    res.tokens      # (B, max_new_tokens) int32; positions after a row's EOS hold eos_id
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jquant.inference.kv_cache import KVCache, KVCacheConfig, init_cache
from jquant.inference.cached_forward import forward_cached, param_dtype
from jquant.inference.sampling import SamplingConfig, sample_logits
from jquant.models.layers import MatmulFn
from jquant.models.llama import LlamaConfig, LlamaLM

__all__ = ["GenerationResult", "generate", "prefill", "decode", "new_cache", "TRACE_COUNTS"]

# Times each traced function body ran (i.e. was traced / compiled): tests use it to check there is no retrace.
TRACE_COUNTS: collections.Counter = collections.Counter()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GenerationResult:
  """Output of `generate` / `decode`.

  Attributes:
    tokens: (B, max_new_tokens) int32; after a row emitted EOS the rest of the row is ``eos_id``.
    num_tokens: (B,) int32 tokens produced per row, EOS included.
    done: (B,) bool, rows that emitted EOS.
    cache: the `KVCache` after the last fed token.
  """

  tokens: jax.Array
  num_tokens: jax.Array
  done: jax.Array
  cache: KVCache


def model_config(model: Any, matmul: MatmulFn | None = None) -> tuple[LlamaLM, LlamaConfig]:
  """(the Linen LM to run, its config) of a LlamaConfig or a model built on ``jquant.models.llama.LlamaLM`` (its
  ``.module``: ``LlamaModel`` / ``SmolLM2``, ``from_pretrained`` Llama / Qwen2 folders, rotated models). ``matmul``
  replaces the model's own ``matmul(x, kernel)`` in every Linear when given."""
  if isinstance(model, LlamaConfig):
    module = LlamaLM(model)
  else:
    module = getattr(model, "module", None)
    if not isinstance(module, LlamaLM):
      raise TypeError(f"expected a LlamaConfig or a model built on jquant.models.llama.LlamaLM (a .module LlamaLM, "
                      f"e.g. jquant.models.LlamaModel / SmolLM2), got {type(model).__name__}.")
  if matmul is not None:
    module = module.clone(matmul=matmul)
  return module, module.config


def _check_ids(ids, what: str, vocab_size: int) -> jax.Array:
  if not hasattr(ids, "ndim"):
    ids = jnp.asarray(ids)
  if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape[1] < 1:
    raise ValueError(f"{what}: prompt_ids must be a (B, T) integer array with T >= 1, got shape "
                     f"{tuple(ids.shape)} and dtype {ids.dtype}.")
  if not isinstance(ids, jax.core.Tracer):
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
      raise ValueError(f"{what}: prompt_ids hold ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size}).")
  return jnp.asarray(ids, jnp.int32)


def new_cache(model: Any, cache_config: KVCacheConfig, batch: int, max_len: int) -> KVCache:
  """An empty `KVCache` for ``model`` (a LlamaConfig or a model built on LlamaLM)."""
  _, cfg = model_config(model)
  return init_cache(cache_config, num_layers=cfg.num_layers, batch=batch, max_len=max_len,
                    kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)


def _prefill(module, params, ids, cache, dtype):
  TRACE_COUNTS["prefill"] += 1
  logits, cache = forward_cached(module, params, ids, cache, dtype=dtype, start=0, last_only=True)
  return logits[:, 0], cache


def _decode(module, params, first, cache, key, *, steps, sampling, eos_id, dtype):
  """Decodes ``steps`` tokens after ``first`` (B,), which is emitted as token 0."""
  bsz = first.shape[0]
  eos = -1 if eos_id is None else eos_id
  out = jnp.full((bsz, steps), eos, jnp.int32).at[:, 0].set(first)
  done = first == eos
  count = jnp.ones((bsz,), jnp.int32)

  def cond(state):
    step, _, done, *_ = state
    return (step < steps) & ~jnp.all(done)

  def body(state):
    TRACE_COUNTS["decode_step"] += 1
    step, out, done, count, cache = state
    tok = out[:, step - 1]
    logits, cache = forward_cached(module, params, tok[:, None], cache, dtype=dtype)
    nxt = sample_logits(logits[:, 0], sampling, jax.random.fold_in(key, step))
    nxt = jnp.where(done, eos, nxt)
    count = count + (~done).astype(jnp.int32)
    done = done | (nxt == eos)
    return step + 1, out.at[:, step].set(nxt), done, count, cache

  _, out, done, count, cache = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), out, done, count, cache))
  if eos_id is None:
    done = jnp.zeros_like(done)
  return GenerationResult(tokens=out, num_tokens=count, done=done, cache=cache)


_STATIC = ("module", "steps", "sampling", "eos_id", "dtype")


@functools.partial(jax.jit, static_argnames=("module", "dtype"))
def _prefill_jit(params, ids, cache, *, module, dtype):
  return _prefill(module, params, ids, cache, dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _decode_jit(params, first, cache, key, *, module, steps, sampling, eos_id, dtype):
  return _decode(module, params, first, cache, key, steps=steps, sampling=sampling, eos_id=eos_id, dtype=dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_jit(params, ids, cache, key, *, module, steps, sampling, eos_id, dtype):
  logits, cache = _prefill(module, params, ids, cache, dtype)
  k0, key = jax.random.split(key)
  first = sample_logits(logits, sampling, k0)
  return _decode(module, params, first, cache, key, steps=steps, sampling=sampling, eos_id=eos_id, dtype=dtype)


def _check_common(cfg, params, sampling, key, eos_id, dtype, what):
  if not isinstance(params, dict) or "embed_tokens" not in params:
    raise TypeError(f"{what}: params must be the LlamaLM 'params' dict (with 'embed_tokens', 'layers_0', ...), got "
                    f"{type(params).__name__}; pass the params collection itself, not {{'params': ...}}.")
  if not isinstance(sampling, SamplingConfig):
    raise TypeError(f"{what}: sampling must be a SamplingConfig, got {type(sampling).__name__}.")
  if key is None:
    if not sampling.greedy:
      raise ValueError(f"{what}: sampling with temperature > 0 needs key=jax.random.key(seed).")
    key = jax.random.key(0)
  if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)
                             or not 0 <= eos_id < cfg.vocab_size):
    raise ValueError(f"{what}: eos_id must be None or a token id in [0, {cfg.vocab_size}), got {eos_id!r}.")
  dtype = jnp.dtype(dtype or param_dtype(params))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{what}: dtype must be a float dtype such as jnp.bfloat16, got {dtype}.")
  return key, dtype


def _check_steps(max_new_tokens, prompt_len, max_len, what):
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"{what}: max_new_tokens must be a positive int, got {max_new_tokens!r}.")
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"{what}: max_len must be a positive int, got {max_len!r}.")
  if prompt_len > max_len:
    raise ValueError(f"{what}: the prompt has {prompt_len} tokens, longer than the cache (max_len={max_len}); "
                     "raise max_len or shorten the prompt.")
  if prompt_len + max_new_tokens - 1 > max_len:
    raise ValueError(f"{what}: prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) - 1 = "
                     f"{prompt_len + max_new_tokens - 1} positions exceed max_len={max_len}; raise max_len to at "
                     f"least {prompt_len + max_new_tokens - 1} or ask for fewer tokens.")


def generate(model: Any, params: dict, prompt_ids, *, max_new_tokens: int, max_len: int | None = None,
             cache_config: KVCacheConfig = KVCacheConfig(), sampling: SamplingConfig = SamplingConfig(),
             key: jax.Array | None = None, eos_id: int | None = None, matmul: MatmulFn | None = None,
             dtype=None) -> GenerationResult:
  """Prefill + decode in one jit-compiled call (compiled once per shapes / static settings).

  Args:
    model: a LlamaConfig or a model built on LlamaLM (``jquant.models.LlamaModel`` / ``SmolLM2``; its ``matmul``
      is used unless given).
    params: float params, or params from ``jq.quantize_params`` / GPTQ / AWQ (QArray or PreparedWeight kernels,
      optionally a QArray embedding).
    prompt_ids: (B, T) int token ids (rows of equal length).
    max_new_tokens: N, tokens to produce per row.
    max_len: cache positions (static); default T + N - 1 (the last token is never fed back).
    cache_config: `KVCacheConfig`: float or int8 / fp8 cache.
    sampling: `SamplingConfig` (default greedy).
    key: PRNG key (required when sampling).
    eos_id: a row stops after emitting this id; None never stops early.
    matmul: ``matmul(x, kernel)`` used by every Linear (e.g. W8A8); default the model's, else x @ w / qdot.
    dtype: compute dtype; default the embedding's dtype.

  Returns:
    `GenerationResult` with tokens (B, N).
  """
  module, cfg = model_config(model, matmul)
  ids = _check_ids(prompt_ids, "generate", cfg.vocab_size)
  max_len = ids.shape[1] + max_new_tokens - 1 if max_len is None and isinstance(max_new_tokens, int) else max_len
  _check_steps(max_new_tokens, ids.shape[1], max_len, "generate")
  if not isinstance(cache_config, KVCacheConfig):
    raise TypeError(f"generate: cache_config must be a KVCacheConfig, got {type(cache_config).__name__}.")
  key, dtype = _check_common(cfg, params, sampling, key, eos_id, dtype, "generate")
  cache = new_cache(cfg, cache_config, ids.shape[0], max_len)
  return _generate_jit(params, ids, cache, key, module=module, steps=max_new_tokens, sampling=sampling,
                       eos_id=eos_id, dtype=dtype)


def prefill(model: Any, params: dict, prompt_ids, cache: KVCache, *, matmul: MatmulFn | None = None,
            dtype=None) -> tuple[jax.Array, KVCache]:
  """Writes the prompt into an empty cache (jit-compiled).

  Returns:
    (last-position logits (B, vocab) float32, the cache with ``length == T``).
  """
  module, cfg = model_config(model, matmul)
  ids = _check_ids(prompt_ids, "prefill", cfg.vocab_size)
  if not isinstance(cache, KVCache):
    raise TypeError(f"prefill: cache must be a KVCache (see new_cache), got {type(cache).__name__}.")
  if ids.shape[1] > cache.max_len:
    raise ValueError(f"prefill: the prompt has {ids.shape[1]} tokens, longer than the cache (max_len="
                     f"{cache.max_len}); raise max_len or shorten the prompt.")
  _, dtype = _check_common(cfg, params, SamplingConfig(), None, None, dtype, "prefill")
  return _prefill_jit(params, ids, cache, module=module, dtype=dtype)


def decode(model: Any, params: dict, first_token, cache: KVCache, *, max_new_tokens: int,
           sampling: SamplingConfig = SamplingConfig(), key: jax.Array | None = None, eos_id: int | None = None,
           matmul: MatmulFn | None = None, dtype=None) -> GenerationResult:
  """Decodes after `prefill`: ``first_token`` (B,) is emitted as token 0, then max_new_tokens - 1 more are
  produced by one jit-compiled ``lax.while_loop``."""
  module, cfg = model_config(model, matmul)
  if not isinstance(cache, KVCache):
    raise TypeError(f"decode: cache must be a KVCache (see new_cache), got {type(cache).__name__}.")
  first = jnp.asarray(first_token)
  if first.ndim != 1 or not jnp.issubdtype(first.dtype, jnp.integer) or first.shape[0] != cache.k[0].shape[0]:
    raise ValueError(f"decode: first_token must be (B,) int ids with B = {cache.k[0].shape[0]}, got shape "
                     f"{tuple(first.shape)} and dtype {first.dtype}.")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"decode: max_new_tokens must be a positive int, got {max_new_tokens!r}.")
  if not isinstance(cache.length, jax.core.Tracer):
    used = int(cache.length)
    if used < 1 or used + max_new_tokens - 1 > cache.max_len:
      raise ValueError(f"decode: the cache holds {used} positions of {cache.max_len}; decoding {max_new_tokens} "
                       f"tokens needs {max_new_tokens - 1} more (and a prefilled cache). Use a cache with max_len "
                       f">= {used + max_new_tokens - 1} or ask for fewer tokens.")
  key, dtype = _check_common(cfg, params, sampling, key, eos_id, dtype, "decode")
  return _decode_jit(params, first.astype(jnp.int32), cache, key, module=module, steps=max_new_tokens,
                     sampling=sampling, eos_id=eos_id, dtype=dtype)
