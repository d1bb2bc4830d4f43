"""Deprecated aliases of renamed public functions: the old name keeps working for one release and warns on use."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any


def deprecated_alias(fn: Callable[..., Any], old: str, new: str) -> Callable[..., Any]:
  """``fn`` under its old name ``old``: every call emits a DeprecationWarning naming ``new``, then calls ``fn``."""

  @functools.wraps(fn)
  def alias(*args, **kwargs):
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new} (same arguments).",
                  DeprecationWarning, stacklevel=2)
    return fn(*args, **kwargs)

  alias.__name__ = alias.__qualname__ = old.rsplit(".", 1)[-1]
  alias.__doc__ = f"Deprecated alias of `{new}` (warns on use). " + (fn.__doc__ or "")
  return alias
