"""The report's numbers, defined once: SQNR in float64 on the host, the storage bytes of a tree, a layer's output.

`sqnr_db` is what every report prints (per-leaf, per-layer, checkpoint); `jq.sqnr` is the jittable float32 metric
for use inside traced code. `tree_nbytes` counts QArray leaves packed (``QArray.nbytes``) and works on abstract
trees (``jax.eval_shape``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.ops import qmatmul

__all__ = ["energies", "layer_output", "layer_sqnr", "sqnr_db", "sqnr_from_energies", "tree_nbytes"]


def energies(ref, approx) -> tuple[float, float]:
  """``(sum ref^2, sum (ref - approx)^2)`` in float64: the two sums of `sqnr_db`, to accumulate over batches."""
  r = np.asarray(ref, np.float64)
  a = np.asarray(approx, np.float64)
  return float(np.sum(r ** 2)), float(np.sum((r - a) ** 2))


def sqnr_from_energies(signal: float, noise: float) -> float:
  """``10 log10(signal / noise)``; inf when the noise is 0, NaN when either is NaN."""
  if math.isnan(signal) or math.isnan(noise):
    return float("nan")
  if noise == 0.0:
    return float("inf")
  return 10.0 * math.log10(max(signal, 1e-300) / noise)


def sqnr_db(ref, approx) -> float:
  """``10 log10(sum ref^2 / sum (ref - approx)^2)`` in float64; inf when they are equal."""
  return sqnr_from_energies(*energies(ref, approx))


def tree_nbytes(tree: Any) -> int:
  """Storage bytes of a params tree: QArray leaves count packed (``QArray.nbytes``), other arrays
  ``size * itemsize``. Works on abstract trees (``jax.eval_shape``) too."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, QArray)):
    total += leaf.nbytes if isinstance(leaf, QArray) else math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def layer_output(leaves: dict, x, matmul=None) -> jax.Array:
  """A linear's output from its leaves (``kernel`` (K, N), optional ``input_scale``, ``bias``) on ``x`` (..., K):
  ``matmul(x * input_scale, kernel) + bias`` (`jquant.ops.qmatmul` by default: QArray kernels through qdot)."""
  if "input_scale" in leaves:
    x = x * leaves["input_scale"].astype(x.dtype)
  y = (matmul or qmatmul)(x, leaves["kernel"])
  if "bias" in leaves:
    y = y + leaves["bias"].astype(y.dtype)
  return y


def layer_sqnr(fp_leaves, q_leaves, x, in_div=None, out_div=None, matmul=None, ref_out_div=None) -> float:
  """Output SQNR of the quantized layer (inputs ``x / in_div``, outputs ``* out_div``) vs the float layer on ``x``
  (outputs ``* ref_out_div``: when ``fp_leaves`` are the scaled float layer, both sides in float coordinates)."""
  x = jnp.asarray(x, jnp.float32)
  if x.shape[0] == 0:
    return float("nan")
  ref = layer_output(fp_leaves, x)
  yq = layer_output(q_leaves, x / in_div if in_div is not None else x, matmul)
  if out_div is not None:
    yq = yq * out_div
  if ref_out_div is not None:
    ref = ref * ref_out_div
  return sqnr_db(ref, yq)
