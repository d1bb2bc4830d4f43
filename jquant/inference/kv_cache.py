"""A fixed-size key/value cache for autoregressive decoding: float (bf16 / fp32) or quantized (int8 / fp8 e4m3).

Layout, per layer ``l``: ``k[l]`` and ``v[l]`` are (B, max_len, kv_heads, head_dim) in the storage dtype. Quantized
caches keep one float32 scale per token and per head, ``k_scale[l]`` / ``v_scale[l]`` of shape
(B, max_len, kv_heads, 1): values are quantized on write (``jq.quantize`` with ``PerToken`` over head_dim, i.e.
symmetric absmax / qmax of each head vector) and dequantized inside attention. With static scales
(``KVCacheConfig(k_scale=..., v_scale=...)``) the given per-tensor or per-head scale is used instead of the
absmax (values beyond ``scale * qmax`` saturate) and is still stored per token, so both modes share one layout.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from jquant.core import FP8_E4M3, INT8, PerToken, QuantSpec, quantize

__all__ = ["KVCacheConfig", "KVCache", "init_cache", "write_layer", "read_layer", "cache_nbytes", "CACHE_DTYPES"]

CACHE_DTYPES = ("float32", "bfloat16", "float16", "int8", "fp8_e4m3")
_QTYPES = {"int8": INT8, "fp8_e4m3": FP8_E4M3}


def _check_static_scale(name: str, value) -> tuple[float, ...] | None:
  if value is None:
    return None
  vals = (value,) if isinstance(value, (int, float)) and not isinstance(value, bool) else tuple(value)
  try:
    vals = tuple(float(v) for v in vals)
  except (TypeError, ValueError) as e:
    raise TypeError(f"KVCacheConfig.{name} must be a positive float or a sequence of them (one per kv head), got "
                    f"{value!r}.") from e
  if not vals or not all(v > 0 and v < float("inf") for v in vals):
    raise ValueError(f"KVCacheConfig.{name} must hold finite positive scales, got {value!r}; a static scale is "
                     "the calibrated absmax of the keys/values divided by qmax (127 for int8, 448 for fp8).")
  return vals


@dataclasses.dataclass(frozen=True)
class KVCacheConfig:
  """How the cache stores keys and values (hashable: a jit static argument).

  Attributes:
    dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (float caches) or ``"int8"``, ``"fp8_e4m3"`` (alias
      ``"fp8"``) (quantized, per-token-per-head scales).
    k_scale: None for dynamic scales (absmax of each head vector on write), or a static scale: a positive float
      (per tensor) or one per kv head. Quantized dtypes only.
    v_scale: the same for values; give both or neither.
  """

  dtype: str = "float32"
  k_scale: float | Sequence[float] | None = None
  v_scale: float | Sequence[float] | None = None

  def __post_init__(self):
    if self.dtype == "fp8":
      object.__setattr__(self, "dtype", "fp8_e4m3")
    if self.dtype not in CACHE_DTYPES:
      raise ValueError(f"KVCacheConfig: unsupported cache dtype {self.dtype!r}; expected one of {CACHE_DTYPES} "
                       "(int8 / fp8_e4m3 are quantized with per-token-per-head scales).")
    ks = _check_static_scale("k_scale", self.k_scale)
    vs = _check_static_scale("v_scale", self.v_scale)
    if (ks is None) != (vs is None):
      raise ValueError("KVCacheConfig: give both k_scale and v_scale (static scales) or neither (dynamic).")
    if ks is not None and not self.quantized:
      raise ValueError(f"KVCacheConfig: static scales only apply to quantized caches (int8 / fp8_e4m3), got "
                       f"dtype={self.dtype!r}; drop k_scale / v_scale or pick a quantized dtype.")
    object.__setattr__(self, "k_scale", ks)
    object.__setattr__(self, "v_scale", vs)

  @property
  def quantized(self) -> bool:
    return self.dtype in _QTYPES

  @property
  def spec(self) -> QuantSpec | None:
    """The QuantSpec of a quantized cache: symmetric, PerToken over head_dim (scale (B, T, kv_heads, 1))."""
    return QuantSpec(qtype=_QTYPES[self.dtype], granularity=PerToken()) if self.quantized else None

  @property
  def storage_dtype(self) -> jnp.dtype:
    return self.spec.qtype.storage_dtype if self.quantized else jnp.dtype(self.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Per-layer key/value buffers and the number of positions written.

  Attributes:
    k, v: tuples (one per layer) of (B, max_len, kv_heads, head_dim) arrays in ``config.storage_dtype``.
    k_scale, v_scale: tuples of float32 (B, max_len, kv_heads, 1) scales (quantized caches), else None.
    length: int32 scalar, positions [0, length) hold valid entries.
    config: the `KVCacheConfig` (static).
  """

  k: tuple
  v: tuple
  k_scale: tuple | None
  v_scale: tuple | None
  length: jax.Array
  config: KVCacheConfig = dataclasses.field(default=KVCacheConfig(), metadata=dict(static=True))

  @property
  def max_len(self) -> int:
    return int(self.k[0].shape[1])

  @property
  def num_layers(self) -> int:
    return len(self.k)


