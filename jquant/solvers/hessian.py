"""Streaming Hessian observer for GPTQ: H = 2/n * sum over tokens x x^T, a running mean over samples in float32.

As in the reference ``add_batch``: each update rescales ``H *= n / (n + b)`` and adds ``(2 / (n + b)) X^T X``, where
``b`` counts *samples* (the leading dimension of a 3-D or higher batch; a 1-D or 2-D batch is one sample) and X is
the batch flattened to (tokens, K). The overall scale does not matter to GPTQ (its damping is relative).

The state is a pytree, so ``hessian_update`` can run inside ``jax.jit`` / ``lax.scan``. Non-finite activations are
recorded in the state (no host sync per batch) and reported by ``hessian_finalize``. `check_hessian` and
`rtn_fallback_reason` are the host-side checks GPTQ runs on a finished Hessian;
`reverse_cholesky` is its damped factorization.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from jquant.core.quantize import check_float_array


class HessianState(NamedTuple):
  """Running Hessian of one layer's inputs.

  Attributes:
    h: (K, K) float32 running mean ``2/n sum x x^T``.
    n: number of samples seen (int32 scalar).
    batches: number of updates (int32 scalar).
    first_bad: index of the first update whose input held NaN/inf, or -1 (int32 scalar).
  """

  h: jax.Array
  n: jax.Array
  batches: jax.Array
  first_bad: jax.Array


def hessian_init(k: int) -> HessianState:
  """An empty state for inputs with ``k`` features."""
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f"hessian_init: k must be a positive int (the layer's input features), got {k!r}.")
  z = jnp.int32(0)
  return HessianState(h=jnp.zeros((int(k), int(k)), jnp.float32), n=z, batches=z, first_bad=jnp.int32(-1))


@jax.jit
def _update(state: HessianState, x: jax.Array, b: int) -> HessianState:
  xf = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(xf))
  n_new = state.n + b
  h = state.h * (state.n.astype(jnp.float32) / n_new.astype(jnp.float32))
  xs = jnp.where(finite, xf, 0.0) * jnp.sqrt(2.0 / n_new.astype(jnp.float32))
  h = h + jnp.matmul(xs.T, xs, precision=jax.lax.Precision.HIGHEST)
  first_bad = jnp.where((state.first_bad < 0) & ~finite, state.batches, state.first_bad)
  return HessianState(h=h, n=n_new, batches=state.batches + 1, first_bad=first_bad)


def hessian_update(state: HessianState, x) -> HessianState:
  """Adds a batch of layer inputs ``x`` of shape (..., K) (jittable; one compile per input shape).

  Raises:
    ValueError: ``x`` does not end in K features, or is empty.
    TypeError: ``x`` is not floating.
  """
  if not isinstance(state, HessianState):
    raise TypeError(f"hessian_update: state must come from hessian_init, got {type(state).__name__}.")
  x = check_float_array(x, "x")
  k = state.h.shape[0]
  if x.ndim < 1 or x.shape[-1] != k:
    raise ValueError(f"hessian_update: x has shape {tuple(x.shape)}, expected (..., {k}) (the layer's inputs, "
                     f"features last).")
  if x.size == 0:
    raise ValueError(f"hessian_update: x of shape {tuple(x.shape)} holds no tokens; skip empty batches.")
  b = int(x.shape[0]) if x.ndim >= 3 else 1
  return _update(state, x, jnp.int32(b))


def hessian_finalize(state: HessianState) -> jax.Array:
  """The (K, K) Hessian.

  Raises:
    ValueError: no samples were added, or some batch held NaN/inf activations.
  """
  if not isinstance(state, HessianState):
    raise TypeError(f"hessian_finalize: state must come from hessian_init, got {type(state).__name__}.")
  if not isinstance(state.n, jax.core.Tracer):
    if int(state.n) == 0:
      raise ValueError("hessian_finalize: no calibration samples were added; call hessian_update with the layer's "
                       "inputs (at least one batch) first.")
    bad = int(state.first_bad)
    if bad >= 0:
      raise ValueError(f"hessian_finalize: calibration batch {bad} (0-based, of {int(state.batches)}) held NaN/inf "
                       "activations; the Hessian would be meaningless. Check the model in float32 on those inputs.")
  return state.h


@jax.jit
def _hessian_stats(h):
  """(#non-finite entries, max |H - H^T| / max |H|, min diag H, max diag H) on the device (4 scalars to the host)."""
  h = h.astype(jnp.float32)
  finite = jnp.isfinite(h)
  hf = jnp.where(finite, h, 0.0)
  scale = jnp.maximum(jnp.max(jnp.abs(hf)), 1e-30)
  d = jnp.diagonal(hf)
  return jnp.sum(~finite), jnp.max(jnp.abs(hf - hf.T)) / scale, jnp.min(d), jnp.max(d)


_F32_TINY = float(jnp.finfo(jnp.float32).tiny)


def rtn_fallback_reason(hessian) -> str | None:
  """Why GPTQ cannot use this concrete Hessian (then `gptq` falls back to RTN), or None.

  An all-zero Hessian means the layer saw no calibration tokens (e.g. an MoE expert no token was routed to): every
  input would count as dead and GPTQ would zero the whole weight. A Hessian whose largest diagonal entry is below
  float32's smallest normal ({tiny}) holds no usable curvature (CPUs/GPUs flush such values to zero).
  """
  if isinstance(hessian, jax.core.Tracer):
    return None
  dmax = float(jax.device_get(_hessian_stats(hessian))[3])
  if dmax == 0.0:
    return ("its Hessian is all zero on the diagonal (the layer saw no calibration tokens, e.g. an MoE expert no "
            "token was routed to), so GPTQ would zero every weight")
  if dmax < _F32_TINY:
    return (f"its Hessian is near zero (max diag H = {dmax:.3g} < float32's smallest normal {_F32_TINY:.3g}), so it "
            "holds no usable curvature")
  return None


def check_hessian(hessian, k: int, what: str = "gptq") -> None:
  """Host-side checks of a concrete Hessian: shape (K, K), finite, symmetric, non-negative diagonal."""
  if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
    raise ValueError(f"{what}: hessian must be square (K, K), got shape {tuple(hessian.shape)}; accumulate it with "
                     "jq.solvers.hessian_update over inputs (..., K).")
  if hessian.shape[0] != k:
    raise ValueError(f"{what}: hessian is {tuple(hessian.shape)} but w has K={k} input features (w is a Flax kernel "
                     f"(K, N)); pass the Hessian of this layer's inputs, or w.T if w is (out, in).")
  if isinstance(hessian, jax.core.Tracer):
    return
  n_bad, asym, dmin, _ = (float(v) for v in jax.device_get(_hessian_stats(hessian)))
  if n_bad:
    raise ValueError(f"{what}: hessian has {int(n_bad)} NaN/inf entries; check the calibration "
                     "activations (jq.solvers.hessian_finalize rejects NaN inputs).")
  if asym > 1e-4:
    raise ValueError(f"{what}: hessian is not symmetric (max |H - H^T| / max |H| = {asym:.2e}); GPTQ needs X^T X "
                     "(positive semi-definite). Symmetrize it with (H + H.T) / 2 if this is round-off.")
  if dmin < 0:
    raise ValueError(f"{what}: hessian has a negative diagonal entry ({dmin:.3g}), so it is not positive "
                     "semi-definite; GPTQ needs H = X^T X from the layer's inputs.")


_RETRIES = 2   # more damping after a failed factorization, twice


def reverse_cholesky(h: jax.Array, damp: jax.Array):
  """V upper-triangular with V V^T = H + damp * mean(diag H) I, retrying with more damping on failure.

  V = U^-1 for the reference's U = chol(H^-1, upper) (U^T U = H^-1  <=>  V V^T = H), and V = J chol(J H J) J with J
  the reversal, so one Cholesky replaces the reference's Cholesky + inverse + Cholesky.
  """
  k = h.shape[0]
  eye = jnp.eye(k, dtype=jnp.float32)
  mean_diag = jnp.mean(jnp.diagonal(h))

  def attempt(d):
    hd = h + eye * (d * mean_diag)
    v = jnp.linalg.cholesky(hd[::-1, ::-1])[::-1, ::-1]
    return v, jnp.all(jnp.isfinite(v)) & jnp.all(jnp.diagonal(v) > 0)

  def cond(state):
    tries, _, ok = state
    return (~ok) & (tries <= _RETRIES)

  def damp_at(tries):   # damp, then 10x / 100x of max(damp, 1e-3) (so that damp=0 can still be rescued)
    base = jnp.where(tries == 0, damp, jnp.maximum(damp, 1e-3))
    return base * jnp.float32(10.0) ** tries.astype(jnp.float32)

  def body(state):
    tries, _, _ = state
    v, ok = attempt(damp_at(tries))
    return tries + 1, v, ok

  tries, v, ok = lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros_like(h), jnp.bool_(False)))
  return v, damp_at(tries - 1), ok
