"""Loss scaling for float16/bfloat16 training, as pytree state.

The loss is multiplied by ``scale`` before differentiation so that small
gradients do not underflow in half precision; gradients are divided by it again
before the optimizer sees them. ``DynamicLossScale`` lowers the scale whenever
the gradients overflow and raises it again after ``period`` good steps.

Every field of every loss scale is an array leaf (none is static metadata): a
checkpoint that stores the leaves therefore restores the whole configuration
(``min_scale``, ``period``, ``factor`` included), ``jax.jit`` round trips keep
all of it, and changing a hyperparameter never triggers a recompile. The
flattening follows the fields (``_register``); rebuilding a pytree skips the argument checks, which run when a
user constructs a loss scale (Python numbers, NumPy values and concrete jax arrays alike).

The value field is called ``scale`` (``DynamicLossScale(scale=2.0**15)``), so
the tree methods are ``scale_tree``/``unscale_tree`` (jmp's ``scale``/``unscale``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ("DynamicLossScale", "LossScale", "NoOpLossScale", "StaticLossScale", "all_finite", "select_tree")


def _is_float_array(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def all_finite(tree: Any) -> jax.Array:
  """True iff every element of every floating leaf of ``tree`` is finite.

  Args:
    tree: a pytree of arrays; non-floating leaves are ignored.

  Returns:
    A bool array of shape ``()`` (True for a tree without floating leaves).
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float_array(x)]
  if not leaves:
    return jnp.ones((), jnp.bool_)
  return jnp.stack(leaves).all()


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  """Leafwise ``on_true if pred else on_false`` for two trees of equal structure.

  Non-finite values in the branch not selected do not leak into the result.

  Args:
    pred: a boolean scalar (shape ``()``).
    on_true: a pytree.
    on_false: a pytree with the same structure, shapes and dtypes.

  Raises:
    ValueError: if ``pred`` is not a scalar bool or the trees differ in structure.
  """
  pred = jnp.asarray(pred)
  if pred.shape != () or pred.dtype != jnp.bool_:
    raise ValueError(f"select_tree needs a scalar bool predicate, got shape {pred.shape} dtype {pred.dtype}; "
                     "reduce it first, e.g. with all_finite(grads).")
  s_true, s_false = jax.tree.structure(on_true), jax.tree.structure(on_false)
  if s_true != s_false:
    raise ValueError(f"select_tree got trees of different structure: {s_true} vs {s_false}.")
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _apply(tree: Any, factor: jax.Array, divide: bool) -> Any:
  """Multiplies (or divides) floating leaves by ``factor`` in float32, keeping each leaf's dtype."""

  def f(x):
    if not _is_float_array(x):
      return x
    y = x.astype(jnp.float32)
    y = y / factor if divide else y * factor
    return y.astype(x.dtype)

  return jax.tree.map(f, tree)


def _register(cls):
  """Registers a frozen dataclass as a pytree whose fields are all leaves (in field order, with attribute keys).

  Unflattening bypasses ``__init__``: JAX rebuilds the object with whatever leaves it carries (tracers, jit outputs,
  placeholders, ``zeros_like`` trees), so the argument checks of ``__post_init__`` run only when a user constructs
  the object -- and then they also check concrete jax arrays, without a device sync on every jit step.
  """
  names = tuple(f.name for f in dataclasses.fields(cls))

  def flatten_with_keys(obj):
    return [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in names], None

  def flatten(obj):
    return [getattr(obj, n) for n in names], None

  def unflatten(_, children):
    obj = object.__new__(cls)
    for n, v in zip(names, children):
      object.__setattr__(obj, n, v)
    return obj

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  return cls


def _set_array(obj: Any, name: str, dtype: Any, check) -> None:
  """Validates a number field (Python, NumPy or a concrete jax array) and stores it as a jax array of ``dtype``.

  Tracers (construction inside jit) are left as they are: their values are unknown.
  """
  value = getattr(obj, name)
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, jax.Array):
    value = np.asarray(jax.device_get(value))   # a concrete array: validated like the number it holds
  if isinstance(value, bool) or (isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.bool_):
    raise TypeError(f"{type(obj).__name__}.{name} must be a number, got {value!r}.")
  if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind not in "iuf":
    raise TypeError(f"{type(obj).__name__}.{name} must be a real number, got dtype {value.dtype}.")
  if not isinstance(value, (numbers.Number, np.ndarray, np.generic)):
    raise TypeError(f"{type(obj).__name__}.{name} must be a number or a scalar array, got {type(value).__name__}.")
  if isinstance(value, numbers.Number) and not isinstance(value, numbers.Real):
    raise TypeError(f"{type(obj).__name__}.{name} must be a real number, got {value!r}.")
  arr = np.asarray(value)
  if arr.shape != ():
    raise ValueError(f"{type(obj).__name__}.{name} must be a scalar, got shape {arr.shape}.")
  if message := check(float(arr)):
    raise ValueError(f"{type(obj).__name__}.{name}={arr.item()!r}: {message}")
  object.__setattr__(obj, name, jnp.asarray(arr, dtype))


