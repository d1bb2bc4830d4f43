"""'/'-joined tree paths: the names that QuantRule patterns, reports and checkpoints use, and the one place that
turns pytree key paths and module paths into them and walks nested dicts by them.

- `path_str`: a JAX key path (``tree_flatten_with_path``) as ``"a/b/0/kernel"``.
- `join`: a module path (a sequence of names, e.g. Flax ``module.path``) as ``"a/b"``.
- `flatten` / `unflatten`: a params tree <-> ``{path: leaf}`` (QArrays are leaves).
- `get_in` / `set_in`: read or write ``tree[a][b]...`` by path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from jquant.core.qarray import QArray

SEP = "/"
_MISSING = object()


def path_str(path) -> str:
  """'/'-joined JAX key path; a trailing NNX Variable ``value`` key is dropped."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  if len(parts) > 1 and parts[-1] == "value":
    parts = parts[:-1]
  return SEP.join(parts)


def join(names: Iterable[Any]) -> str:
  """A module path (names, e.g. Flax ``module.path``) as a '/'-joined string; unlike `path_str` nothing is dropped."""
  return SEP.join(str(n) for n in names)


def flatten(tree: Any) -> dict[str, Any]:
  """``{path_str: leaf}`` of every leaf of ``tree``, QArrays kept whole (in tree order)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, QArray))[0]
  return {path_str(p): x for p, x in leaves}


def unflatten(flat: dict[str, Any]) -> dict:
  """The nested dict whose `flatten` is ``flat`` (the inverse of `flatten` on nested dicts)."""
  out: dict = {}
  for path, v in flat.items():
    set_in(out, path, v, create=True)
  return out


def get_in(tree: Any, path: str, default: Any = _MISSING) -> Any:
  """``tree[a][b]...`` for ``path = "a/b/..."``; ``default`` when a key is missing, else KeyError naming the path."""
  node = tree
  for k in path.split(SEP):
    try:
      node = node[k]
    except (KeyError, TypeError, IndexError):
      if default is _MISSING:
        raise KeyError(f"no {k!r} on the way to {path!r}") from None
      return default
  return node


def set_in(tree: Any, path: str, value: Any, *, create: bool = False) -> None:
  """Sets ``tree[a][b]...`` in place (the dicts must be owned); ``create`` adds missing dicts on the way."""
  *parents, leaf = path.split(SEP)
  node = tree
  for k in parents:
    node = node.setdefault(k, {}) if create else node[k]
  node[leaf] = value
