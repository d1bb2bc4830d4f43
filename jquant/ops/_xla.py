"""XLA implementations of the quantized matmul (run everywhere; the fallback when no Pallas kernel applies).

Per-channel and per-tensor weights: ``(x @ (q - zp)) * scale``: the integer (or float8) values convert exactly to
x's dtype, XLA fuses that convert into its GEMM, and the scale is applied to the float32 result. Group-wise, LUT
(NF4) and act-order weights: dequantize (float32 math, one cast to x's dtype), then one GEMM with float32
accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.granularity import PerChannel, PerTensor
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.core.quantize import scale_f32
from jquant.ops.prepared import PreparedWeight, dequantize_prepared

_F32 = jnp.float32


def _dot(x, w):
  return jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())), preferred_element_type=_F32)


def _per_column(qa: QArray) -> bool:
  """True when every scale (and zero point) is constant along K: scale shape (1, N) or (1, 1)."""
  g = qa.spec.granularity
  ok = (isinstance(g, PerChannel) and g.axis % 2 == 1) or isinstance(g, PerTensor)
  return ok and not g.batch_axes and qa.g_idx is None and not qa.qtype.is_lut


def _compute_dtype(x: jax.Array) -> jnp.dtype:
  return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(_F32)


def qdot_xla(x: jax.Array, w: QArray | PreparedWeight) -> jax.Array:
  """float32 (M, N) = x (M, K) @ dequantize(w) with float32 accumulation."""
  cd = _compute_dtype(x)
  x = x.astype(cd)
  if isinstance(w, PreparedWeight):
    if w.kind == "int4":
      return _dot(x, dequantize_prepared(w, cd))
    return _dot(x, w.w.T.astype(cd)) * w.scale.astype(_F32)
  if _per_column(w):
    q = w.qvalue.astype(_F32)
    if w.zero_point is not None:
      q = q - w.zero_point.astype(_F32)
    return _dot(x, q.astype(cd)) * scale_f32(w)
  return _dot(x, dequantize(w, cd))


def qdot_xla_quantized(xv: jax.Array, x_scale: jax.Array, w: QArray | PreparedWeight) -> jax.Array:
  """float32 (M, N) for quantized activations and a per-channel / per-tensor int8 or fp8 weight.

  Args:
    xv: int8 or float8 activations (M, K).
    x_scale: float32 (M, 1) per token or (1, 1) per tensor.
    w: int8 or fp8 weight (K, N) (QArray) or its prepared (N, K) layout.

  int8 x int8 accumulates exactly in int32; matching fp8 formats use XLA's native fp8 dot.
  """
  if isinstance(w, PreparedWeight):
    wq, w_scale = w.w.T, w.scale.astype(_F32)
  else:
    wq, w_scale = w.qvalue, scale_f32(w).reshape(1, -1)
  if xv.dtype == jnp.int8 and wq.dtype == jnp.int8:
    acc = jax.lax.dot_general(xv, wq, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32).astype(_F32)
  elif xv.dtype == wq.dtype:
    acc = _dot(xv, wq)
  else:
    acc = _dot(xv.astype(_F32), wq.astype(_F32))
  return acc * x_scale * w_scale


def dequantize_any(w: QArray | PreparedWeight, dtype) -> jax.Array:
  """The (K, N) float weight of a QArray or PreparedWeight (float32 math, cast to ``dtype``)."""
  if isinstance(w, PreparedWeight):
    return dequantize_prepared(w, dtype)
  return dequantize(w, dtype)
