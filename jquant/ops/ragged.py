"""Grouped (ragged) quantized matmul for mixture-of-experts layers: rows of ``x`` sorted by expert, one stacked
(E, K, N) weight, ``group_sizes`` (E,) rows per expert -- `jax.lax.ragged_dot` with a quantized right operand.

XLA path (every backend): per-channel / per-tensor weights multiply ``x`` by the integer codes (minus zero points),
converted exactly to x's dtype inside the grouped GEMM, and scale each output row by its expert's scales afterwards;
group-wise, LUT and act-order weights are dequantized (float32 math, one cast to x's dtype) and fed to
``ragged_dot`` (XLA fuses the dequantize into the program; on GPU / TPU ``ragged_dot`` lowers to a grouped GEMM).
Rows past ``sum(group_sizes)`` give zeros, as in ``ragged_dot``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.granularity import PerChannel, PerTensor
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize, scale_f32

__all__ = ["ragged_qdot", "row_groups"]

_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST


def row_groups(group_sizes: jax.Array, m: int) -> jax.Array:
  """(m,) int32 expert index of each row (``len(group_sizes)`` for rows past the last group)."""
  ends = jnp.cumsum(group_sizes.astype(jnp.int32))
  return jnp.searchsorted(ends, jnp.arange(m, dtype=jnp.int32), side="right").astype(jnp.int32)


def _per_column(qa: QArray) -> bool:
  g = qa.spec.granularity
  per_col = (isinstance(g, PerChannel) and g.axis % qa.ndim == qa.ndim - 1) or isinstance(g, PerTensor)
  return per_col and qa.g_idx is None and not qa.qtype.is_lut and qa.scale.shape[-2] == 1


def _check(x, w, group_sizes) -> None:
  if getattr(x, "ndim", None) != 2:
    raise ValueError(f"ragged_qdot: x must be (M, K) rows sorted by expert, got shape {getattr(x, 'shape', None)}.")
  if getattr(w, "ndim", None) != 3 or w.shape[1] != x.shape[1]:
    raise ValueError(f"ragged_qdot: w must be stacked expert weights (E, K, N) with K = {x.shape[1]} (x's last "
                     f"axis), got shape {getattr(w, 'shape', None)}.")
  gs = getattr(group_sizes, "shape", None)
  if gs is None or tuple(gs) != (w.shape[0],) or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
    raise ValueError(f"ragged_qdot: group_sizes must be an integer array of shape ({w.shape[0]},) (rows per "
                     f"expert), got {getattr(group_sizes, 'dtype', type(group_sizes).__name__)} of shape {gs}.")


def ragged_qdot(x: jax.Array, w, group_sizes: jax.Array, *, out_dtype=None) -> jax.Array:
  """(M, N) = ``x[rows of expert e] @ dequantize(w)[e]`` for every expert ``e``, float32 accumulation.

  Args:
    x: (M, K) activations, rows grouped by expert in order (as ``jax.lax.ragged_dot`` takes them).
    w: a stacked `QArray` (E, K, N) (e.g. from ``quantize_model`` on an MoE layer), or a float (E, K, N) array.
    group_sizes: (E,) integer rows per expert.
    out_dtype: the result's dtype (default: x's floating dtype, float32 for integer x).

  Raises:
    ValueError: shapes that do not fit (x not 2-D, w not (E, K, N), group_sizes not (E,) integers).
  """
  _check(x, w, group_sizes)
  cd = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(_F32)
  out_dtype = cd if out_dtype is None else out_dtype
  x = x.astype(cd)
  gs = group_sizes.astype(jnp.int32)
  if not isinstance(w, QArray):
    return jax.lax.ragged_dot(x, w.astype(cd), gs, precision=_HI, preferred_element_type=_F32).astype(out_dtype)
  if _per_column(w):
    q = w.qvalue.astype(_F32)
    if w.zero_point is not None:
      q = q - w.zero_point.astype(_F32)
    y = jax.lax.ragged_dot(x, q.astype(cd), gs, precision=_HI, preferred_element_type=_F32)
    scale = jnp.broadcast_to(scale_f32(w), (w.shape[0], 1, w.shape[2]))[:, 0, :]          # (E, N)
    rows = row_groups(gs, x.shape[0])
    row_scale = jnp.take(scale, jnp.minimum(rows, w.shape[0] - 1), axis=0)
    return (y * row_scale).astype(out_dtype)
  return jax.lax.ragged_dot(x, dequantize(w, cd), gs, precision=_HI, preferred_element_type=_F32).astype(out_dtype)
