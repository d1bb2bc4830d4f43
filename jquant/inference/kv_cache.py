"""A fixed-size key/value cache for autoregressive decoding: float (bf16 / fp32), 8-bit (int8 / fp8 e4m3) or
4-bit (int4 / NVFP4, two values per byte).

Layout, per layer ``l``: ``k[l]`` and ``v[l]`` are (B, max_len, kv_heads, head_dim) in the storage dtype. 8-bit
caches keep one float32 scale per token and per head, ``k_scale[l]`` / ``v_scale[l]`` of shape
(B, max_len, kv_heads, 1): values are quantized on write (``jq.quantize`` with ``PerToken`` over head_dim, i.e.
symmetric absmax / qmax of each head vector) and dequantized inside attention. With static scales
(``KVCacheConfig(k_scale=..., v_scale=...)``) the given per-tensor or per-head scale is used instead of the
absmax (values beyond ``scale * qmax`` saturate) and is still stored per token, so both modes share one layout.

4-bit caches store (B, max_len, kv_heads, head_dim // 2) uint8 bytes (element 2i in the low nibble,
``jquant.core.packing``) and are quantized on write with ``jq.quantize`` along head_dim:
  * ``int4``: groups of ``group_size`` elements of each head vector (default: the whole vector), symmetric
    (int4 codes, scale absmax / 7) or asymmetric (uint4 codes, ``k_zero`` / ``v_zero``: uint8 zero points
    (B, max_len, kv_heads, head_dim // group_size)); float32 scales of that shape;
  * ``nvfp4``: E2M1 codes, E4M3 scales per 16 elements and the format's float32 "tensor" scale taken per token
    and head (an `NVFP4Scale` of (.., head_dim // 16) and (.., 1) arrays), so a write never rescales old entries.
With ``rotate=True`` each head vector is multiplied by a random-sign Hadamard matrix before quantizing and by its
transpose after decoding (spreads outlier channels over the group). `read_layer` returns the decoded float32
values of 4-bit caches (their scales are not per token).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from jquant.core import (FP8_E4M3, INT4, INT8, NVFP4, UINT4, PerGroup, PerToken, QArray, QuantSpec, dequantize,
                         quantize)
from jquant.core.mx import NVFP4Scale, fp4_codes, fp4_from_codes
from jquant.core.packing import pack, unpack
from jquant.ops.hadamard import hadamard_matrix, random_signs

__all__ = ["KVCacheConfig", "KVCache", "init_cache", "write_layer", "read_layer", "cache_nbytes", "cache_config",
           "CACHE_DTYPES"]

CACHE_DTYPES = ("float32", "bfloat16", "float16", "int8", "fp8_e4m3", "int4", "nvfp4")
_QTYPES = {"int8": INT8, "fp8_e4m3": FP8_E4M3}
PACKED_DTYPES = ("int4", "nvfp4")      # two 4-bit codes per byte along head_dim
ROTATION_SEED = 0


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
    dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (float caches), ``"int8"``, ``"fp8_e4m3"`` (alias
      ``"fp8"``) (per-token-per-head scales) or ``"int4"``, ``"nvfp4"`` (4-bit, packed; see the module doc).
    k_scale: None for dynamic scales (absmax of each head vector on write), or a static scale: a positive float
      (per tensor) or one per kv head. int8 / fp8 only.
    v_scale: the same for values; give both or neither.
    group_size: int4: elements of a head vector sharing a scale (None: all head_dim of them; must divide it).
    symmetric: int4: False adds a zero point per group (uint4 codes over [min, max] of the group).
    rotate: int4 / nvfp4: rotate head vectors by a random-sign Hadamard matrix (seed ``ROTATION_SEED``) before
      quantizing, and back after decoding.
  """

  dtype: str = "float32"
  k_scale: float | Sequence[float] | None = None
  v_scale: float | Sequence[float] | None = None
  group_size: int | None = None
  symmetric: bool = True
  rotate: bool = False

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
    if ks is not None and self.dtype not in _QTYPES:
      raise ValueError(f"KVCacheConfig: static scales only apply to int8 / fp8_e4m3 caches, got "
                       f"dtype={self.dtype!r}; drop k_scale / v_scale or pick int8 / fp8_e4m3.")
    object.__setattr__(self, "k_scale", ks)
    object.__setattr__(self, "v_scale", vs)
    g = self.group_size
    if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 2 or g % 2):
      raise ValueError(f"KVCacheConfig: group_size must be None (the whole head vector) or an even int >= 2 "
                       f"dividing head_dim, got {g!r}.")
    if g is not None and self.dtype != "int4":
      raise ValueError(f"KVCacheConfig: group_size applies to int4 caches only (nvfp4 fixes 16, int8 / fp8 scale "
                       f"whole head vectors), got dtype={self.dtype!r}, group_size={g}.")
    if not isinstance(self.symmetric, bool) or not isinstance(self.rotate, bool):
      raise TypeError(f"KVCacheConfig: symmetric and rotate must be bools, got {self.symmetric!r}, {self.rotate!r}.")
    if not self.symmetric and self.dtype != "int4":
      raise ValueError(f"KVCacheConfig: symmetric=False (zero points) applies to int4 caches only, got "
                       f"dtype={self.dtype!r}.")
    if self.rotate and not self.packed:
      raise ValueError(f"KVCacheConfig: rotate=True applies to 4-bit caches ({PACKED_DTYPES}), got "
                       f"dtype={self.dtype!r}.")

  @property
  def quantized(self) -> bool:
    return self.dtype in _QTYPES or self.packed

  @property
  def packed(self) -> bool:
    """4-bit cache: two codes per byte, decoded to float32 on read."""
    return self.dtype in PACKED_DTYPES

  @property
  def spec(self) -> QuantSpec | None:
    """The QuantSpec of an 8-bit cache: symmetric, PerToken over head_dim (scale (B, T, kv_heads, 1)); 4-bit
    caches: see `packed_spec`."""
    return QuantSpec(qtype=_QTYPES[self.dtype], granularity=PerToken()) if self.dtype in _QTYPES else None

  def packed_spec(self, head_dim: int) -> QuantSpec:
    """The QuantSpec a 4-bit cache quantizes (B, t, kv_heads, head_dim) keys / values with (along head_dim)."""
    if self.dtype == "nvfp4":
      return QuantSpec(qtype=NVFP4, granularity=PerGroup(axis=-1, size=16, batch_axes=(0, 1, 2)))
    g = self.group_size or head_dim
    return QuantSpec(qtype=INT4 if self.symmetric else UINT4, granularity=PerGroup(axis=-1, size=g),
                     symmetric=self.symmetric)

  @property
  def storage_dtype(self) -> jnp.dtype:
    if self.packed:
      return jnp.dtype(jnp.uint8)
    return self.spec.qtype.storage_dtype if self.quantized else jnp.dtype(self.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Per-layer key/value buffers and the number of positions written.

  Attributes:
    k, v: tuples (one per layer) of (B, max_len, kv_heads, head_dim) arrays in ``config.storage_dtype``
      (4-bit caches: head_dim // 2 bytes).
    k_scale, v_scale: tuples of per-layer scales: float32 (B, max_len, kv_heads, 1) (int8 / fp8), float32
      (B, max_len, kv_heads, head_dim // group_size) (int4) or an `NVFP4Scale` (nvfp4); None for float caches.
    length: int32 scalar, positions [0, length) hold valid entries.
    config: the `KVCacheConfig` (static).
    k_zero, v_zero: tuples of uint8 zero points shaped like the int4 scales (asymmetric int4), else None.
  """

  k: tuple
  v: tuple
  k_scale: tuple | None
  v_scale: tuple | None
  length: jax.Array
  config: KVCacheConfig = dataclasses.field(default=KVCacheConfig(), metadata=dict(static=True))
  k_zero: tuple | None = None
  v_zero: tuple | None = None

  @property
  def max_len(self) -> int:
    return int(self.k[0].shape[1])

  @property
  def num_layers(self) -> int:
    return len(self.k)


# The settings ``cache_config("int4")`` (and ``python -m jquant eval --kv-cache int4``) uses, chosen on SmolLM2
# perplexity over the other plays (benchmarks/kv_cache_4bit.py --on calib; numbers in benchmarks/RESULTS.md).
INT4_RECIPE = dict(group_size=16, symmetric=False, rotate=True)


def cache_config(name: str) -> KVCacheConfig:
  """The `KVCacheConfig` a cache name stands for: a dtype of `CACHE_DTYPES` (or ``"fp8"``) with its defaults,
  except ``"int4"``: `INT4_RECIPE` (asymmetric groups of 16, Hadamard-rotated)."""
  if not isinstance(name, str):
    raise TypeError(f"cache_config: expected a cache name such as 'int8' or 'int4', got {type(name).__name__}.")
  return KVCacheConfig(name, **INT4_RECIPE) if name == "int4" else KVCacheConfig(name)


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
  if config.packed:
    return _init_packed(config, num_layers, shape)
  zeros = tuple(jnp.zeros(shape, config.storage_dtype) for _ in range(num_layers))
  scales = None
  if config.quantized:
    scales = tuple(jnp.ones(shape[:-1] + (1,), jnp.float32) for _ in range(num_layers))
  return KVCache(k=zeros, v=zeros, k_scale=scales, v_scale=scales, length=jnp.zeros((), jnp.int32), config=config)


def _init_packed(config: KVCacheConfig, num_layers: int, shape) -> KVCache:
  """An empty 4-bit cache: the abstract shapes of `_encode` on a (B, max_len, H, D) block, filled with zeros."""
  d = shape[-1]
  if d % 2:
    raise ValueError(f"init_cache: a {config.dtype} cache packs two values per byte; head_dim must be even, got {d}.")
  spec = config.packed_spec(d)
  spec.granularity.block_shape(shape)        # ValueError when the group does not divide head_dim
  if config.rotate:
    hadamard_matrix(d)                       # ValueError for a size without a Hadamard matrix
  layout = jax.eval_shape(lambda x: _encode(x, config), jax.ShapeDtypeStruct(shape, jnp.float32))
  make = lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), layout)
  per_layer = [make() for _ in range(num_layers)]
  field = lambda i: tuple(p[i] for p in per_layer)
  zero = field(2) if not config.symmetric else None
  return KVCache(k=field(0), v=field(0), k_scale=field(1), v_scale=field(1), length=jnp.zeros((), jnp.int32),
                 config=config, k_zero=zero, v_zero=zero)


def _rotation(d: int) -> jax.Array:
  """The (d, d) float32 orthogonal matrix a rotating cache applies (``x @ R`` on write, ``y @ R.T`` on read)."""
  return jnp.asarray(hadamard_matrix(d, random_signs(d, ROTATION_SEED)), jnp.float32)


def _encode(x: jax.Array, config: KVCacheConfig) -> tuple:
  """(packed uint8 codes (.., D // 2), stored scale, uint8 zero point or None) of x (B, t, H, D), 4-bit caches."""
  x = x.astype(jnp.float32)
  if config.rotate:
    x = jnp.einsum("...d,de->...e", x, _rotation(x.shape[-1]), precision=jax.lax.Precision.HIGHEST)
  qa = quantize(x, config.packed_spec(x.shape[-1]))
  codes = fp4_codes(qa.qvalue) if config.dtype == "nvfp4" else qa.qvalue
  zero = None if qa.zero_point is None else qa.zero_point.astype(jnp.uint8)
  return pack(codes, bits=4, axis=-1), qa.scale, zero


def _decode(packed: jax.Array, scale, zero, config: KVCacheConfig) -> jax.Array:
  """float32 (B, S, H, D) values of `_encode`'s output (the inverse, up to the rounding)."""
  d = 2 * packed.shape[-1]
  spec = config.packed_spec(d)
  if config.dtype == "nvfp4":
    q = fp4_from_codes(unpack(packed, bits=4, axis=-1, signed=False, dtype=jnp.uint8))
  else:
    q = unpack(packed, bits=4, axis=-1, signed=config.symmetric, dtype=spec.qtype.storage_dtype)
  zp = None if zero is None else zero.astype(spec.qtype.storage_dtype)
  x = dequantize(QArray(qvalue=q, scale=scale, zero_point=zp, qtype=spec.qtype, spec=spec), jnp.float32)
  if config.rotate:
    x = jnp.einsum("...e,de->...d", x, _rotation(d), precision=jax.lax.Precision.HIGHEST)
  return x


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
    bufs[layer] = jax.tree.map(lambda b, u: jax.lax.dynamic_update_slice(b, u.astype(b.dtype), idx), bufs[layer],
                               val)
    return tuple(bufs)

  if not cfg.quantized:
    return dataclasses.replace(cache, k=put(cache.k, k), v=put(cache.v, v))
  if cfg.packed:
    (kq, ks, kz), (vq, vs, vz) = _encode(k, cfg), _encode(v, cfg)
    zeros = {} if kz is None else dict(k_zero=put(cache.k_zero, kz), v_zero=put(cache.v_zero, vz))
    return dataclasses.replace(cache, k=put(cache.k, kq), v=put(cache.v, vq), k_scale=put(cache.k_scale, ks),
                               v_scale=put(cache.v_scale, vs), **zeros)
  kq, ks = _quantize(k, cfg, cfg.k_scale)
  vq, vs = _quantize(v, cfg, cfg.v_scale)
  return dataclasses.replace(cache, k=put(cache.k, kq), v=put(cache.v, vq), k_scale=put(cache.k_scale, ks),
                             v_scale=put(cache.v_scale, vs))


def read_layer(cache: KVCache, layer: int, upto: int | None = None):
  """(k, v, k_scale, v_scale) of one layer, positions [0, upto) (all when None); scales None for float caches.

  8-bit caches return values in storage dtype with their per-token scales: attention multiplies by the scales
  itself (see ``jquant.models.layers.attention``), so the dequantized cache is never materialised. 4-bit caches
  return the decoded float32 values and None scales.
  """
  sl = slice(None) if upto is None else slice(0, upto)
  pick = lambda t: None if t is None else jax.tree.map(lambda a: a[:, sl], t[layer])
  k, v, ks, vs = pick(cache.k), pick(cache.v), pick(cache.k_scale), pick(cache.v_scale)
  if cache.config.packed:
    kz, vz = pick(cache.k_zero), pick(cache.v_zero)
    return _decode(k, ks, kz, cache.config), _decode(v, vs, vz, cache.config), None, None
  return k, v, ks, vs


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
  leaves = jax.tree_util.tree_leaves((cache.k, cache.v, cache.k_scale, cache.v_scale, cache.k_zero, cache.v_zero))
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in leaves))
