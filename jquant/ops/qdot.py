"""``qdot`` / ``qeinsum``: ``x @ dequantize(w)`` without materialising the float weight where a kernel exists.

Dispatch (STYLE P13): ``implementation=None`` runs the Pallas kernel on a GPU when it supports the inputs, else
XLA; ``"pallas"`` forces the kernel and raises NotImplementedError listing every reason it cannot run;
``"xla"`` forces the XLA path. `pallas_reasons` reports why the kernel would not be used.
"""

from __future__ import annotations

import re
from typing import Literal

import jax
import jax.numpy as jnp

from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.ops import _pallas, _xla
from jquant.core.quantize import scale_f32
from jquant.ops.prepared import PreparedWeight

Implementation = Literal["pallas", "xla"] | None
_IMPLEMENTATIONS = (None, "pallas", "xla")
_QUANT_X = ("int8", "fp8_e4m3", "fp8_e5m2")


def _split_x(x, k: int):
  """(xv (M, K), x_scale (M, 1)/(1, 1) or None, leading shape, default out dtype)."""
  if isinstance(x, QArray):
    if x.qtype.name not in _QUANT_X or x.zero_point is not None or x.g_idx is not None:
      raise ValueError(f"qdot: quantized activations must be symmetric int8 or fp8 without g_idx; got {x!r}. "
                       "Quantize x with jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()).")
    if x.shape[-1] != k:
      raise ValueError(f"qdot: x has {x.shape[-1]} features but w has K={k} (x: {x.shape}).")
    s = scale_f32(x)
    lead = x.shape[:-1]
    if s.size == 1:
      xs = s.reshape(1, 1)
    elif s.shape == (*lead, 1):
      xs = s.reshape(-1, 1)
    else:
      raise ValueError(f"qdot: quantized x needs per-token scales {(*lead, 1)} or one per-tensor scale; got "
                       f"scale shape {s.shape} ({x.spec.granularity}).")
    return x.qvalue.reshape(-1, k), xs, lead, jnp.dtype(x.dtype)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"qdot: x must be a float array or a quantized jq.QArray; got dtype {x.dtype}.")
  if x.ndim < 1 or x.shape[-1] != k:
    raise ValueError(f"qdot: x of shape {x.shape} must end in K={k} features to multiply w of shape (K, N).")
  return x.reshape(-1, k), None, x.shape[:-1], x.dtype


def _check_w(w):
  if not isinstance(w, (QArray, PreparedWeight)):
    raise TypeError(f"qdot: w must be a jq.QArray or a PreparedWeight (jq.ops.prepare), got {type(w).__name__}.")
  if len(w.shape) != 2:
    raise ValueError(f"qdot: w must be a (K, N) weight, got shape {w.shape}; use qeinsum for other layouts.")


def pallas_reasons(x, w: QArray | PreparedWeight, *, out_dtype=None, require_gpu: bool = True) -> tuple[str, ...]:
  """Every reason ``qdot(x, w)`` would not run the Pallas kernel (empty tuple: it would).

  Args:
    x: activations (..., K): float, or a quantized int8 / fp8 QArray.
    w: (K, N) QArray or PreparedWeight.
    out_dtype: the output dtype that would be requested.
    require_gpu: include "no GPU" when JAX's default backend is not a GPU.
  """
  _check_w(w)
  xv, xs, _, default_out = _split_x(x, w.shape[0])
  out = [] if not require_gpu or jax.default_backend() == "gpu" else [
      f"JAX's default backend is {jax.default_backend()!r}, not a GPU"]
  return tuple(out + _pallas.reasons(xv, w, xs, jnp.dtype(out_dtype or default_out)))