def _check_flag(grads_finite) -> jax.Array:
  """The ``adjust`` argument as a bool ``()`` array; a float or vector is a TypeError/ValueError (0.5 would
  otherwise count as a finite step)."""
  flag = jnp.asarray(grads_finite)
  if flag.dtype != jnp.bool_:
    raise TypeError(f"adjust(grads_finite) needs a bool, e.g. all_finite(grads); got dtype {flag.dtype}.")
  if flag.shape != ():
    raise ValueError(f"adjust(grads_finite) needs a scalar bool, got shape {flag.shape}; reduce it with "
                     "all_finite(grads).")
  return flag


def _positive_finite(v: float) -> str | None:
  return None if np.isfinite(v) and v > 0 else "must be a finite number > 0."


@_register
@dataclasses.dataclass(frozen=True)
class NoOpLossScale:
  """No loss scaling: ``scale``/``unscale`` are the identity (e.g. for float32 or bfloat16)."""

  @property
  def loss_scale(self) -> jax.Array:
    """float32 ``()``: always 1."""
    return jnp.ones((), jnp.float32)

  def scale_tree(self, tree: Any) -> Any:
    return tree

  def unscale_tree(self, tree: Any) -> Any:
    return tree

  def adjust(self, grads_finite: jax.Array) -> NoOpLossScale:
    _check_flag(grads_finite)
    return self


class _ScaledBy:
  """``loss_scale`` / ``scale_tree`` / ``unscale_tree`` of a loss scale that holds its factor in ``self.scale``."""

  @property
  def loss_scale(self) -> jax.Array:
    """float32 ``()``: the factor to multiply the loss by."""
    return jnp.asarray(self.scale, jnp.float32)

  def scale_tree(self, tree: Any) -> Any:
    """Multiplies floating leaves by the scale (in float32, keeping each leaf's dtype)."""
    return _apply(tree, self.loss_scale, divide=False)

  def unscale_tree(self, tree: Any) -> Any:
    """Divides floating leaves by the scale (in float32, keeping each leaf's dtype)."""
    return _apply(tree, self.loss_scale, divide=True)


@_register
@dataclasses.dataclass(frozen=True)
class StaticLossScale(_ScaledBy):
  """A fixed loss scale.

  Attributes:
    scale: float32 array of shape ``()``, > 0.
  """

  scale: Any = 2.0**15

  def __post_init__(self):
    _set_array(self, "scale", jnp.float32, _positive_finite)

  def adjust(self, grads_finite: jax.Array) -> StaticLossScale:
    _check_flag(grads_finite)
    return self


@_register
@dataclasses.dataclass(frozen=True)
class DynamicLossScale(_ScaledBy):
  """A loss scale that halves on overflow and doubles after ``period`` finite steps.

  Attributes:
    scale: float32 ``()``; the current scale (> 0).
    good_steps: int32 ``()``; finite steps since the last change.
    period: int32 ``()``; finite steps needed before growing the scale (>= 1).
    factor: float32 ``()``; growth/shrink factor (> 1).
    min_scale: float32 ``()``; the scale never drops below this (> 0).
  """

  scale: Any = 2.0**15
  good_steps: Any = 0
  period: Any = 2000
  factor: Any = 2.0
  min_scale: Any = 1.0

  def __post_init__(self):
    _set_array(self, "scale", jnp.float32, _positive_finite)
    _set_array(self, "good_steps", jnp.int32, lambda v: None if v >= 0 and v == int(v) else "must be an int >= 0.")
    _set_array(self, "period", jnp.int32, lambda v: None if v >= 1 and v == int(v) else "must be an int >= 1.")
    _set_array(self, "factor", jnp.float32,
               lambda v: None if np.isfinite(v) and v > 1 else "must be a finite number > 1 (e.g. 2).")
    _set_array(self, "min_scale", jnp.float32, _positive_finite)

  def adjust(self, grads_finite: jax.Array) -> DynamicLossScale:
    """Returns the state for the next step.

    Args:
      grads_finite: bool ``()``, whether this step's gradients were all finite.

    Returns:
      On a non-finite step: ``scale / factor`` (clamped to ``min_scale``) and
      ``good_steps = 0``. On the ``period``-th consecutive finite step:
      ``scale * factor`` (kept finite in float32) and ``good_steps = 0``.
      Otherwise ``good_steps + 1``.
    """
    grads_finite = _check_flag(grads_finite)
    scale = jnp.asarray(self.scale, jnp.float32)
    min_scale = jnp.asarray(self.min_scale, jnp.float32)
    factor = jnp.asarray(self.factor, jnp.float32)
    steps = jnp.asarray(self.good_steps, jnp.int32) + 1
    grow = steps >= jnp.asarray(self.period, jnp.int32)
    grown = jnp.where(jnp.isfinite(scale * factor), scale * factor, scale)
    finite_scale = jnp.where(grow, grown, scale)
    finite_steps = jnp.where(grow, 0, steps)
    shrunk = jnp.maximum(scale / factor, min_scale)
    return dataclasses.replace(
        self,
        scale=jnp.where(grads_finite, finite_scale, shrunk),
        good_steps=jnp.where(grads_finite, finite_steps, 0).astype(jnp.int32),
    )


LossScale = NoOpLossScale | StaticLossScale | DynamicLossScale
