"""Loss scaling as an optax gradient transformation.

>>> tx = loss_scaled(optax.adamw(1e-3), DynamicLossScale())
>>> opt_state = tx.init(params)
>>> def step(params, opt_state, batch):
...   scale = current_loss_scale(opt_state)
...   grads = jax.grad(lambda p: loss_fn(p, batch) * scale)(params)
...   updates, opt_state = tx.update(grads, opt_state, params)
...   return optax.apply_updates(params, updates), opt_state

``update`` divides the gradients by the scale, and when any of them is not
finite it skips the step: the updates are (negative) zeros, so
``optax.apply_updates`` leaves every param bit-identical (``x + -0.0 == x`` for
every x, including ``-0.0``), and the inner optimizer state is not advanced.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jquant.mixed_precision.loss_scale import (DynamicLossScale, LossScale, NoOpLossScale, StaticLossScale,
                                               all_finite, select_tree)

__all__ = ("LossScaleState", "current_loss_scale", "find_loss_scale", "loss_scaled")

_KINDS = (NoOpLossScale, StaticLossScale, DynamicLossScale)


class LossScaleState(NamedTuple):
  """State of :func:`loss_scaled`.

  Attributes:
    loss_scale: the loss scale for the next step (a ``LossScale`` pytree).
    grads_finite: bool ``()``; whether the last update's gradients were finite.
    inner_state: the wrapped optimizer's state.
  """

  loss_scale: LossScale
  grads_finite: jax.Array
  inner_state: Any


def _skip_updates(updates: Any) -> Any:
  # -0.0 (not +0.0): p + (-0.0) is p bit for bit, also for p == -0.0.
  return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates)


def loss_scaled(inner: optax.GradientTransformation, loss_scale: LossScale) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that it sees unscaled gradients and skips non-finite steps.

  Args:
    inner: the optimizer (any optax transformation; extra args are forwarded).
    loss_scale: the initial ``NoOpLossScale``, ``StaticLossScale`` or
      ``DynamicLossScale``.

  Returns:
    A transformation whose ``update(grads, state, params=None, **extra)`` expects
    the gradients of ``loss * current_loss_scale(state)``. Gradients may be any
    floating dtype (float32, bfloat16, float16); unscaling runs in float32.

  Raises:
    TypeError: if ``inner`` or ``loss_scale`` has the wrong type.
  """
  if not isinstance(loss_scale, _KINDS):
    raise TypeError(f"loss_scaled: loss_scale must be NoOpLossScale, StaticLossScale or DynamicLossScale, "
                    f"got {type(loss_scale).__name__}. Construct one, e.g. DynamicLossScale().")
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise TypeError(f"loss_scaled: inner must be an optax.GradientTransformation, got {type(inner).__name__}.")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return LossScaleState(loss_scale, jnp.ones((), jnp.bool_), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if not isinstance(state, LossScaleState):
      raise TypeError(f"loss_scaled.update got state of type {type(state).__name__}; "
                      "pass the state returned by this transformation's init().")
    grads = state.loss_scale.unscale_tree(updates)
    finite = all_finite(grads)
    new_updates, new_inner = inner.update(grads, state.inner_state, params, **extra_args)
    new_updates = select_tree(finite, new_updates, _skip_updates(new_updates))
    new_inner = select_tree(finite, new_inner, state.inner_state)
    return new_updates, LossScaleState(state.loss_scale.adjust(finite), finite, new_inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_loss_scale(opt_state: Any) -> LossScale:
  """Returns the loss scale held by the single ``loss_scaled`` state inside ``opt_state``.

  Raises:
    ValueError: if ``opt_state`` holds no ``LossScaleState`` or more than one.
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, LossScaleState))
           if isinstance(s, LossScaleState)]
  if len(found) != 1:
    raise ValueError(f"expected exactly one loss_scaled(...) state in opt_state, found {len(found)}; "
                     "build the optimizer with jquant.mixed_precision.loss_scaled(inner, loss_scale) "
                     "(once, as the outermost or any single link of the chain).")
  return found[0].loss_scale


def current_loss_scale(opt_state: Any) -> jax.Array:
  """The factor (float32 ``()``) to multiply the loss by before taking gradients this step."""
  return find_loss_scale(opt_state).loss_scale