def qdot(x, w: QArray | PreparedWeight, *, implementation: Implementation = None, out_dtype=None,
         interpret: bool = False) -> jax.Array:
  """Computes ``x @ dequantize(w)`` with float32 accumulation.

  Args:
    x: activations (..., K), float; or a quantized int8 / fp8 `QArray` (per-token or per-tensor scales) for the
      W8A8 / FP8 path (then ``w`` must be int8 / fp8 per-channel).
    w: quantized weight of logical shape (K, N) (Flax layout), or its `prepare`d kernel layout.
    implementation: None (Pallas on GPU when supported, else XLA), ``"pallas"`` or ``"xla"``.
    out_dtype: result dtype; defaults to x's (original) dtype. The int4 kernel rounds to x's dtype first.
    interpret: run the Pallas kernel in interpret mode (testing on CPU; only with ``"pallas"``).

  Returns:
    (..., N) array of ``out_dtype``.

  Raises:
    TypeError, ValueError: bad inputs (wrong types, K mismatch, unknown implementation).
    NotImplementedError: ``implementation="pallas"`` and the kernel cannot run; lists every reason.
  """
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"qdot: implementation={implementation!r}; expected None, 'pallas' or 'xla'.")
  _check_w(w)
  xv, xs, lead, default_out = _split_x(x, w.shape[0])
  out_dtype = jnp.dtype(out_dtype or default_out)
  use_pallas = implementation == "pallas"
  if implementation is None and jax.default_backend() == "gpu":
    use_pallas = not _pallas.reasons(xv, w, xs, out_dtype)
  if use_pallas:
    if implementation == "pallas" and (why := _pallas.reasons(xv, w, xs, out_dtype)):
      raise NotImplementedError(f"qdot(implementation='pallas'): no kernel for x{tuple(xv.shape)} @ {w!r}: "
                                + "; ".join(why) + ". Use implementation=None or 'xla' for the XLA fallback.")
    out = _pallas.run(xv, w, xs, out_dtype, interpret=interpret)
  elif xs is None:
    out = _xla.qdot_xla(xv, w)
  else:
    out = _xla.qdot_xla_quantized(xv, xs, w)
  return out.astype(out_dtype).reshape(*lead, w.shape[1])


def qmatmul(x: jax.Array, w) -> jax.Array:
  """``x @ w`` for a float (K, N) ``w`` (float32-accurate: precision HIGHEST); `qdot` for a QArray / PreparedWeight.

  The one matmul of a linear layer whose kernel may or may not be quantized (models, the PTQ runtime).
  """
  if isinstance(w, (QArray, PreparedWeight)):
    return qdot(x, w)
  return jnp.matmul(x, jnp.asarray(w).astype(x.dtype), precision=jax.lax.Precision.HIGHEST)


_SIMPLE = re.compile(r"^(\.\.\.)?([a-zA-Z]*),([a-zA-Z])([a-zA-Z])->(\.\.\.)?([a-zA-Z]*)$")


def qeinsum(subscripts: str, x, w: QArray | PreparedWeight, *, implementation: Implementation = None,
            out_dtype=None, interpret: bool = False) -> jax.Array:
  """Einsum of activations with a quantized (K, N) weight.

  Contractions of x's last axis with w's first axis that keep the order of the other axes
  (``"...k,kn->...n"``, ``"btk,kn->btn"``) go through `qdot` (and its kernels); any other subscripts run
  ``jnp.einsum`` on the dequantized weight with XLA.

  Args:
    subscripts: explicit einsum string with ``->``, two operands, the second of rank 2.
    x: float activations (or a quantized QArray for the simple form).
    w: (K, N) QArray or PreparedWeight.
    implementation, out_dtype, interpret: as in `qdot`.

  Raises:
    ValueError: malformed subscripts.
    NotImplementedError: ``implementation="pallas"`` with subscripts that are not a plain ``x @ w``.
  """
  _check_w(w)
  s = subscripts.replace(" ", "")
  m = _SIMPLE.match(s)
  if m is None:
    raise ValueError(f"qeinsum: subscripts {subscripts!r} must look like 'LHS,kn->OUT' with an explicit output "
                     "and a rank-2 weight, e.g. '...k,kn->...n'.")
  ell_in, lhs, k, n, ell_out, out = m.groups()
  if lhs and lhs[-1] == k and k not in out and ell_in == ell_out and out == lhs[:-1] + n:
    return qdot(x, w, implementation=implementation, out_dtype=out_dtype, interpret=interpret)
  if implementation == "pallas":
    raise NotImplementedError(f"qeinsum(implementation='pallas'): {subscripts!r} is not a contraction of x's last "
                              "axis with w's first; only that form has a kernel. Use implementation=None.")
  if isinstance(x, QArray):
    x = dequantize(x)
  w_deq = _xla.dequantize_any(w, jnp.asarray(x).dtype)
  res = jnp.einsum(s, x, w_deq, preferred_element_type=jnp.float32)
  return res.astype(jnp.dtype(out_dtype or jnp.asarray(x).dtype))
