"""Microscaling formats: OCP MX v1.0 (MXFP8 E4M3 / E5M2, MXFP4) and NVIDIA NVFP4 -- scale selection, encoding,
decoding and two-per-byte fp4 packing.

Blocks are ``qtype.block_size`` consecutive elements along the spec's ``PerGroup`` axis (the contraction axis).
All arithmetic is float32 on the input's float32 value; every step below is exact or one IEEE float32 rounding, so
tests/core/test_mx.py checks it bit for bit against a NumPy float64 model of these rules.

MX (OCP Microscaling Formats v1.0, section 6.3), elements E4M3 (emax 8), E5M2 (emax 15) or E2M1 (emax 2):
  * scale ``X = 2 ** (floor(log2(amax)) - emax)``, the exponent clamped to E8M0's range [-127, 127] (an all-zero
    block gets ``2 ** -127``); stored as E8M0 (the biased exponent byte);
  * element ``P = RNE(V / X)`` in the element format (``V / X`` is exact: X is a power of two), saturating at the
    format's largest normal (448, 57344, 6) -- ``amax / X`` reaches up to ``2 ** (emax + 1)``;
  * a block with a NaN or Inf gets the E8M0 NaN scale (0xFF): it decodes to NaN (its element codes are 0);
  * decode ``V' = P * X`` (exact).
NVFP4 (NVIDIA; as TransformerEngine computes it), E2M1 elements in blocks of 16:
  * per-tensor float32 decode scale ``t = amax(tensor) / (6 * 448)`` (1 for an all-zero tensor; at least float32's
    smallest normal), one per slice of the granularity's ``batch_axes``;
  * per-block E4M3 scale ``s = E4M3_RNE(fl(fl(amax_b / 6) / t))`` (<= 448 by construction; it rounds to 0 for a
    block below ~2**-10 / 448 of the tensor's amax, which then encodes as zeros);
  * element ``P = E2M1_RNE_sat(fl(V * fl(1 / fl(s * t))))`` (0 where s == 0);
  * NaN/Inf anywhere in a tensor slice makes ``t`` NaN (every block of it decodes to NaN);
  * decode ``V' = fl(fl(P * s) * t)`` (the first product is exact), i.e. the GEMM order: block products, then the
    per-tensor scale.
Subnormal float32 inputs are outside the contract: XLA on CPU/GPU flushes them to zero.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import tiling
from jquant.core.granularity import PerGroup, PerTensor
from jquant.core.qtypes import QType

_F32 = jnp.float32
_F32_TINY = float(np.finfo(np.float32).tiny)
E4M3_MAX = 448.0
NVFP4_TENSOR_DIVISOR = 6.0 * E4M3_MAX


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NVFP4Scale:
  """The two-level NVFP4 scale: E4M3 block scales (shaped like a plain scale) and float32 per-tensor scales
  (shape 1 on every axis except the granularity's batch axes)."""

  block: jax.Array
  tensor: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.block.shape)

  @property
  def ndim(self) -> int:
    return self.block.ndim

  @property
  def nbytes(self) -> int:
    return int(self.block.size + 4 * self.tensor.size)

  def dequantize(self) -> jax.Array:
    """float32 ``s * t`` per block (one rounding; `dequantize` itself applies s and t separately)."""
    return self.block.astype(_F32) * self.tensor.astype(_F32)


def check_mx_spec(spec) -> None:
  """ValueError unless ``spec`` (with an MX qtype) has the format's layout: PerGroup of ``block_size``, AbsMax."""
  qt, g = spec.qtype, spec.granularity
  if not isinstance(g, PerGroup) or g.size != qt.block_size:
    raise ValueError(f"QuantSpec: {qt.name} shares one scale per {qt.block_size} consecutive elements along the "
                     f"contraction axis; use granularity=jq.PerGroup(axis=..., size={qt.block_size}) (axis=0 for a "
                     f"Flax kernel (in, out), axis=-1 for activations), got {g}.")
  if type(spec.calibration).__name__ != "AbsMax":
    raise ValueError(f"QuantSpec: {qt.name} picks its scales by the format's rule from each block's absmax; use "
                     f"calibration=jq.AbsMax() (got {spec.calibration}).")
  if spec.double_quant:
    raise ValueError(f"QuantSpec: {qt.name} scales are already 8-bit ({qt.scale_format}); use double_quant=False.")


