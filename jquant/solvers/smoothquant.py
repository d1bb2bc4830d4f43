"""SmoothQuant (Xiao et al. 2022): migrate activation outliers into the weights, then W8A8.

``s_j = max|x_j| ** alpha / max|W_j| ** (1 - alpha)`` per input feature j, with ``max|W_j|`` over every kernel that
reads the input (clamped to 1e-5) and ``s`` clamped to 1e-5, as in the reference ``smooth_ln_fcs``. Then
``x / s`` goes into the producer (`fold_scales_into_norm`) and ``s`` into the kernel rows (`scale_weight_rows`).

W8A8 numerics (`w8a8_matmul`): symmetric absmax INT8 with scale ``absmax / 127``; weights per output channel (or per
tensor), activations per token or per tensor, dynamic (computed from ``x``) or static (a calibrated scale; values
are clipped to [-127, 127]). The product runs as an int8 x int8 -> int32 dot, rescaled by the outer product of the
scales.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jquant.core.granularity import PerChannel, PerTensor
from jquant.core.qarray import QArray
from jquant.core.qtypes import INT8
from jquant.core.quantize import check_finite, check_float_array, quantize
from jquant.core.checks import real_scalar
from jquant.core.ranges import F32_TINY as _F32_TINY
from jquant.core.ranges import absmax_nan_on_top
from jquant.core.spec import QuantSpec

_ACT_MODES = ("per_token", "per_tensor")


def weight_absmax(kernels: Sequence) -> jax.Array:
  """max |W| per input feature over every kernel (K, N_i) that shares the input: shape (K,)."""
  ks = tuple(kernels) if isinstance(kernels, (list, tuple)) else (kernels,)
  if not ks:
    raise ValueError("weight_absmax: got no kernels; pass the (K, N) kernels that read the smoothed input.")
  ks = tuple(check_float_array(k, "kernel") for k in ks)
  if any(k.ndim != 2 or k.shape[0] != ks[0].shape[0] for k in ks):
    raise ValueError(f"weight_absmax: kernels must be (K, N_i) with one K; got {[tuple(k.shape) for k in ks]}.")
  return jnp.max(jnp.stack([jnp.max(jnp.abs(k.astype(jnp.float32)), axis=1) for k in ks]), axis=0)


def smoothquant_scales(act_absmax, w_absmax, alpha: float = 0.5) -> jax.Array:
  """SmoothQuant migration scales.

  Args:
    act_absmax: (K,) running max |x| per input feature over the calibration tokens.
    w_absmax: (K,) max |W| per input feature over all kernels sharing the input (`weight_absmax`).
    alpha: migration strength in [0, 1] (0.5 OPT/BLOOM, 0.8 LLaMA, 0.85 Llama-2/3).

  Returns:
    s (K,) float32, ``clamp(act ** alpha / clamp(w, 1e-5) ** (1 - alpha), 1e-5)``.

  Raises:
    ValueError: shape mismatch, negative or NaN statistics, alpha outside [0, 1].
  """
  a = check_float_array(act_absmax, "act_absmax")
  w = check_float_array(w_absmax, "w_absmax")
  if a.ndim != 1 or a.shape != w.shape:
    raise ValueError(f"smoothquant_scales: act_absmax {tuple(a.shape)} and w_absmax {tuple(w.shape)} must both be "
                     "(K,), one value per input feature.")
  if a.shape[0] == 0:
    raise ValueError("smoothquant_scales: got K=0 input features; pass one statistic per input feature.")
  alpha = real_scalar(alpha, "smoothquant_scales: alpha")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"smoothquant_scales: alpha must be in [0, 1], got {alpha!r}.")
  for name, v in (("act_absmax", a), ("w_absmax", w)):
    check_finite(v, name)
    if not isinstance(v, jax.core.Tracer) and float(jnp.min(v)) < 0:
      raise ValueError(f"smoothquant_scales: {name} must be >= 0 (a max of |values|).")
  return _scales(a.astype(jnp.float32), w.astype(jnp.float32), jnp.float32(alpha))


@jax.jit
def _scales(a, w, alpha):
  w = jnp.maximum(w, 1e-5)
  return jnp.maximum(a ** alpha / w ** (1.0 - alpha), 1e-5)


def w8a8_weight_spec(per_channel: bool = True) -> QuantSpec:
  """The INT8 weight grid `w8a8_matmul` runs: symmetric absmax, one scale per output column (or per tensor)."""
  return QuantSpec(qtype=INT8, granularity=PerChannel(axis=-1) if per_channel else PerTensor(), symmetric=True)


def w8a8_quantize_weight(w, *, per_channel: bool = True) -> QArray:
  """INT8 symmetric absmax weights: one scale per output column (``per_channel``) or one per tensor."""
  w = check_float_array(w, "w")
  if w.ndim != 2:
    raise ValueError(f"w8a8_quantize_weight: w must be a kernel (K, N), got shape {tuple(w.shape)}.")
  return quantize(w, w8a8_weight_spec(per_channel))


def quantize_activations_int8(x: jax.Array, act: str, act_scale=None):
  """(int8 codes, float32 scale of shape (T, 1) or (1, 1)) for activations x (T, K), symmetric absmax / 127."""
  # absmax_nan_on_top: a NaN/inf in a row gives that row a non-finite absmax (XLA:CPU's float max may drop NaN),
  # whose scale then makes the row's output non-finite instead of a finite product of saturated codes.
  if act_scale is not None:
    s = jnp.reshape(jnp.asarray(act_scale, jnp.float32), (1, 1))
    row_ok = jnp.isfinite(absmax_nan_on_top(x, axis=-1, keepdims=True))   # static scale: one cheap row pass
    s = jnp.where(row_ok, s, jnp.nan)
  elif act == "per_token":
    s = absmax_nan_on_top(x, axis=-1, keepdims=True) / 127.0
  else:
    s = absmax_nan_on_top(x).reshape(1, 1) / 127.0
  s = jnp.where(s == 0, 1.0, jnp.where(jnp.isfinite(s), s, jnp.nan))
  return jnp.clip(jnp.round(x / s), -127, 127).astype(jnp.int8), s


def int8_dot(xq: jax.Array, wq: jax.Array) -> jax.Array:
  """int8 (T, K) x int8 (K, N) -> int32 (T, N)."""
  return lax.dot_general(xq, wq, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)


def check_int8_weight(qw, k: int, what: str) -> None:
  if not isinstance(qw, QArray) or qw.qtype != INT8 or qw.zero_point is not None or qw.g_idx is not None:
    raise ValueError(f"{what}: expected a symmetric INT8 QArray from w8a8_quantize_weight / llm_int8_prepare, got "
                     f"{qw!r}.")
  if qw.ndim != 2 or qw.shape[0] != k or qw.scale.shape[0] != 1:
    raise ValueError(f"{what}: weight {qw.shape} (scale {tuple(qw.scale.shape)}) does not match inputs with K={k}; "
                     "expected a (K, N) kernel with per-channel or per-tensor scales.")


def w8a8_matmul(x, qw: QArray, *, act: str = "per_token", act_scale=None, out_dtype=jnp.float32) -> jax.Array:
  """``x @ w`` with INT8 activations and INT8 weights (int32 accumulation).

  Args:
    x: activations (..., K).
    qw: weight from `w8a8_quantize_weight` (per-channel or per-tensor).
    act: ``"per_token"`` (dynamic, one scale per row) or ``"per_tensor"`` (dynamic, one scale).
    act_scale: a static per-tensor scale (calibrated absmax / 127); overrides ``act``.
    out_dtype: output dtype.

  Returns:
    (..., N) array.
  """
  x = check_float_array(x, "x")
  if act not in _ACT_MODES:
    raise ValueError(f"w8a8_matmul: act must be one of {_ACT_MODES}, got {act!r}.")
  if x.ndim < 1:
    raise ValueError("w8a8_matmul: x must have shape (..., K).")
  check_int8_weight(qw, x.shape[-1], "w8a8_matmul")
  if act_scale is not None:
    act_scale = jnp.asarray(act_scale, jnp.float32)
    if act_scale.size != 1:
      raise ValueError(f"w8a8_matmul: act_scale must be a scalar (per-tensor static), got shape {act_scale.shape}.")
    if not isinstance(act_scale, jax.core.Tracer):
      v = float(act_scale.reshape(()))
      if not (np.isfinite(v) and v >= _F32_TINY):
        raise ValueError(f"w8a8_matmul: act_scale={v!r} must be a finite positive scale (calibrated absmax / 127, "
                         f">= {_F32_TINY:.3g}); a zero or negative scale gives wrong outputs.")
  return _w8a8(x, qw, act_scale, act=act, out_dtype=jnp.dtype(out_dtype))


@functools.partial(jax.jit, static_argnames=("act", "out_dtype"))
def _w8a8(x, qw, act_scale, *, act, out_dtype):
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  xq, sx = quantize_activations_int8(x2, act, act_scale)
  acc = int8_dot(xq, qw.qvalue)
  y = acc.astype(jnp.float32) * sx * qw.scale.astype(jnp.float32)
  return y.reshape(lead + (qw.shape[1],)).astype(out_dtype)