def _positive_int(name: str, v) -> int:
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise ValueError(f"init_cache: {name} must be a positive int, got {v!r}.")
  return v


def init_cache(config: KVCacheConfig, *, num_layers: int, batch: int, max_len: int, kv_heads: int,
               head_dim: int) -> KVCache:
  """An empty cache (zeros; scales 1) of ``max_len`` positions.

  Returns:
    `KVCache` with per-layer (batch, max_len, kv_heads, head_dim) buffers and ``length == 0``.
  """
  if not isinstance(config, KVCacheConfig):
    raise TypeError(f"init_cache: config must be a KVCacheConfig, got {type(config).__name__}.")
  for name, v in (("num_layers", num_layers), ("batch", batch), ("max_len", max_len), ("kv_heads", kv_heads),
                  ("head_dim", head_dim)):
    _positive_int(name, v)
  for name, s in (("k_scale", config.k_scale), ("v_scale", config.v_scale)):
    if s is not None and len(s) not in (1, kv_heads):
      raise ValueError(f"KVCacheConfig.{name} has {len(s)} values; expected 1 (per tensor) or kv_heads = "
                       f"{kv_heads} (per head).")
  shape = (batch, max_len, kv_heads, head_dim)
  zeros = tuple(jnp.zeros(shape, config.storage_dtype) for _ in range(num_layers))
  scales = None
  if config.quantized:
    scales = tuple(jnp.ones(shape[:-1] + (1,), jnp.float32) for _ in range(num_layers))
  return KVCache(k=zeros, v=zeros, k_scale=scales, v_scale=scales, length=jnp.zeros((), jnp.int32), config=config)


def _quantize(x: jax.Array, config: KVCacheConfig, static) -> tuple[jax.Array, jax.Array]:
  """(values, scale) of x (B, t, H, D) for a quantized cache."""
  if static is None:
    qa = quantize(x, config.spec)
  else:
    s = jnp.broadcast_to(jnp.asarray(static, jnp.float32).reshape(-1, 1), x.shape[2:3] + (1,))
    qa = quantize(x, config.spec, scale=jnp.broadcast_to(s, x.shape[:-1] + (1,)))
  return qa.qvalue, qa.scale.astype(jnp.float32)


def write_layer(cache: KVCache, layer: int, k: jax.Array, v: jax.Array, pos) -> KVCache:
  """Writes (B, t, kv_heads, head_dim) keys/values of layer ``layer`` at positions [pos, pos + t).

  Quantized caches quantize on write. ``pos`` may be traced; ``length`` is not changed (see `advance`).
  """
  cfg = cache.config
  zero = jnp.zeros((), jnp.int32)
  idx = (zero, jnp.asarray(pos, jnp.int32), zero, zero)

  def put(buf_tuple, val):
    bufs = list(buf_tuple)
    bufs[layer] = jax.lax.dynamic_update_slice(bufs[layer], val.astype(bufs[layer].dtype), idx)
    return tuple(bufs)

  if not cfg.quantized:
    return dataclasses.replace(cache, k=put(cache.k, k), v=put(cache.v, v))
  kq, ks = _quantize(k, cfg, cfg.k_scale)
  vq, vs = _quantize(v, cfg, cfg.v_scale)
  return dataclasses.replace(cache, k=put(cache.k, kq), v=put(cache.v, vq), k_scale=put(cache.k_scale, ks),
                             v_scale=put(cache.v_scale, vs))


def read_layer(cache: KVCache, layer: int, upto: int | None = None):
  """(k, v, k_scale, v_scale) of one layer, positions [0, upto) (all when None); scales None for float caches.

  The values are returned in storage dtype: attention multiplies by the scales itself (see
  ``llama_cached.cached_attention``), so the dequantized cache is never materialised.
  """
  sl = slice(None) if upto is None else slice(0, upto)
  pick = lambda t: None if t is None else t[layer][:, sl]
  return pick(cache.k), pick(cache.v), pick(cache.k_scale), pick(cache.v_scale)


def dequantize_layer(cache: KVCache, layer: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The float (B, max_len, kv_heads, head_dim) keys and values of one layer: values * scales."""
  k, v, ks, vs = read_layer(cache, layer)
  if ks is None:
    return k.astype(dtype), v.astype(dtype)
  return (k.astype(jnp.float32) * ks).astype(dtype), (v.astype(jnp.float32) * vs).astype(dtype)


def advance(cache: KVCache, n) -> KVCache:
  """The cache with ``length`` increased by ``n`` tokens."""
  return dataclasses.replace(cache, length=cache.length + jnp.asarray(n, jnp.int32))


def cache_nbytes(cache: KVCache) -> int:
  """Bytes the cache occupies: values plus scales (works on abstract shapes from ``jax.eval_shape`` too)."""
  if not isinstance(cache, KVCache):
    raise TypeError(f"cache_nbytes: expected a KVCache, got {type(cache).__name__}.")
  leaves = jax.tree_util.tree_leaves((cache.k, cache.v, cache.k_scale, cache.v_scale))
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in leaves))