def _pow2(e: jax.Array) -> jax.Array:
  """Exact float32 ``2 ** e`` for integer ``e`` in [-126, 127] (bit construction; exp2 may be inexact)."""
  return jax.lax.bitcast_convert_type(((e + 127).astype(jnp.int32) << 23), _F32)


def _floor_log2(a: jax.Array) -> jax.Array:
  """floor(log2(a)) for positive normal float32 (exponent bits); -127 for 0 and subnormals."""
  bits = jax.lax.bitcast_convert_type(a, jnp.int32)
  return jnp.where(a > 0, ((bits >> 23) & 0xFF) - 127, -127)


def _elem(v: jax.Array, qt: QType) -> jax.Array:
  """RNE to the element format, saturating at +-max (finite in, finite out)."""
  return jnp.clip(v, qt.qmin, qt.qmax).astype(qt.storage_dtype)


def _div(a: jax.Array, c: float) -> jax.Array:
  """IEEE float32 ``fl(a / c)`` for a constant ``c``: XLA rewrites division by a constant into multiplication by
  its (inexact) reciprocal, which differs in the last bit for ~1/4 of the inputs (1/6, 1/2688); a divisor XLA
  cannot see as a constant keeps the true division."""
  return a / jax.lax.optimization_barrier(jnp.full(a.shape, c, _F32))


def _amax(xf: jax.Array, block) -> jax.Array:
  """Per-tile max |x| (scale shape); NaN propagates, Inf stays Inf."""
  return jnp.max(jnp.abs(tiling.to_tiles(xf, block)), axis=-1)


def quantize_mx(x: jax.Array, spec):
  """(codes in ``qtype.storage_dtype``, stored scale: E8M0 array or `NVFP4Scale`, all-finite flag)."""
  qt = spec.qtype
  xf = x.astype(_F32)
  block = spec.granularity.block_shape(x.shape)
  amax = _amax(xf, block)
  ok_b = jnp.isfinite(amax)
  if qt.scale_format == "float8_e8m0fnu":
    emax = int(jnp.finfo(qt.storage_dtype).maxexp) - 1
    e = jnp.clip(_floor_log2(jnp.where(ok_b, amax, 0.0)) - emax, -127, 127)
    inv = _pow2(jnp.minimum(-e, 127))                             # 1/X, exact: -e >= -125 since amax < 2**128
    q = tiling.broadcast_apply(lambda v, s, ok: jnp.where(ok, _elem(v * s, qt), 0), xf, block, inv, ok_b)
    code = jnp.where(ok_b, e + 127, 255).astype(jnp.uint8)
    return q, jax.lax.bitcast_convert_type(code, jnp.float8_e8m0fnu), jnp.all(ok_b)
  t = nvfp4_tensor_scale(xf, spec)
  t_b = jnp.broadcast_to(t, amax.shape)          # t is 1 on every non-batch axis
  ok_b = ok_b & jnp.isfinite(t_b)
  s = jnp.where(ok_b, _div(amax, 6.0) / t_b, jnp.nan).astype(jnp.float8_e4m3fn)
  sf = s.astype(_F32)
  enc = jnp.where(ok_b & (sf > 0), 1.0 / jnp.where(ok_b & (sf > 0), sf * t_b, 1.0), 0.0)
  q = tiling.broadcast_apply(lambda v, c, ok: jnp.where(ok, _elem(v * c, qt), 0), xf, block, enc, ok_b)
  return q, NVFP4Scale(block=s, tensor=t), jnp.all(ok_b)


def grid_scales(x: jax.Array, spec) -> jax.Array:
  """float32 per-block scales for solvers that quantize with given params (GPTQ's error feedback, through
  `jquant.core.quantize.compute_qparams` / `quantize_with_params`): MX: ``X`` (its exponent clamped at -126, the
  smallest float32 normal, for blocks below ~2**-118); NVFP4: the E4M3 block scale with tensor scale 1 (divide by
  `nvfp4_tensor_scale` first; `with_tensor_scale` attaches it afterwards)."""
  amax = _amax(x.astype(_F32), spec.granularity.block_shape(x.shape))
  qt = spec.qtype
  if qt.scale_format == "float8_e8m0fnu":
    emax = int(jnp.finfo(qt.storage_dtype).maxexp) - 1
    e = _floor_log2(jnp.where(jnp.isfinite(amax), amax, 0.0)) - emax
    return jnp.where(jnp.isfinite(amax), _pow2(jnp.clip(e, -126, 127)), jnp.nan)
  # Saturating E4M3 cast (NVIDIA's satfinite): GPTQ's error feedback can grow a block past the tensor's original
  # amax, so amax / 6 may exceed 448 here (never in `quantize_mx`); the block then takes the largest scale and its
  # largest elements saturate at +-6, instead of the cast's NaN. NaN stays NaN (minimum propagates it).
  return jnp.minimum(_div(amax, 6.0), E4M3_MAX).astype(jnp.float8_e4m3fn).astype(_F32)


