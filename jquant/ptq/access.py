"""Reading and writing a model's linears in the params tree, as (K, N) matrices whatever the kernel's layout.

Blocks are addressed through the model when it says how (`LinenModel`: nested paths, scanned stacks), else as
``params[name]``. A linear's leaves come back in matrix form: ``kernel`` (K, N) (a float array or a QArray),
``bias`` (N,), ``input_scale`` (K,). Writes take matrix-form values and store them in the kernel's own layout.
"""

from __future__ import annotations

from typing import Any

from jquant.core.paths import get_in as get_in
from jquant.core.paths import set_in as set_in
from jquant.core.qarray import QArray
from jquant.core.views import MatrixView, qarray_to_matrix

PyTree = Any


def copy_dicts(tree: PyTree) -> PyTree:
  """A copy of the nested-dict structure (leaves shared)."""
  if isinstance(tree, dict) or (hasattr(tree, "keys") and hasattr(tree, "items") and not hasattr(tree, "shape")):
    return {k: copy_dicts(v) for k, v in tree.items()}
  return tree


def get_block(model, tree: PyTree, name: str) -> PyTree:
  """Block ``name``'s params (owned dicts; a scanned layer is a fresh slice)."""
  f = getattr(model, "get_block", None)
  if name == "":
    return tree
  return copy_dicts(f(tree, name)) if f is not None else tree[name]


def put_block(model, tree: PyTree, name: str, block: PyTree) -> None:
  f = getattr(model, "set_block", None)
  if name == "":          # the whole tree (linears outside blocks)
    if block is not tree:
      tree.clear()
      tree.update(block)
    return
  if f is not None:
    f(tree, name, block)
  else:
    tree[name] = block


def kernel_view(model, path: str) -> MatrixView | None:
  """The linear's `MatrixView` (None: the kernel already is (K, N))."""
  f = getattr(model, "kernel_view", None)
  return f(path) if f is not None else None


def kernel_of(block: PyTree, path: str, view: MatrixView | None) -> Any:
  w = get_in(block, f"{path}/kernel")
  if view is None:
    return w
  return qarray_to_matrix(w, view) if isinstance(w, QArray) else view.to_matrix(w)


def set_kernel(block: PyTree, path: str, view: MatrixView | None, value: Any) -> None:
  if view is not None:
    value = view.qarray_from_matrix(value) if isinstance(value, QArray) else view.from_matrix(value)
  set_in(block, f"{path}/kernel", value)


def linear_leaves(block: PyTree, path: str, view: MatrixView | None = None) -> dict:
  """The linear's leaves in matrix form: kernel (K, N), bias (N,), input_scale (K,)."""
  leaves = dict(get_in(block, path))
  if view is None:
    return leaves
  out = {"kernel": kernel_of(block, path, view)}
  if "bias" in leaves:
    out["bias"] = leaves["bias"].reshape(-1)
  if "input_scale" in leaves:
    out["input_scale"] = view.vector_from_kernel_rank(leaves["input_scale"])
  return out


def set_input_scale(block: PyTree, path: str, view: MatrixView | None, s) -> None:
  """Stores a (K,) input scale: (K,) for a (K, N) kernel, kernel-rank broadcastable otherwise."""
  set_in(block, f"{path}/input_scale", s if view is None else view.vector_to_kernel_rank(s))
