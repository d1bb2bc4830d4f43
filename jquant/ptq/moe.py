"""Mixture-of-experts linears in the PTQ pipeline: stacked expert kernels (E, K, N), each expert calibrated on the
tokens routed to it, solved as one stacked program, kept as one stacked `QArray`.

An experts linear is a module owning a (E, K, N) ``kernel`` and called as ``(x (M, K) sorted by expert,
group_sizes (E,))`` -- the ``jax.lax.ragged_dot`` layout (`jquant.ptq.sites.experts_call`). The capture reduces its
input to one Gram matrix per expert (over that expert's rows only) and counts the tokens each expert received. Then
`solve_experts`:

* experts with at least ``min_tokens`` tokens are solved by the method from their own Gram matrix, all of them in
  one vmapped program when the method has ``solve_stacked`` (GPTQ), else one ``solve`` per expert;
* a *starved* expert (fewer tokens; routers leave some experts nearly idle on a small calibration set) gets
  ``fallback="rtn"``: round-to-nearest of its weight (a warning names it), or ``fallback="all_tokens"``: it is solved
  with the Gram matrix pooled over every expert's tokens, i.e. as if all the tokens reaching the layer had been
  routed to it (exact for the experts' first linears, whose input is the same for every expert; for later ones the
  pooled inputs are the other experts' hidden states);
* the report's layer entry lists each expert's token count and what was done (``extra["experts"]``).

At run time `jquant.ops.ragged_qdot` computes the quantized experts (`jquant.ptq.runtime`).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.quantize import quantize
from jquant.core.views import stack_qarrays
from jquant.ops.ragged import ragged_qdot
from jquant.report import sqnr_db as output_sqnr_db

__all__ = ["FALLBACKS", "check_moe_options", "solve_experts", "experts_sqnr"]

FALLBACKS = ("rtn", "all_tokens")


def check_moe_options(min_tokens, fallback) -> None:
  if not isinstance(min_tokens, int) or isinstance(min_tokens, bool) or min_tokens < 0:
    raise ValueError(f"quantize_model: moe_min_tokens must be an int >= 0 (tokens an expert needs to be solved from "
                     f"its own statistics, e.g. 32), got {min_tokens!r}.")
  if fallback not in FALLBACKS:
    raise ValueError(f"quantize_model: moe_fallback must be one of {FALLBACKS} (what starved experts get), got "
                     f"{fallback!r}.")


def _unstack(qa, e: int) -> list:
  return [jax.tree.map(lambda a, i=i: a[i], qa) for i in range(e)]


def _rtn_like(w, spec, template):
  """RTN of one expert, shaped like the solver's slices (an identity ``g_idx`` when they carry one)."""
  q = quantize(w, spec)
  if template.g_idx is not None:
    g = w.shape[0] // template.scale.shape[0]
    q = dataclasses.replace(q, g_idx=(jnp.arange(w.shape[0], dtype=jnp.int32) // g))
  return q


def solve_experts(method, w, stats, path: str, min_tokens: int, fallback: str):
  """Quantizes stacked expert kernels ``w`` (E, K, N) with ``method`` (see the module docstring).

  Returns ``(stacked QArray, loss, extra)`` like ``method.solve``."""
  e = w.shape[0]
  counts = np.asarray(stats.expert_counts, np.int64)
  starved = counts < min_tokens
  grams = stats.gram
  if fallback == "all_tokens" and starved.any():
    grams = jnp.where(jnp.asarray(starved)[:, None, None], jnp.sum(grams, axis=0)[None], grams)
  stacked = getattr(method, "solve_stacked", None)
  res = stacked(w, grams) if stacked is not None else None
  if res is not None:
    qa, losses, extra = res
    slices = _unstack(qa, e)
  else:
    outs = [method.solve(w[i], grams[i]) for i in range(e)]
    slices, losses, extra = [o[0] for o in outs], [o[1] or 0.0 for o in outs], {}
  done = ["solved"] * e
  if starved.any():
    if fallback == "rtn":
      spec = getattr(method, "spec", None)
      if spec is None:
        raise ValueError(f"quantize_model: {path}: experts {np.flatnonzero(starved).tolist()} got fewer than "
                         f"{min_tokens} tokens and {type(method).__name__} has no spec to round them with; use "
                         "moe_fallback='all_tokens' or moe_min_tokens=0.")
      for i in np.flatnonzero(starved):
        slices[i] = _rtn_like(w[i], spec, slices[i])
        done[i] = "rtn (starved)"
    else:
      for i in np.flatnonzero(starved):
        done[i] = "solved on all tokens (starved)"
    warnings.warn(f"quantize_model: {path}: experts {np.flatnonzero(starved).tolist()} received fewer than "
                  f"{min_tokens} calibration tokens ({counts[starved].tolist()}); "
                  f"{'rounded to nearest (RTN)' if fallback == 'rtn' else 'solved with every tokens statistics'}. "
                  "Calibrate on more (or more varied) text to solve them from their own tokens.", RuntimeWarning,
                  stacklevel=3)
  losses = np.asarray(losses, np.float64)
  loss = float(np.sum(np.where(starved & (fallback == "rtn"), 0.0, losses)))
  extra = dict(extra)
  extra["experts"] = [{"expert": i, "tokens": int(counts[i]), "done": done[i]} for i in range(e)]
  return stack_qarrays(slices), loss, extra


def experts_sqnr(fp_kernel, qa, stats) -> float:
  """Output SQNR of quantized experts on the captured token sample (rows sorted by expert)."""
  x = jnp.asarray(stats.sample(), jnp.float32)
  if x.shape[0] == 0:
    return float("nan")
  gs = jnp.asarray(np.bincount(stats.sample_groups(), minlength=fp_kernel.shape[0])[:fp_kernel.shape[0]], jnp.int32)
  return output_sqnr_db(ragged_qdot(x, fp_kernel.astype(jnp.float32), gs), ragged_qdot(x, qa, gs))
