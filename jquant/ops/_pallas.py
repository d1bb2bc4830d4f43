"""The only jquant module that imports ``pallas_kernels``: QArray / PreparedWeight -> kernel arguments.

Reasons are computed from shapes only (``jax.eval_shape``), so dispatch never converts a weight just to learn
that a kernel does not apply.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.qarray import QArray
from jquant.ops.prepared import PreparedWeight, _to_layout, layout_reasons
from pallas_kernels import fp8_matmul as _fp8
from pallas_kernels import int4_matmul as _int4
from pallas_kernels import int8_matmul as _int8


def _layout(w: QArray | PreparedWeight, *, abstract: bool) -> PreparedWeight:
  if isinstance(w, PreparedWeight):
    return w
  return jax.eval_shape(_to_layout, w) if abstract else _to_layout(w)


def reasons(x: jax.Array, w: QArray | PreparedWeight, x_scale: jax.Array | None, out_dtype) -> list[str]:
  """Why no Pallas kernel runs ``x @ w`` (empty when one does).

  Args:
    x: (M, K) float activations, or int8 / float8 quantized activations when ``x_scale`` is given.
    w: the (K, N) weight.
    x_scale: float32 (M, 1) or (1, 1) activation scale for quantized ``x``, else None.
    out_dtype: requested output dtype.
  """
  if isinstance(w, QArray) and (why := layout_reasons(w)):
    return why
  pw = _layout(w, abstract=True)
  if x_scale is None:
    if pw.kind != "int4":
      qt = "INT8" if pw.kind == "int8" else "FP8_E4M3"
      return [f"{pw.kind} weights run on the {pw.kind} x {pw.kind} kernel, which needs quantized activations; "
              f"pass x as a jq.QArray (jq.quantize(x, jq.QuantSpec(qtype=jq.{qt}, granularity=jq.PerToken())))"]
    r = _int4.supports(x, pw.w, pw.scale, pw.zero_point, pw.g_idx, group_size=pw.group_size, signed=pw.signed)
  elif pw.kind == "int4":
    return ["int4 weights take float (bfloat16/float16) activations; pass x unquantized"]
  elif pw.kind == "int8":
    r = _int8.supports(x, pw.w, x_scale, pw.scale, out_dtype=out_dtype)
  else:
    r = _fp8.supports(x, pw.w, x_scale, pw.scale, out_dtype=out_dtype)
  return [] if r is None else [r]


def run(x: jax.Array, w: QArray | PreparedWeight, x_scale: jax.Array | None, out_dtype, *,
        interpret: bool = False) -> jax.Array:
  """(M, N) ``out_dtype`` from the matching Pallas kernel; call only when ``reasons`` is empty."""
  pw = _layout(w, abstract=False)
  if pw.kind == "int4":
    out = _int4.int4_matmul(x, pw.w, pw.scale, pw.zero_point, pw.g_idx, group_size=pw.group_size,
                            signed=pw.signed, interpret=interpret)
    return out.astype(out_dtype)
  fn = _int8.int8_matmul if pw.kind == "int8" else _fp8.fp8_matmul
  return fn(x, pw.w, x_scale, pw.scale, out_dtype=jnp.dtype(out_dtype), interpret=interpret)
