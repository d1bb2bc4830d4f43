"""HQQ (Badri & Shaji 2023, "Half-Quadratic Quantization"): a data-free solver for each group's zero point.

The weight is quantized as ``q = clip(round(w / s + z), qmin, qmax)``; the zero point ``z`` minimises an ``l_p``
(p < 1) norm of the error ``w - (q - z) s``, which is robust to the few outlier weights of a group, by
half-quadratic splitting (the reference's ``optimize_weights_proximal_v2``, written with ``s`` the step rather than
its inverse)::

    repeat iters times (or until the mean |w - w_r| over the whole tensor stops decreasing):
      q   = clip(round(w / s + z), qmin, qmax);   w_r = (q - z) s
      w_e = shrink_p(w - w_r, beta)                shrink_p(x) = sign(x) relu(|x| - |x|^(p-1) / beta)
      z   = mean_group(q - (w - w_e) / s)          (reference)   |   round + clip to [qmin, qmax]   (jquant)
      s   = <w - w_e, q - z> / <q - z, q - z>      (jquant only: least squares, per group)
      beta *= kappa

Defaults as the reference: p = 0.7, beta = 10, kappa = 1.01, 20 iterations, early stop. The reference keeps ``z`` a
float and ``s`` at the group's min/max step. jquant's asymmetric grid stores an integer zero point (so that 0.0 is
exact), and rounding the reference's solved ``z`` afterwards loses its whole gain (measured on Student-t weights,
g64: w4 MSE 11.43 RTN -> 10.19 float z -> 11.46 rounded z). So jquant's solver keeps ``z`` on the integer grid in
every iteration and fits the step ``s`` against the same proximal target instead (the same weights: w4 10.78,
w3 51.2 -> 43.2, w2 223 -> 145). ``integer_zero=False`` runs the reference iteration (float ``z``, fixed ``s``),
for comparison; its zero points cannot be stored. ``fit_scale=False`` keeps the integer zero but not the
least-squares step (the step stays the group's min/max one).

Why HQQ does not beat RTN here (SmolLM2 w4 g64 Hamlet ppl 55.16 vs RTN 53.34): the reference's gain needs its float
zero point. The output error ``dW^T X^T X dW`` on SmolLM2 calibration inputs relative to RTN (geometric mean over 8
linears of blocks 0 and 3; benchmarks/RESULTS.md): reference iteration, float zero 0.59x; plain min/max with the
zero left unrounded 0.71x; this integer-zero variant 1.06x (0.86-1.55x), ``fit_scale=False`` 1.00x. The
integer zero point of jquant's format, not the iteration, is what costs HQQ its gain.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jquant.core import tiling
from jquant.core.qarray import QArray
from jquant.core.quantize import check_float_array, quantize
from jquant.core.ranges import scale_from_range
from jquant.core.spec import QuantSpec

__all__ = ["hqq", "hqq_solve", "shrink_lp"]


def shrink_lp(x, beta, p: float):
  """The generalised soft threshold of the l_p proximal step: ``sign(x) relu(|x| - |x|^(p-1) / beta)``."""
  a = jnp.abs(x)
  return jnp.sign(x) * jax.nn.relu(a - jnp.power(jnp.maximum(a, 1e-30), p - 1.0) / beta)


@functools.partial(jax.jit, static_argnames=("spec", "iters", "p", "kappa", "integer_zero", "fit_scale"))
def hqq_solve(w, *, spec: QuantSpec, iters: int = 20, p: float = 0.7, beta: float = 10.0, kappa: float = 1.01,
              integer_zero: bool = True, fit_scale: bool = True):
  """The jittable HQQ core: per-group ``(scale, zero, iterations run)`` of ``w``, both of
  ``spec.granularity.scale_shape(w.shape)`` (``zero`` holds integers unless ``integer_zero=False``)."""
  qt = spec.qtype
  block = spec.granularity.block_shape(w.shape)
  t = tiling.to_tiles(w.astype(jnp.float32), block)           # (*scale_shape, G)
  lo = jnp.minimum(jnp.min(t, axis=-1, keepdims=True), 0.0)
  hi = jnp.maximum(jnp.max(t, axis=-1, keepdims=True), 0.0)
  s0, _ = scale_from_range(lo, hi, qt, False)
  z0 = qt.qmin - lo / s0
  if integer_zero:
    z0 = jnp.clip(jnp.round(z0), qt.qmin, qt.qmax)

  def body(state):
    i, s, z, b, best, _ = state
    q = jnp.clip(jnp.round(t / s + z), qt.qmin, qt.qmax)
    wr = (q - z) * s
    target = t - shrink_lp(t - wr, b, p)
    z_new = jnp.mean(q - target / s, axis=-1, keepdims=True)
    if integer_zero:
      z_new = jnp.clip(jnp.round(z_new), qt.qmin, qt.qmax)
    if integer_zero and fit_scale:
      c = q - z_new
      cc = jnp.sum(c * c, axis=-1, keepdims=True)
      s_ls = jnp.sum(target * c, axis=-1, keepdims=True) / jnp.maximum(cc, 1e-30)
      s = jnp.where((cc > 0) & (s_ls > 0), s_ls, s)
    err = jnp.mean(jnp.abs(t - wr))
    return i + 1, s, z_new, b * kappa, jnp.minimum(best, err), err < best

  def cond(state):
    return (state[0] < iters) & state[-1]

  init = (jnp.int32(0), s0, z0, jnp.float32(beta), jnp.float32(jnp.inf), jnp.bool_(True))
  n, s, z, _, _, _ = jax.lax.while_loop(cond, body, init)
  return s[..., 0], z[..., 0], n


def hqq(w, spec: QuantSpec, *, iters: int = 20, p: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> QArray:
  """Quantizes the (K, N) kernel ``w`` with HQQ zero points (on the integer grid) and least-squares steps.

  Args:
    w: float kernel (K, N) (any rank the spec's granularity fits).
    spec: an asymmetric integer spec (e.g. UINT4 ``PerGroup(axis=0, size=64)``).
    iters, p, beta, kappa: the solver's settings (reference defaults).

  Raises:
    TypeError: ``spec`` is not a QuantSpec, ``w`` not floating.
    ValueError: a symmetric or non-integer spec, NaN/inf in ``w``, bad settings.
  """
  if not isinstance(spec, QuantSpec):
    raise TypeError(f"hqq: spec must be a jq.QuantSpec, got {type(spec).__name__}.")
  if spec.symmetric or not spec.qtype.is_int:
    raise ValueError(f"hqq: HQQ solves zero points, so it needs an asymmetric integer spec (e.g. jq.UINT4, "
                     f"symmetric=False); got {spec.qtype.name} symmetric={spec.symmetric}.")
  check_hqq_settings(iters, p, beta, kappa, "hqq")
  w = check_float_array(w, "w")
  if w.ndim == 0:
    raise ValueError("hqq: w is a scalar; pass a weight array such as a (K, N) kernel.")
  if not bool(jnp.all(jnp.isfinite(w))):
    raise ValueError(f"hqq: w of shape {tuple(w.shape)} holds NaN/inf; quantization needs finite weights.")
  s, z, _ = hqq_solve(w, spec=spec, iters=iters, p=float(p), beta=float(beta), kappa=float(kappa))
  return quantize(w, spec, scale=s, zero_point=z)


def check_hqq_settings(iters, p, beta, kappa, what: str) -> None:
  if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
    raise ValueError(f"{what}: iters must be a positive int (20 in the reference), got {iters!r}.")
  for name, v, ok, hint in (("p", p, lambda v: 0 < v <= 1, "in (0, 1]; 0.7 in the reference"),
                            ("beta", beta, lambda v: v > 0, "> 0; 10 in the reference"),
                            ("kappa", kappa, lambda v: v >= 1, ">= 1; 1.01 in the reference")):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not ok(float(v)):
      raise ValueError(f"{what}: {name} must be a float {hint}, got {v!r}.")
