"""AWQ (Lin et al. 2023): activation-aware per-input-channel scales, then a per-group clip search.

Layout: kernels are Flax (K, N); a scale ``s`` (K,) multiplies kernel rows (``w * s[:, None]``) and divides the
inputs (``x / s``), see `jquant.solvers.folding`. The search follows the reference ``auto_scale`` / ``auto_clip``:

* scales: ``s = clamp(mean|x| ** alpha, 1e-4)``, ``s /= sqrt(max(s) * min(s))`` for ``alpha = i / grid``,
  ``i = 0 .. grid - 1`` (alpha = 1 is not searched; alpha = 0 is plain RTN). Every kernel sharing the input is
  replaced by ``Q(w * s) / s`` and the float32 MSE of the outputs against the float outputs is compared; the first
  minimum wins. The candidates run under ``lax.map`` (vmapped in chunks of ``batch_size``), not a Python loop.
* clip: per group and output column, shrink factors ``p = 1 - k / n_grid`` for ``k < max_shrink * n_grid`` and the
  MSE of the per-group partial products over a strided subsample of at most ~``n_tokens`` tokens (stride
  ``max(T // n_tokens, 1)``, so fewer tokens are fine). ``mode="absmax"`` is the reference: a symmetric clamp to
  ``[-p * amax|w|, p * amax|w|]`` even for an asymmetric grid (it only ever trims the larger side of a group).
  ``mode="minmax"`` shrinks both ends of the asymmetric grid's range, ``[p * min(w, 0), p * max(w, 0)]``: on
  MiniLM AWQ w3 g128 it lifts the mean cosine from 0.894 to 0.905 (w4: 0.969 -> 0.970).

The quantizer is the spec's jq grid. The reference's asymmetric AWQ grid does not force the range to contain 0;
jq's MinMax grid does, so groups of one sign get a coarser grid here (groups that cross 0 are identical).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jquant.core.granularity import PerChannel, PerGroup
from jquant.core.quantize import (check_finite, check_float_array, compute_qparams, dequantize_values,
                                  quantize_with_params)
from jquant.core.spec import QuantSpec

_HI = lax.Precision.HIGHEST


class AWQScales(NamedTuple):
  """Result of `awq_scales`: ``scales`` (K,), the chosen ``alpha`` (scalar) and ``errors`` (grid,) per alpha."""

  scales: jax.Array
  alpha: jax.Array
  errors: jax.Array


class AWQClip(NamedTuple):
  """Result of `awq_clip`: clip bounds ``min_val`` / ``max_val`` (K // G, N) and ``errors`` (K // G, N) at the
  optimum (``min_val == -max_val`` in ``"absmax"`` mode). Apply with ``apply_clip(w, max_val, min_val)``."""

  max_val: jax.Array
  errors: jax.Array
  min_val: jax.Array


def quantize_dequantize(w: jax.Array, spec: QuantSpec) -> jax.Array:
  """Quantize-dequantize ``w`` with ``spec`` in float32 (jq grid, dynamic range); no gradient rule (for QAT's
  straight-through version see `jquant.fake_quant`)."""
  w = w.astype(jnp.float32)
  scale, zp = compute_qparams(w, spec)
  block = spec.granularity.block_shape(w.shape)
  return dequantize_values(quantize_with_params(w, scale, zp, spec.qtype, block), scale, zp, spec.qtype, block)


def _as_kernels(w, what: str) -> tuple[jax.Array, ...]:
  ws = tuple(w) if isinstance(w, (list, tuple)) else (w,)
  if not ws:
    raise ValueError(f"{what}: got an empty list of kernels; pass the (K, N) kernels that share the input.")
  ws = tuple(check_float_array(a, "w") for a in ws)
  k = ws[0].shape[0] if ws[0].ndim == 2 else None
  for a in ws:
    if a.ndim != 2 or a.shape[0] != k:
      raise ValueError(f"{what}: every kernel must be 2-D (K, N) with the same K; got shapes "
                       f"{[tuple(b.shape) for b in ws]}.")
  return ws


def _weight_mean(ws, spec: QuantSpec) -> jax.Array:
  """(K,) mean over output columns of |w| normalised by its group's absmax (AutoAWQ's duo-scaling statistic)."""
  wcat = jnp.concatenate([k.astype(jnp.float32) for k in ws], axis=1)
  kdim = wcat.shape[0]
  g = spec.granularity.size if isinstance(spec.granularity, PerGroup) else kdim
  wa = jnp.abs(wcat).reshape(kdim // g, g, wcat.shape[1])
  wn = wa / (jnp.max(wa, axis=1, keepdims=True) + 1e-6)
  return jnp.mean(wn.reshape(kdim, -1), axis=1)


def _search_scales(ws, act, x, gram, *, spec, grid, batch_size, inspect_fn, duo_scaling=False):
  act = act.astype(jnp.float32)
  w_mean = _weight_mean(ws, spec) if duo_scaling else None
  ratios = jnp.arange(grid, dtype=jnp.float32) / grid

  def outputs(kernels):
    if inspect_fn is not None:
      return inspect_fn(list(kernels), x).astype(jnp.float32)
    return jnp.concatenate([jnp.matmul(x, k, precision=_HI) for k in kernels], axis=-1)

  if x is not None:
    ref = outputs(ws)
  nout = sum(k.shape[1] for k in ws)

  def scales_for(alpha):
    if duo_scaling:
      s = jnp.maximum(act ** alpha / (w_mean ** (1.0 - alpha) + 1e-4), 1e-4)
    else:
      s = jnp.maximum(act ** alpha, 1e-4)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))

  def err_for(alpha):
    s = scales_for(alpha)[:, None]
    wq = tuple(quantize_dequantize(k.astype(jnp.float32) * s, spec) / s for k in ws)
    if gram is not None:     # mean_t ||x_t dW||^2 / N = tr(dW^T E[x x^T] dW) / N: no tokens needed
      d = jnp.concatenate([q - k.astype(jnp.float32) for q, k in zip(wq, ws)], axis=1)
      return jnp.sum(d * jnp.matmul(gram, d, precision=_HI)) / nout
    if x is not None:
      return jnp.mean(jnp.square(outputs(wq) - ref))
    # no calibration inputs: diagonal proxy E[x_k^2] ~ mean|x_k|^2 of the output error
    d2 = sum(jnp.sum(jnp.square(q - k.astype(jnp.float32)), axis=1) for q, k in zip(wq, ws))
    return jnp.sum(jnp.square(act) * d2) / nout

  errs = lax.map(err_for, ratios, batch_size=batch_size)
  best = jnp.argmin(errs)                      # first minimum, as the reference's strict `<`
  return AWQScales(scales=scales_for(ratios[best]), alpha=ratios[best], errors=errs)


_search_scales_jit = jax.jit(_search_scales,
                             static_argnames=("spec", "grid", "batch_size", "inspect_fn", "duo_scaling"))


def awq_scales(w, act_mean_abs, spec: QuantSpec, *, x=None, gram=None, grid: int = 20,
               batch_size: int | None = None, inspect_fn: Callable | None = None,
               duo_scaling: bool = False) -> AWQScales:
  """Searches AWQ's per-input-channel scales for the kernels that share one input.

  Args:
    w: a kernel (K, N) or a list of kernels (K, N_i) reading the same input (e.g. q/k/v, or gate/up).
    act_mean_abs: (K,) mean |x| per input feature over the calibration tokens (not the max).
    spec: the weight QuantSpec the kernels will be quantized with (e.g. UINT4 asymmetric PerGroup(0, 128)).
    x: (T, K) calibration inputs. The objective is the MSE of the outputs ``x @ w`` (concatenated over the list)
      or of ``inspect_fn(kernels, x)``. Without ``x`` a diagonal proxy ``sum_k mean|x_k|^2 ||dW_k||^2`` is used.
    gram: (K, K) second moment ``E[x x^T] = X^T X / T`` of the calibration inputs, instead of ``x``: the same
      output MSE computed without the tokens (what `jquant.ptq.quantize_model` streams). Not with ``inspect_fn``.
    grid: number of alphas, ``alpha = i / grid`` for ``i < grid`` (20 in the reference).
    batch_size: candidates evaluated at once (vmap chunk of ``lax.map``); None evaluates them one at a time, which
      bounds memory to one fake-quantized copy of the kernels.
    inspect_fn: optional ``fn(kernels: list, x) -> output`` standing in for the reference's ``module2inspect`` (a
      whole attention or MLP block); hashable (a module-level function), since it is a static jit argument.
    duo_scaling: AutoAWQ's variant ``s = mean|x|^alpha / (w_mean^(1 - alpha) + 1e-4)``, with ``w_mean`` the mean
      over output columns of ``|w|`` divided by its group's absmax (the llm-awq reference uses ``mean|x|^alpha``).

  Returns:
    `AWQScales` (scales, alpha, errors). Apply with `scale_weight_rows` on every kernel and fold ``1 / s`` into the
    producer of ``x`` (`fold_scales_into_norm` / `fold_scales_into_prev_linear`).

  Raises:
    ValueError: shape mismatches, negative/NaN statistics, NaN inputs, empty ``x``, bad ``grid``, or a spec whose
      granularity does not fit the kernels (e.g. a group size not dividing K).
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"awq_scales: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  ws = _as_kernels(w, "awq_scales")
  k = ws[0].shape[0]
  for a in ws:
    spec.granularity.block_shape(a.shape)      # validates group sizes against K
  act = check_float_array(act_mean_abs, "act_mean_abs")
  if act.shape != (k,):
    raise ValueError(f"awq_scales: act_mean_abs has shape {tuple(act.shape)}, expected ({k},) = one mean |x| per "
                     "input feature.")
  check_finite(act, "act_mean_abs")
  if not isinstance(act, jax.core.Tracer) and float(jnp.min(act)) < 0:
    raise ValueError("awq_scales: act_mean_abs must be >= 0 (a mean of |x|).")
  if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
    raise ValueError(f"awq_scales: grid must be a positive int (20 in the reference), got {grid!r}.")
  if inspect_fn is not None and x is None:
    raise ValueError("awq_scales: inspect_fn needs the calibration inputs x=(T, K) to run the inspected module.")
  if gram is not None:
    if x is not None:
      raise ValueError("awq_scales: pass either x (tokens) or gram (their second moment), not both.")
    gram = _check_gram(gram, k, "awq_scales")
  if x is not None:
    x = check_float_array(x, "x")
    if x.ndim != 2 or x.shape[1] != k:
      raise ValueError(f"awq_scales: x has shape {tuple(x.shape)}, expected (T, {k}); flatten (batch, seq) first.")
    if x.shape[0] == 0:
      raise ValueError("awq_scales: x holds zero calibration tokens; pass at least one (T >= 1).")
    check_finite(x, "x")
    x = x.astype(jnp.float32)
  return _search_scales_jit(ws, act, x, gram, spec=spec, grid=grid, batch_size=batch_size, inspect_fn=inspect_fn,
                            duo_scaling=bool(duo_scaling))


