"""What one linear call is: its kind (Dense, DenseGeneral, Einsum, stacked experts), its kernel as a (K, N) matrix
view and the input axes it contracts; shared by the Linen and NNX adapters (`jquant.ptq.traced`)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.views import MatrixView

__all__ = ["LinearSite", "classify_linear", "experts_call", "flatten_input", "group_sizes_of", "parse_einsum"]


@dataclasses.dataclass(frozen=True)
class LinearSite:
  """One linear layer: its kind, kernel view and the input axes it contracts (in kernel in-axis order)."""

  kind: str
  view: MatrixView
  x_axes: tuple[int, ...]      # negative axes of the input, in the order of view.in_axes
  einsum_str: str | None = None
  has_bias: bool = False
  experts: int = 0             # > 0: stacked expert kernels (E, K, N) called as (x (M, K), group_sizes (E,))


def parse_einsum(eq: str, x_ndim: int, k_ndim: int):
  eq = eq.replace(" ", "")
  if "->" not in eq or eq.count(",") != 1:
    return None, f"einsum {eq!r} is not 'lhs,rhs->out'"
  lhs, rest = eq.split(",")
  rhs, out = rest.split("->")
  if "." in rhs:
    return None, f"einsum {eq!r}: an ellipsis in the kernel operand"
  if "..." in lhs:
    pre, post = lhs.split("...")
    pos = {c: i - x_ndim for i, c in enumerate(pre)}   # negative positions
    pos.update({c: j - len(post) for j, c in enumerate(post)})
  else:
    pos = {c: i - len(lhs) for i, c in enumerate(lhs)}
  out_letters = out.replace("...", "")
  shared = [c for c in rhs if c in pos and c in out_letters]
  if shared:
    return None, f"einsum {eq!r}: kernel axes {shared} are batch axes (in input, kernel and output)"
  in_axes = tuple(i for i, c in enumerate(rhs) if c in pos)
  out_axes = tuple(i for i, c in enumerate(rhs) if c not in pos)
  if not in_axes or not out_axes or any(c not in out_letters for c in rhs if c not in pos):
    return None, f"einsum {eq!r}: the kernel needs contracted and output axes"
  x_axes = tuple(pos[rhs[i]] for i in in_axes)
  return (in_axes, out_axes, x_axes), None


def classify_linear(kind: str | None, name: str, kshape: tuple, x, has_bias: bool, *, axis=None,
                    unsupported: str | None = None, einsum_str: str | None = None):
  """(LinearSite, None) or (None, reason) for a linear call of a known kind, shared by the Linen and NNX adapters.

  ``kind``: "dense" (a (K, N) kernel), "dense_general" (the kernel's leading ``len(axis)`` axes are contracted
  with x's ``axis``), "einsum" (``einsum_str``), or None for a module with a kernel jquant cannot quantize;
  ``unsupported``: a reason that makes a known kind unsupported (e.g. batch dims)."""
  if x is None or not hasattr(x, "ndim"):
    return None, f"{name}: first argument is not an array"
  if kind is None:
    return None, f"{name} (a module with a 'kernel' param jquant cannot quantize)"
  if unsupported is not None:
    return None, unsupported
  if kind == "dense":
    if len(kshape) != 2:
      return None, f"{name} kernel of rank {len(kshape)}"
    return LinearSite("dense", MatrixView.dense(kshape, 1), (-1,), None, has_bias), None
  if kind == "experts":
    if has_bias:
      return None, f"{name}: stacked experts with a bias"
    return LinearSite("experts", MatrixView.dense(kshape[1:], 1), (-1,), None, False, experts=kshape[0]), None
  if kind == "dense_general":
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    x_axes = tuple((a % x.ndim) - x.ndim for a in axis)
    return LinearSite("dense_general", MatrixView.dense(kshape, len(axis)), x_axes, None, has_bias), None
  parsed, why = parse_einsum(einsum_str or "", x.ndim, len(kshape))
  if parsed is None:
    return None, why
  in_axes, out_axes, x_axes = parsed
  return LinearSite("einsum", MatrixView(kshape, in_axes, out_axes), x_axes, einsum_str.replace(" ", ""),
                    has_bias), None


@dataclasses.dataclass(frozen=True)
class LinearTypes:
  """One framework's linear layer classes, for `classify_module` (Linen: Dense / DenseGeneral / Einsum; NNX:
  Linear / LinearGeneral / Einsum)."""

  dense: type
  dense_general: type
  einsum: type
  batch_attr: str          # the dense_general attribute holding batch dims ("batch_dims" / "batch_axis")
  experts: bool = False    # other modules called as ragged_dot(x, (E, K, N) kernel, group_sizes) are experts


def classify_module(types: LinearTypes, mod, kshape: tuple, args: tuple, kwargs: dict, has_bias: bool):
  """`classify_linear` of a call of ``mod`` (whose kernel has shape ``kshape``): its class picks the kind."""
  x = args[0] if args else None
  if isinstance(mod, types.dense):
    return classify_linear("dense", types.dense.__name__, kshape, x, has_bias)
  if isinstance(mod, types.dense_general):
    name = types.dense_general.__name__
    return classify_linear("dense_general", name, kshape, x, has_bias, axis=mod.axis,
                           unsupported=f"{name} with {types.batch_attr}" if getattr(mod, types.batch_attr) else None)
  if isinstance(mod, types.einsum):
    eq = kwargs.get("einsum_str") or (args[1] if len(args) > 1 else None) or mod.einsum_str
    return classify_linear("einsum", "Einsum", kshape, x, has_bias, einsum_str=eq)
  if types.experts and experts_call(kshape, args, kwargs):
    return classify_linear("experts", type(mod).__name__, kshape, x, has_bias)
  return classify_linear(None, type(mod).__name__, kshape, x, has_bias)


def experts_call(kshape: tuple, args: tuple, kwargs: dict) -> bool:
  """True for a call of stacked expert kernels: a (E, K, N) kernel, ``x`` (M, K) sorted by expert and integer
  ``group_sizes`` (E,) (second positional argument or keyword), as ``jax.lax.ragged_dot(x, kernel, group_sizes)``."""
  x = args[0] if args else None
  gs = args[1] if len(args) > 1 else kwargs.get("group_sizes")
  return (len(kshape) == 3 and getattr(x, "ndim", 0) == 2 and x.shape[-1] == kshape[1]
          and tuple(getattr(gs, "shape", ())) == (kshape[0],) and jnp.issubdtype(gs.dtype, jnp.integer))


def group_sizes_of(args: tuple, kwargs: dict):
  """The ``group_sizes`` argument of an experts call (see `experts_call`)."""
  return args[1] if len(args) > 1 else kwargs["group_sizes"]


def flatten_input(x: jax.Array, x_axes: Sequence[int]) -> jax.Array:
  """The input of a linear as (tokens, K): contracted axes moved last (kernel order), the rest flattened."""
  nd = x.ndim
  src = [a % nd for a in x_axes]
  rest = [a for a in range(nd) if a not in src]
  xt = jnp.transpose(x, rest + src)
  k = int(np.prod([x.shape[a] for a in src]))
  return xt.reshape(-1, k)
