"""LLM.int8() (Dettmers et al. 2022): vector-wise INT8 matmul with mixed-precision outlier decomposition.

As bitsandbytes runs it (``MatMul8bitLt`` with ``threshold=6.0``; note its ``Linear8bitLt`` defaults to 0.0, i.e.
no decomposition):

* the weight is INT8 with one absmax scale per output column over *all* input features (prepared once);
* input elements with ``|x| >= threshold`` are outliers; a feature with any outlier in the batch is an outlier
  column;
* the per-row absmax of x leaves out the outlier *elements* only (other values of outlier columns still count);
  the int8 codes of outlier columns are zeroed, and the int8 x int8 -> int32 product is rescaled by
  ``row_scale x col_scale``;
* the outlier columns of x (original values) are multiplied with the *int8-dequantized* weight rows
  (``outlier_weights="int8"``, bitsandbytes) or with the float weight rows (``"fp"``, the paper's description).

Shapes are static under jit: outlier columns are a (K,) mask, and the outlier product is a masked dense matmul (no
host sync, no data-dependent shapes; it costs one extra float matmul).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jquant.core.quantize import check_float_array
from jquant.core.checks import real_scalar
from jquant.core.qarray import QArray
from jquant.core.ranges import absmax_nan_on_top
from jquant.solvers.smoothquant import check_int8_weight, int8_dot, w8a8_quantize_weight

_HI = jax.lax.Precision.HIGHEST


def llm_int8_prepare(w) -> QArray:
  """The INT8 weight (per-output-column absmax over all input features) of a kernel (K, N); computed once."""
  return w8a8_quantize_weight(w, per_channel=True)


def llm_int8_matmul(x, qw: QArray, *, threshold: float = 6.0, w_fp=None, out_dtype=jnp.float32) -> jax.Array:
  """``x @ w`` the LLM.int8() way.

  Args:
    x: activations (..., K).
    qw: INT8 weight from `llm_int8_prepare`.
    threshold: outlier magnitude (6.0 in the paper); 0 disables the decomposition (plain vector-wise int8).
    w_fp: optional float kernel (K, N); if given, outlier columns use it (the paper's variant) instead of the
      dequantized INT8 weight (bitsandbytes).
    out_dtype: output dtype.

  Returns:
    (..., N) array.

  Raises:
    ValueError: negative threshold, shape mismatches, or a weight that is not a per-channel INT8 QArray.
  """
  x = check_float_array(x, "x")
  if x.ndim < 1:
    raise ValueError("llm_int8_matmul: x must have shape (..., K).")
  check_int8_weight(qw, x.shape[-1], "llm_int8_matmul")
  threshold = real_scalar(threshold, "llm_int8_matmul: threshold")
  if not threshold >= 0:   # also NaN (no element would ever be an outlier)
    raise ValueError(f"llm_int8_matmul: threshold must be a float >= 0 (6.0 in the paper; 0 or inf disable the "
                     f"decomposition), got {threshold!r}.")
  if w_fp is not None:
    w_fp = check_float_array(w_fp, "w_fp")
    if tuple(w_fp.shape) != qw.shape:
      raise ValueError(f"llm_int8_matmul: w_fp has shape {tuple(w_fp.shape)}, expected {qw.shape}.")
  return _matmul(x, qw, w_fp, jnp.float32(threshold), decompose=threshold > 0, out_dtype=jnp.dtype(out_dtype))


@functools.partial(jax.jit, static_argnames=("decompose", "out_dtype"))
def _matmul(x, qw, w_fp, threshold, *, decompose, out_dtype):
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  sw = qw.scale.astype(jnp.float32)                               # (1, N) or (1, 1)
  if decompose:
    outlier = jnp.abs(x2) >= threshold
    cols = jnp.any(outlier, axis=0)                               # (K,) outlier columns
    xm = jnp.where(outlier, 0.0, x2)
  else:
    cols = jnp.zeros((x2.shape[1],), bool)
    xm = x2
  # NaN never counts as an outlier (|NaN| >= t is False), so it stays in xm; the NaN-on-top absmax makes its row's
  # scale NaN and the row's output NaN (a float max on XLA:CPU may drop it and give a finite, wrong row).
  sx = absmax_nan_on_top(xm, axis=1, keepdims=True) / 127.0
  sx = jnp.where(sx == 0, 1.0, jnp.where(jnp.isfinite(sx), sx, jnp.nan))
  xq = jnp.where(cols[None, :], 0.0, jnp.round(xm / sx)).astype(jnp.int8)
  y = int8_dot(xq, qw.qvalue).astype(jnp.float32) * sx * sw
  if decompose:
    w_out = w_fp.astype(jnp.float32) if w_fp is not None else qw.qvalue.astype(jnp.float32) * sw
    y = y + jnp.matmul(jnp.where(cols[None, :], x2, 0.0), w_out, precision=_HI)
  return y.reshape(lead + (qw.shape[1],)).astype(out_dtype)


def llm_int8(x, w, *, threshold: float = 6.0, outlier_weights: str = "int8") -> jax.Array:
  """One-shot ``x @ w`` with LLM.int8(): prepares the INT8 weight and runs `llm_int8_matmul`.

  ``outlier_weights``: ``"int8"`` (bitsandbytes: outlier columns use the dequantized INT8 weight) or ``"fp"`` (the
  paper: they use the float weight). For repeated calls, prepare the weight once with `llm_int8_prepare`.
  """
  if outlier_weights not in ("int8", "fp"):
    raise ValueError(f"llm_int8: outlier_weights must be 'int8' or 'fp', got {outlier_weights!r}.")
  qw = llm_int8_prepare(w)
  return llm_int8_matmul(x, qw, threshold=threshold, w_fp=w if outlier_weights == "fp" else None)