def _check_gram(gram, k: int, what: str) -> jax.Array:
  gram = check_float_array(gram, "gram")
  if gram.shape != (k, k):
    raise ValueError(f"{what}: gram has shape {tuple(gram.shape)}, expected ({k}, {k}) = E[x x^T] over the "
                     "calibration tokens.")
  check_finite(gram, "gram")
  return gram.astype(jnp.float32)


def _clip_group_size(spec: QuantSpec, k: int) -> int:
  g = spec.granularity
  if isinstance(g, PerGroup) and g.axis in (0, -2) and not g.batch_axes:
    spec.granularity.block_shape((k, 1))
    return g.size
  if isinstance(g, PerChannel) and g.axis in (1, -1) and not g.batch_axes:
    return k
  raise ValueError(f"awq_clip: granularity {g} is not supported; use PerGroup(axis=0, size=G) or PerChannel(-1).")


@functools.partial(jax.jit, static_argnames=("gsize", "stride"))
def _token_gram_blocks(x, *, gsize, stride):
  """(G, g, g) diagonal blocks of E[x x^T] over the strided token subsample."""
  xs = x[::stride].astype(jnp.float32)
  xg = xs.reshape(xs.shape[0], xs.shape[1] // gsize, gsize)
  return jnp.einsum("tgi,tgj->gij", xg, xg, precision=_HI) / xs.shape[0]


@functools.partial(jax.jit, static_argnames=("gsize",))
def _gram_blocks(gram, *, gsize):
  ng = gram.shape[0] // gsize
  idx = jnp.arange(ng)
  return gram.reshape(ng, gsize, ng, gsize)[idx, :, idx, :]


@functools.partial(jax.jit, static_argnames=("spec", "gsize", "n_grid", "n_steps", "mode"))
def _search_clip(w, gram, *, spec, gsize, n_grid, n_steps, mode):
  kdim, ndim = w.shape
  ng = kdim // gsize
  w = w.astype(jnp.float32)
  wg = w.reshape(ng, gsize, ndim)
  if mode == "absmax":
    org_max = jnp.max(jnp.abs(wg), axis=1, keepdims=True)                        # (G, 1, N)
    org_min = -org_max
  else:
    org_max = jnp.maximum(jnp.max(wg, axis=1, keepdims=True), 0.0)
    org_min = jnp.minimum(jnp.min(wg, axis=1, keepdims=True), 0.0)

  def err_for(step):
    p = 1.0 - step / n_grid
    cur = jnp.clip(wg, org_min * p, org_max * p).reshape(kdim, ndim)
    d = (quantize_dequantize(cur, spec) - w).reshape(ng, gsize, ndim)
    # mean over tokens of (partial product error)^2 = d^T (X_g^T X_g / T) d per group and column
    return jnp.sum(d * jnp.einsum("gij,gjn->gin", gram, d, precision=_HI), axis=1)   # (G, N)

  errs = lax.map(err_for, jnp.arange(n_steps, dtype=jnp.float32))                  # (steps, G, N)
  best = jnp.argmin(errs, axis=0)                                                   # first minimum per (G, N)
  factor = 1.0 - best.astype(jnp.float32) / n_grid
  return AWQClip(max_val=org_max[:, 0, :] * factor, errors=jnp.min(errs, axis=0), min_val=org_min[:, 0, :] * factor)


def awq_clip(w, x, spec: QuantSpec, *, n_grid: int = 20, max_shrink: float = 0.5, n_tokens: int = 512,
             mode: str = "absmax", gram=None) -> AWQClip:
  """AWQ's clip search for one kernel, run after the scales are applied (pass ``w * s`` and ``x / s``).

  Args:
    w: kernel (K, N).
    x: (T, K) calibration inputs of this kernel, or None with ``gram``.
    spec: the weight QuantSpec (PerGroup(axis=0, size=G) or PerChannel(-1), which is one group of K).
    n_grid: shrink steps of ``1 / n_grid``; ``int(max_shrink * n_grid)`` candidates (10: 1.00 .. 0.55).
    max_shrink: the largest shrink fraction (0.5 in the reference).
    n_tokens: subsample target; tokens ``x[::max(T // n_tokens, 1)]`` are used (any T >= 1 works).
    mode: ``"absmax"`` (the reference: symmetric clamp ``[-p * amax, p * amax]``) or ``"minmax"`` (shrink both ends
      of the range ``[p * min(w, 0), p * max(w, 0)]``, which suits asymmetric grids).
    gram: (K, K) ``E[x x^T]`` of the inputs instead of ``x`` (all tokens, no subsample): the same objective.

  Returns:
    `AWQClip` with ``min_val`` / ``max_val`` (K // G, N); apply with ``apply_clip(w, clip.max_val, clip.min_val)``.

  Raises:
    ValueError: shape mismatches, zero tokens, NaN inputs, bad grid parameters or granularity.
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"awq_clip: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  (w,) = _as_kernels(w, "awq_clip")
  if (x is None) == (gram is None):
    raise ValueError("awq_clip: pass the calibration inputs x=(T, K) or their second moment gram=(K, K) (one).")
  if x is not None:
    x = check_float_array(x, "x")
    if x.ndim != 2 or x.shape[1] != w.shape[0]:
      raise ValueError(f"awq_clip: x has shape {tuple(x.shape)}, expected (T, {w.shape[0]}) for w "
                       f"{tuple(w.shape)}.")
    if x.shape[0] == 0:
      raise ValueError("awq_clip: x holds zero calibration tokens; pass at least one (T >= 1).")
  for name, v, lo in (("n_grid", n_grid, 1), ("n_tokens", n_tokens, 1)):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
      raise ValueError(f"awq_clip: {name} must be a positive int, got {v!r}.")
  if not 0 < max_shrink < 1:
    raise ValueError(f"awq_clip: max_shrink must be in (0, 1) (0.5 in the reference), got {max_shrink!r}.")
  if mode not in ("absmax", "minmax"):
    raise ValueError(f"awq_clip: mode must be 'absmax' (the reference) or 'minmax', got {mode!r}.")
  n_steps = max(int(max_shrink * n_grid), 1)
  gsize = _clip_group_size(spec, w.shape[0])
  check_finite(w, "w")
  if x is not None:
    check_finite(x, "x")
    blocks = _token_gram_blocks(x, gsize=gsize, stride=max(x.shape[0] // n_tokens, 1))
  else:
    blocks = _gram_blocks(_check_gram(gram, w.shape[0], "awq_clip"), gsize=gsize)
  return _search_clip(w, blocks, spec=spec, gsize=gsize, n_grid=n_grid, n_steps=n_steps, mode=mode)


def apply_clip(w, max_val, min_val=None) -> jax.Array:
  """Clamps each group of kernel rows to ``[min_val, max_val]`` (``min_val`` defaults to ``-max_val``); the bounds
  are (K // G, N) from `awq_clip`."""
  w = check_float_array(w, "w")
  max_val = check_float_array(max_val, "max_val")
  min_val = -max_val if min_val is None else check_float_array(min_val, "min_val")
  if w.ndim != 2 or max_val.ndim != 2 or max_val.shape[1] != w.shape[1] or w.shape[0] % max_val.shape[0] \
      or min_val.shape != max_val.shape:
    raise ValueError(f"apply_clip: max_val {tuple(max_val.shape)} / min_val {tuple(min_val.shape)} do not tile w "
                     f"{tuple(w.shape)}; expected (K // G, N) each.")
  g = w.shape[0] // max_val.shape[0]
  hi = jnp.repeat(max_val.astype(jnp.float32), g, axis=0)
  lo = jnp.repeat(min_val.astype(jnp.float32), g, axis=0)
  return jnp.clip(w.astype(jnp.float32), lo, hi).astype(w.dtype)


def act_mean_abs(x) -> jax.Array:
  """mean |x| per input feature over all tokens of ``x`` (..., K): AWQ's activation statistic."""
  x = check_float_array(x, "x")
  if x.size == 0:
    raise ValueError("act_mean_abs: x holds zero tokens.")
  check_finite(x, "x")
  return jnp.mean(jnp.abs(x.reshape(-1, x.shape[-1]).astype(jnp.float32)), axis=0)


