"""How a calibration batch is passed to a user's model: a tuple is splatted, a dict is keyword arguments."""

from __future__ import annotations

from typing import Any


def call_args(batch: Any) -> tuple[tuple, dict]:
  """(args, kwargs) for ``model.apply(variables, *args, **kwargs)``."""
  if isinstance(batch, tuple):
    return batch, {}
  if isinstance(batch, dict):
    return (), dict(batch)
  return (batch,), {}
