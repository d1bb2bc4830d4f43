"""Exact folding of per-input-channel scales ``s`` (AWQ, SmoothQuant) into neighbouring parameters.

A linear ``y = x @ w`` with a per-feature scale: ``x @ w == (x / s) @ (s[:, None] * w)``. The ``1 / s`` goes into
whatever produces ``x`` (a norm's scale/bias, or a previous linear's output columns), the ``s`` into the rows of
every kernel that reads ``x``. All three helpers are exact up to float rounding and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.quantize import check_float_array


def check_scales(s, k: int, what: str) -> jax.Array:
  """``s`` as a float array of shape (k,), strictly positive and finite when concrete."""
  s = check_float_array(s, "s")
  if s.ndim != 1 or s.shape[0] != k:
    raise ValueError(f"{what}: scales s have shape {tuple(s.shape)}, expected ({k},) (one per input feature of "
                     f"the scaled linear).")
  if not isinstance(s, jax.core.Tracer):
    a = np.asarray(jax.device_get(s), np.float64)
    if not (np.isfinite(a).all() and (a > 0).all()):
      raise ValueError(f"{what}: scales must be finite and > 0 (got min {a.min():.3g}); AWQ / SmoothQuant scales "
                       "are clamped to >= 1e-4 / 1e-5.")
  return s


def fold_scales_into_norm(norm_scale, norm_bias, s):
  """Divides a (Layer/RMS)Norm's scale and bias by ``s``, so its output is ``x / s``.

  Args:
    norm_scale: (K,) norm weight.
    norm_bias: (K,) norm bias, or None (RMSNorm).
    s: (K,) positive scales.

  Returns:
    ``(norm_scale / s, norm_bias / s or None)`` in the dtypes of the inputs.
  """
  norm_scale = check_float_array(norm_scale, "norm_scale")
  if norm_scale.ndim != 1:
    raise ValueError(f"fold_scales_into_norm: norm_scale must be (K,), got shape {tuple(norm_scale.shape)}.")
  s = check_scales(s, norm_scale.shape[0], "fold_scales_into_norm")
  out_scale = (norm_scale.astype(jnp.float32) / s).astype(norm_scale.dtype)
  if norm_bias is None:
    return out_scale, None
  norm_bias = check_float_array(norm_bias, "norm_bias")
  if norm_bias.shape != norm_scale.shape:
    raise ValueError(f"fold_scales_into_norm: norm_bias shape {tuple(norm_bias.shape)} != norm_scale shape "
                     f"{tuple(norm_scale.shape)}.")
  return out_scale, (norm_bias.astype(jnp.float32) / s).astype(norm_bias.dtype)


def fold_scales_into_prev_linear(w_prev, b_prev, s):
  """Divides the output columns of the previous linear (kernel (K_prev, K), bias (K,)) by ``s``.

  Exact when only a positively homogeneous function (identity, ReLU) sits between the two linears, or when the
  previous linear feeds the next one directly (AWQ's v_proj -> o_proj, fc1 -> fc2 through ReLU).

  Returns:
    ``(w_prev / s[None, :], b_prev / s or None)``.
  """
  w_prev = check_float_array(w_prev, "w_prev")
  if w_prev.ndim != 2:
    raise ValueError(f"fold_scales_into_prev_linear: w_prev must be a kernel (K_prev, K), got {tuple(w_prev.shape)}.")
  s = check_scales(s, w_prev.shape[1], "fold_scales_into_prev_linear")
  w_out = (w_prev.astype(jnp.float32) / s[None, :]).astype(w_prev.dtype)
  if b_prev is None:
    return w_out, None
  b_prev = check_float_array(b_prev, "b_prev")
  if b_prev.shape != (w_prev.shape[1],):
    raise ValueError(f"fold_scales_into_prev_linear: b_prev has shape {tuple(b_prev.shape)}, expected "
                     f"({w_prev.shape[1]},).")
  return w_out, (b_prev.astype(jnp.float32) / s).astype(b_prev.dtype)


def scale_weight_rows(w, s):
  """Multiplies the input rows of a kernel (K, N) by ``s``: ``w * s[:, None]``."""
  w = check_float_array(w, "w")
  if w.ndim != 2:
    raise ValueError(f"scale_weight_rows: w must be a kernel (K, N), got shape {tuple(w.shape)}.")
  s = check_scales(s, w.shape[0], "scale_weight_rows")
  return (w.astype(jnp.float32) * s[:, None]).astype(w.dtype)
