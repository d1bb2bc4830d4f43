"""AutoRound / SignRound (Cheng et al. 2023): learned rounding offsets and clip factors by sign-SGD on a block's
output error.

Per linear (K, N) of a block, with groups of the spec along K, learn

* ``v`` (K, N), the rounding offset, starting at 0 and kept in [-0.5, 0.5],
* ``alpha``, ``beta`` (scale shape), clip factors of each group's min and max, starting at 1, kept in [0, 1],

so that the quantized weight is ``Q(w) = (clip(round(w / s + v) + z, qmin, qmax) - z) s`` with the group's
``s, z`` from the clipped range ``[alpha * min, beta * max]`` (widened to contain 0 as every jquant grid;
symmetric specs: ``s = max(|alpha min|, |beta max|) / qmax``). Written as ``Q(w + v s)`` this is
`jquant.qat.lsq_fake_quant`'s forward, whose clipped straight-through / learned-step gradients give ``d/dv``,
``d/ds`` and ``d/dz`` (their magnitudes do not matter: only signs are used).

The loss is the block's output MSE against the float block's outputs; each step runs one calibration batch (cycling)
and moves every parameter by ``lr_t * sign(grad)`` with ``lr_t = lr (1 - t / steps)`` (``lr = 1 / steps`` by
default, so ``v`` moves at most ~0.5 in total); the parameters with the lowest loss seen are kept. The steps run in
one ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.granularity import scale_shape
from jquant.core.qarray import QArray
from jquant.core.quantize import quantize
from jquant.core.ranges import scale_from_range
from jquant.core.spec import QuantSpec
from jquant.core.tiling import broadcast_apply, to_tiles
from jquant.qat.lsq import lsq_fake_quant

__all__ = ["autoround_init", "autoround_learn", "autoround_qparams", "autoround_quantize", "autoround_weight"]


def _group_minmax(w, spec: QuantSpec):
  t = to_tiles(w.astype(jnp.float32), spec.granularity.block_shape(w.shape))
  return jnp.min(t, axis=-1), jnp.max(t, axis=-1)


def autoround_init(w, spec: QuantSpec) -> dict:
  """The learnables of one (K, N) kernel at their starting point: ``v = 0``, ``alpha = beta = 1``."""
  shape = scale_shape(spec.granularity, w.shape)
  return {"v": jnp.zeros(w.shape, jnp.float32), "alpha": jnp.ones(shape, jnp.float32),
          "beta": jnp.ones(shape, jnp.float32)}


def autoround_qparams(w, p: dict, spec: QuantSpec):
  """``(scale, float zero point or None)`` of the clipped ranges (differentiable in alpha and beta)."""
  qt = spec.qtype
  lo, hi = _group_minmax(w, spec)
  lo, hi = lo * p["alpha"], hi * p["beta"]
  if spec.symmetric:
    s, _ = scale_from_range(-jnp.maximum(-lo, hi), jnp.maximum(-lo, hi), qt, True)
    return s, None
  s, _ = scale_from_range(lo, hi, qt, False)
  return s, jnp.clip(qt.qmin - jnp.minimum(lo, 0.0) / s, qt.qmin, qt.qmax)


def _offset_input(w, p: dict, s, spec: QuantSpec):
  """``w + v s`` with each group's step ``s`` broadcast over its tile."""
  block = spec.granularity.block_shape(w.shape)
  return w.astype(jnp.float32) + broadcast_apply(lambda vi, si: vi * si, p["v"], block, s)


def autoround_weight(w, p: dict, spec: QuantSpec):
  """The fake-quantized kernel ``Q(w + v s)`` (differentiable in v, alpha, beta through the LSQ vjp)."""
  s, z = autoround_qparams(w, p, spec)
  x = _offset_input(w, p, s, spec)
  return lsq_fake_quant(x, s, z, spec)


def autoround_quantize(w, p: dict, spec: QuantSpec) -> QArray:
  """The learned kernel as a plain QArray of ``spec`` (same codes as `autoround_weight`'s forward)."""
  s, z = autoround_qparams(w, p, spec)
  x = _offset_input(w, p, s, spec)
  if z is not None:
    z = jnp.clip(jnp.round(z), spec.qtype.qmin, spec.qtype.qmax)
  return quantize(x, spec, scale=s, zero_point=z)


def _clamp(p: dict) -> dict:
  return {"v": jnp.clip(p["v"], -0.5, 0.5), "alpha": jnp.clip(p["alpha"], 0.0, 1.0),
          "beta": jnp.clip(p["beta"], 0.0, 1.0)}


def autoround_learn(loss_fn, ws: dict, spec: QuantSpec, steps: int, lr: float):
  """Sign-SGD over the learnables of every kernel in ``ws`` (traceable; call it inside a jit).

  Args:
    loss_fn: ``loss_fn(w_hats: dict, t: int32 step) -> scalar``: the block loss with fake-quantized kernels.
    ws: ``{path: (K, N) float kernel}``.
    spec: the weight spec.
    steps: number of sign-SGD steps.
    lr: the initial step (decays linearly to 0).

  Returns:
    ``(best params {path: {"v", "alpha", "beta"}}, best loss, loss at the start (rounding to nearest))``.
  """
  def loss_of(params, t):
    return loss_fn({k: autoround_weight(ws[k], params[k], spec) for k in ws}, t)

  grad_fn = jax.value_and_grad(loss_of)
  params0 = {k: autoround_init(w, spec) for k, w in ws.items()}

  def step(carry, t):
    params, best, best_loss, first = carry
    loss, g = grad_fn(params, t)
    better = loss < best_loss
    best = jax.tree.map(lambda b, p: jnp.where(better, p, b), best, params)
    best_loss = jnp.where(better, loss, best_loss)
    first = jnp.where(t == 0, loss, first)
    lr_t = lr * (1.0 - t.astype(jnp.float32) / steps)
    params = {k: _clamp(jax.tree.map(lambda p, d: p - lr_t * jnp.sign(d), params[k], g[k])) for k in params}
    return (params, best, best_loss, first), None

  init = (params0, params0, jnp.float32(jnp.inf), jnp.float32(0.0))
  (last, best, best_loss, first), _ = jax.lax.scan(step, init, jnp.arange(steps, dtype=jnp.int32))
  last_loss = loss_of(last, jnp.int32(steps))       # the final update is scored too
  better = last_loss < best_loss
  best = jax.tree.map(lambda b, p: jnp.where(better, p, b), best, last)
  return best, jnp.minimum(best_loss, last_loss), first
