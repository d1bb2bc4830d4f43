"""ZeroQuant-style W8A8 / W4A8 (Yao et al. 2022): group-wise symmetric weights + per-token dynamic INT8 activations.

Weights: symmetric absmax, one scale per group of ``group_size`` input features and output column
(``PerGroup(axis=0, size=G)``). Activations: one absmax / 127 scale per token, computed on the fly. Since the
weight scale changes along K, the product is an int8 x int8 -> int32 dot *per group*, each rescaled by its weight
scales, summed over the groups and multiplied by the token scale.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jquant.core.granularity import PerGroup
from jquant.core.qarray import QArray
from jquant.core.qtypes import INT4, INT8, QType
from jquant.core.quantize import check_float_array, quantize
from jquant.core.spec import QuantSpec
from jquant.solvers.smoothquant import quantize_activations_int8


def zeroquant_spec(qtype: QType = INT8, group_size: int = 128) -> QuantSpec:
  """The ZeroQuant weight spec: symmetric ``qtype`` (INT8 or INT4), groups of ``group_size`` input features."""
  if qtype not in (INT8, INT4):
    raise ValueError(f"zeroquant_spec: qtype must be jq.INT8 or jq.INT4, got {qtype!r}.")
  return QuantSpec(qtype=qtype, granularity=PerGroup(axis=0, size=group_size), symmetric=True)


def zeroquant_quantize_weight(w, *, qtype: QType = INT8, group_size: int = 128) -> QArray:
  """Group-wise symmetric weight (K, N) -> QArray with scale (K // group_size, N)."""
  w = check_float_array(w, "w")
  if w.ndim != 2:
    raise ValueError(f"zeroquant_quantize_weight: w must be a kernel (K, N), got shape {tuple(w.shape)}.")
  return quantize(w, zeroquant_spec(qtype, group_size))


def zeroquant_matmul(x, qw: QArray, *, out_dtype=jnp.float32) -> jax.Array:
  """``x @ w`` with per-token dynamic INT8 activations and a group-wise INT8/INT4 weight (int32 accumulation).

  Args:
    x: activations (..., K).
    qw: weight from `zeroquant_quantize_weight`.

  Returns:
    (..., N) array.
  """
  x = check_float_array(x, "x")
  if not isinstance(qw, QArray) or qw.qtype not in (INT8, INT4) or qw.zero_point is not None or qw.g_idx is not None \
      or not isinstance(qw.spec.granularity, PerGroup) or qw.ndim != 2:
    raise ValueError(f"zeroquant_matmul: expected a symmetric group-wise INT8/INT4 QArray from "
                     f"zeroquant_quantize_weight, got {qw!r}.")
  if x.ndim < 1 or x.shape[-1] != qw.shape[0]:
    raise ValueError(f"zeroquant_matmul: x has shape {tuple(x.shape)}, expected (..., {qw.shape[0]}).")
  return _matmul(x, qw, out_dtype=jnp.dtype(out_dtype))


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def _matmul(x, qw, *, out_dtype):
  lead = x.shape[:-1]
  kdim, ndim = qw.shape
  ng = qw.scale.shape[0]
  g = kdim // ng
  x2 = x.reshape(-1, kdim).astype(jnp.float32)
  xq, sx = quantize_activations_int8(x2, "per_token")
  xg = xq.reshape(-1, ng, g).transpose(1, 0, 2)                              # (G, T, g)
  wg = qw.qvalue.astype(jnp.int8).reshape(ng, g, ndim)                       # (G, g, N)
  acc = lax.dot_general(xg, wg, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.int32)   # (G, T, N)
  y = jnp.sum(acc.astype(jnp.float32) * qw.scale.astype(jnp.float32)[:, None, :], axis=0) * sx
  return y.reshape(lead + (ndim,)).astype(out_dtype)