def quantize_with_grid_scales(x: jax.Array, scale: jax.Array, qt: QType) -> jax.Array:
  """Element codes for `grid_scales` scales (broadcast against ``x``): ``RNE_sat(x * fl(1 / scale))``, 0 where the
  scale is 0."""
  ok = scale > 0
  return jnp.where(ok, _elem(x * jnp.where(ok, 1.0 / jnp.where(ok, scale, 1.0), 0.0), qt), 0)


def nvfp4_tensor_scale(x: jax.Array, spec) -> jax.Array:
  """NVFP4's float32 per-tensor scale ``t`` of ``x`` (shape: 1 except on batch axes; see the module doc)."""
  tmax = _amax(x.astype(_F32), PerTensor(batch_axes=spec.granularity.batch_axes).block_shape(x.shape))
  t = jnp.where(tmax > 0, jnp.maximum(_div(tmax, NVFP4_TENSOR_DIVISOR), _F32_TINY), 1.0)
  return jnp.where(jnp.isfinite(tmax), t, jnp.nan)


def dequantize_mx(q: jax.Array, scale, block, qt: QType) -> jax.Array:
  """float32 values: ``P * X`` (MX) or ``(P * s) * t`` (NVFP4; a plain E4M3 scale means t = 1); ``scale`` may be
  act-order-expanded."""
  v = q.astype(_F32)
  if qt.scale_format == "float8_e4m3fn" and not isinstance(scale, NVFP4Scale):
    scale = NVFP4Scale(block=scale, tensor=jnp.ones((1,) * q.ndim, _F32))
  if isinstance(scale, NVFP4Scale):
    return tiling.broadcast_apply(lambda a, s: a * s, v, block, scale.block.astype(_F32)) * scale.tensor
  code = jax.lax.bitcast_convert_type(scale, jnp.uint8).astype(jnp.int32)
  # 2**-127 is a float32 subnormal (flushed to 0 by XLA): apply it as 0.5 * 2**-126. Code 255 is NaN.
  pre = jnp.where(code == 255, jnp.nan, jnp.where(code == 0, 0.5, 1.0))
  return tiling.broadcast_apply(lambda a, p, s: (a * p) * s, v, block, pre, _pow2(jnp.clip(code - 127, -126, 127)))


# --- fp4 packing (two E2M1 codes per byte; core/packing.py's nibble order: element 2i low, 2i+1 high) -----------

def fp4_codes(values: jax.Array) -> jax.Array:
  """The 4-bit codes (uint8 0..15: sign bit 3, exponent bits 2-1, mantissa bit 0) of float4_e2m1fn values."""
  if values.dtype != jnp.float4_e2m1fn:
    raise TypeError(f"fp4_codes: expected float4_e2m1fn values, got {values.dtype}.")
  return jax.lax.bitcast_convert_type(values, jnp.uint4).astype(jnp.uint8)


def fp4_from_codes(codes: jax.Array) -> jax.Array:
  """Inverse of `fp4_codes`."""
  return jax.lax.bitcast_convert_type(codes.astype(jnp.uint4), jnp.float4_e2m1fn)


def pack_fp4(values: jax.Array, axis: int = -1) -> jax.Array:
  """Packs float4_e2m1fn values two per byte along ``axis`` (its length must be even)."""
  from jquant.core import packing
  return packing.pack(fp4_codes(values).astype(jnp.int32), bits=4, axis=axis)


def unpack_fp4(packed: jax.Array, axis: int = -1) -> jax.Array:
  """Inverse of `pack_fp4`."""
  from jquant.core import packing
  return fp4_from_codes(packing.unpack(packed, bits=4, axis=axis, signed=False, dtype=jnp.uint8))
