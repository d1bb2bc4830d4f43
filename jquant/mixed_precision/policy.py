"""Mixed-precision policy: which float dtype params, compute and outputs use.

The usual pattern keeps float32 "master" params, casts them to bfloat16 or
float16 for the forward/backward pass, and returns float32 outputs (the loss):

>>> policy = Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16,
...                 output_dtype=jnp.float32)
>>> def loss_fn(params, x):
...   p, x = policy.cast_to_compute((params, x))
...   return policy.cast_to_output(model_apply(p, x))

Only floating-point array leaves are cast; integer, boolean and non-array leaves
(and quantized integer weights) pass through untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ("Policy", "cast_floating")

_NAMES = {
    "float32": jnp.float32, "f32": jnp.float32, "fp32": jnp.float32,
    "float16": jnp.float16, "f16": jnp.float16, "fp16": jnp.float16, "half": jnp.float16,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
    "float64": jnp.float64, "f64": jnp.float64,
}


def _as_float_dtype(value: Any, field: str) -> jnp.dtype:
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise TypeError(f"Policy.{field}={value!r} is not a dtype; pass e.g. jnp.float32 or jnp.bfloat16.") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"Policy.{field} must be a floating dtype, got {dtype}; "
                     "mixed precision only changes float leaves (use jnp.float32, jnp.bfloat16 or jnp.float16).")
  _check_x64(dtype, f"Policy.{field}")
  return dtype


def _check_x64(dtype: jnp.dtype, what: str) -> None:
  # Without 64-bit mode jax turns a float64 cast into float32 (a warning at most): the policy would not be the
  # one asked for, so say so up front.
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError(f"{what}=float64 needs 64-bit jax, which is off: casts to float64 would silently give "
                     "float32. Enable it first (jax.config.update('jax_enable_x64', True), or JAX_ENABLE_X64=1), or "
                     "use jnp.float32.")


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Casts every floating-point array leaf of ``tree`` to ``dtype``.

  Args:
    tree: any pytree; leaves that are not floating-point arrays (ints, bools,
      Python scalars, None) are returned unchanged.
    dtype: the target floating dtype.

  Returns:
    A pytree with the same structure.

  Raises:
    TypeError: ``dtype`` is not a dtype, or not a floating one (casting float leaves to ints would silently
      truncate them).
  """
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"cast_floating: dtype={dtype!r} is not a dtype; pass e.g. jnp.bfloat16 or jnp.float32.") \
        from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"cast_floating: dtype={dtype} is not floating; mixed precision casts float leaves to another "
                    "float dtype (jnp.float32, jnp.bfloat16, jnp.float16).")
  _check_x64(dtype, "cast_floating: dtype")

  def cast(x):
    if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
      return x if x.dtype == dtype else jnp.asarray(x).astype(dtype)
    return x

  return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
  """Dtypes for the three places a mixed-precision step touches.

  Attributes:
    param_dtype: dtype params are stored and updated in (the optimizer's "master" copy).
    compute_dtype: dtype the forward and backward passes run in.
    output_dtype: dtype the model's outputs (e.g. logits, loss) are returned in.
  """

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32
  output_dtype: Any = jnp.float32

  def __post_init__(self):
    for field in ("param_dtype", "compute_dtype", "output_dtype"):
      object.__setattr__(self, field, _as_float_dtype(getattr(self, field), field))

  @classmethod
  def from_string(cls, text: str) -> Policy:
    """Parses ``"params=float32,compute=bfloat16,output=float32"``.

    Keys are ``params``, ``compute``, ``output`` (each optional, default float32);
    values are dtype names such as ``float32``/``f32``, ``bfloat16``/``bf16``,
    ``float16``/``f16``/``half``.

    Raises:
      ValueError: on an unknown key or dtype name, or a repeated key.
    """
    if not isinstance(text, str):
      raise TypeError(f"Policy.from_string expects a str, got {type(text).__name__}.")
    keys = {"params": "param_dtype", "compute": "compute_dtype", "output": "output_dtype"}
    kwargs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
      key, sep, value = part.partition("=")
      key, value = key.strip(), value.strip().lower()
      if not sep or key not in keys:
        raise ValueError(f"Policy.from_string: bad entry {part!r} in {text!r}; expected 'key=dtype' with key "
                         f"one of {sorted(keys)}, e.g. 'params=float32,compute=bfloat16,output=float32'.")
      if keys[key] in kwargs:
        raise ValueError(f"Policy.from_string: {key!r} given twice in {text!r}.")
      if value not in _NAMES:
        raise ValueError(f"Policy.from_string: unknown dtype {value!r} for {key!r}; expected one of {sorted(_NAMES)}.")
      kwargs[keys[key]] = _NAMES[value]
    return cls(**kwargs)

  def cast_to_param(self, tree: Any) -> Any:
    """Casts floating leaves of ``tree`` to ``param_dtype``."""
    return cast_floating(tree, self.param_dtype)

  def cast_to_compute(self, tree: Any) -> Any:
    """Casts floating leaves of ``tree`` to ``compute_dtype``."""
    return cast_floating(tree, self.compute_dtype)

  def cast_to_output(self, tree: Any) -> Any:
    """Casts floating leaves of ``tree`` to ``output_dtype``."""
    return cast_floating(tree, self.output_dtype)
