"""Argument checks shared by the public API: concrete array values are validated like the Python numbers they
hold (``alpha=jnp.asarray(0.5)`` is 0.5; ``jnp.asarray(jnp.nan)`` is rejected like ``float("nan")``)."""

from __future__ import annotations

import numbers

import jax
import numpy as np


def real_scalar(value, what: str) -> float:
  """``value`` as a Python float: a real Python/NumPy number or a concrete scalar array (not bool).

  Raises:
    TypeError: bools, strings, non-scalar or complex values, or a traced value (whose number is unknown).
  """
  if isinstance(value, jax.core.Tracer):
    raise TypeError(f"{what} must be a concrete number, got a traced value inside jit; pass it as a Python float "
                    "(a static argument).")
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{what} must be a number, got the bool {value!r}.")
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in "iuf":
      raise TypeError(f"{what} must be a real scalar, got an array of shape {arr.shape} and dtype {arr.dtype}.")
    return float(arr)
  if isinstance(value, numbers.Real):
    return float(value)
  raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}.")


def int_scalar(value, what: str) -> int:
  """``value`` as a Python int (an integral real number or concrete integer scalar; not bool, not 2.5)."""
  v = real_scalar(value, what)
  if not np.isfinite(v) or v != int(v):
    raise TypeError(f"{what} must be an int, got {value!r}.")
  if isinstance(value, (float, np.floating)) or (hasattr(value, "dtype") and np.asarray(value).dtype.kind == "f"):
    raise TypeError(f"{what} must be an int, got the float {value!r}; write {int(v)}.")
  return int(v)
