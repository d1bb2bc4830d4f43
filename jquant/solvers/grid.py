"""Range search for weight grids: each group's (scale, zero point) from candidate ranges ``r * (min, max)``.

Three grids, named as on the command line (``--grid``):

* ``"minmax"``: the spec's own calibration (``jq.MinMax`` by default): no search.
* ``"mse"``: the ``jq.MSE`` search of each group: the candidate with the least ``sum (Q(w) - w)^2``.
* ``"imatrix"``: the same search with every input feature's error weighted by its importance, the mean square
  activation ``E[x_k^2]`` of that input (llama.cpp's "importance matrix", llm-compressor's ``imatrix`` observer):
  ``sum_k imp_k (Q(w)_kn - w_kn)^2``. It is the diagonal of the layer's output error ``dw^T (X^T X) dw``, so the
  importance is ``diag(X^T X)`` (the Gram matrix the PTQ pipeline streams), normalised to mean 1.

Deviation from llm-compressor: the error is squared (norm 2: the output-error diagonal) instead of its ``|.|^3``,
so the same `jquant.core.ranges` search serves both grids; the default candidates are the ``--grid mse`` ones
(40 shrink factors 1.0 .. 0.6) rather than 20 factors 1.0 .. 0.05.

The search runs the candidates as one vmap (chunked for memory) and takes the argmin. GPTQ uses the same search
for its group params (``gptq(..., importance=)``), on the error-fed weights as each group starts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.calibration_methods import MSE
from jquant.core.qarray import QArray
from jquant.core.quantize import check_float_array, compute_qparams, quantize
from jquant.core.spec import QuantSpec

__all__ = ["DEFAULT_SEARCH", "GRIDS", "check_importance", "grid_qparams", "grid_quantize", "grid_spec",
           "importance_from_gram"]

GRIDS = ("minmax", "mse", "imatrix")
DEFAULT_SEARCH = MSE(grid=40, min_ratio=0.6)


def check_grid(grid, search, what: str) -> None:
  """ValueError / TypeError for a grid name or search config that is not usable."""
  if grid not in GRIDS:
    raise ValueError(f"{what}: grid must be one of {GRIDS}, got {grid!r}.")
  if search is not None and not isinstance(search, MSE):
    raise TypeError(f"{what}: search must be a jq.MSE(grid=..., min_ratio=...) or None (the default "
                    f"{DEFAULT_SEARCH}), got {type(search).__name__}.")


def grid_spec(spec: QuantSpec, grid: str, search: MSE | None = None) -> QuantSpec:
  """The spec whose calibration runs ``grid``: ``spec`` itself for "minmax", else its MSE search (``search``, or the
  spec's own ``MSE`` calibration, or `DEFAULT_SEARCH`)."""
  check_grid(grid, search, "grid_spec")
  if grid == "minmax":
    return spec
  if search is None:
    search = spec.calibration if isinstance(spec.calibration, MSE) else DEFAULT_SEARCH
  return spec.replace(calibration=search)


@jax.jit
def _diag_stats(gram):
  d = jnp.diagonal(gram).astype(jnp.float32)
  return d, jnp.all(jnp.isfinite(d)) & jnp.all(d >= 0) & (jnp.sum(d) > 0)


def importance_from_gram(gram) -> tuple[jax.Array | None, str | None]:
  """``(imp, note)``: ``diag(gram) / mean(diag(gram))``, or ``(None, why)`` when the diagonal is not finite,
  negative or all zero (the caller then searches with uniform weights and reports ``why``)."""
  d, ok = _diag_stats(gram)
  if not bool(ok):
    return None, ("imatrix: the activation second moments are not finite and positive (no calibration tokens "
                  "reached this layer?); searched with uniform weights (the mse grid)")
  return d / jnp.mean(d), None


def check_importance(importance, k: int, what: str):
  """The importance as float32 (K,), or ValueError naming what is wrong with it."""
  imp = check_float_array(importance, "importance")
  if imp.shape != (k,):
    raise ValueError(f"{what}: importance must have shape (K,) = ({k},) (one weight per input feature of the (K, N) "
                     f"kernel), got {tuple(imp.shape)}.")
  if not isinstance(imp, jax.core.Tracer):
    v = np.asarray(imp, np.float64)
    if not (np.isfinite(v).all() and (v >= 0).all() and v.sum() > 0):
      raise ValueError(f"{what}: importance must be finite, >= 0 and not all zero (e.g. the diagonal of the inputs' "
                       f"Gram matrix); got min {v[np.isfinite(v)].min() if np.isfinite(v).any() else math.nan!r} with "
                       f"{int((~np.isfinite(v)).sum())} non-finite entries.")
  return imp.astype(jnp.float32)


def _check(w, spec, grid, what):
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"{what}: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  w = check_float_array(w, "w")
  if w.ndim != 2:
    raise ValueError(f"{what}: w must be a (K, N) kernel, got shape {tuple(w.shape)}.")
  if grid != "minmax" and not spec.qtype.is_int:
    raise ValueError(f"{what}: the {grid!r} range search needs an integer qtype, got {spec.qtype.name}.")
  return w


def grid_qparams(w, spec: QuantSpec, grid: str = "imatrix", importance=None, search: MSE | None = None):
  """Per-group ``(scale, zero_point)`` of the (K, N) kernel ``w`` chosen by ``grid``.

  Args:
    w: float kernel (K, N).
    spec: the weight spec (integer qtype; groups along K, per channel or per tensor).
    grid: "minmax", "mse" or "imatrix".
    importance: (K,) per-input-feature weights for "imatrix" (e.g. ``diag(X^T X)``); required there, ignored
      (must be None) otherwise.
    search: the candidate ranges (a ``jq.MSE``); default `DEFAULT_SEARCH`.

  Returns:
    float32 ``(scale, zero_point)`` of ``spec.granularity.scale_shape(w.shape)`` (zero_point None if symmetric).
  """
  check_grid(grid, search, "grid_qparams")
  w = _check(w, spec, grid, "grid_qparams")
  if grid == "imatrix":
    if importance is None:
      raise ValueError("grid_qparams: the 'imatrix' grid needs importance= (K,) (e.g. diag of the Gram matrix of "
                       "the layer's inputs); use grid='mse' for the unweighted search.")
    imp = check_importance(importance, w.shape[0], "grid_qparams")[:, None]
  elif importance is not None:
    raise ValueError(f"grid_qparams: importance is only used by the 'imatrix' grid, got grid={grid!r}.")
  else:
    imp = None
  return compute_qparams(w, grid_spec(spec, grid, search), imp)


def grid_quantize(w, spec: QuantSpec, grid: str = "imatrix", importance=None, search: MSE | None = None) -> QArray:
  """``w`` quantized on the ranges `grid_qparams` picks (a plain per-group QArray of ``spec``)."""
  scale, zp = grid_qparams(w, spec, grid, importance, search)
  return quantize(w, spec, scale=scale, zero_point=zp)
