"""Tile views: the one mechanism behind every granularity.

An array of shape (n0*b0, n1*b1, ...) with block (b0, b1, ...) is viewed as the interleaved shape
(n0, b0, n1, b1, ...) -- a free reshape, no transpose. A scale of shape (n0, n1, ...) is viewed as
(n0, 1, n1, 1, ...) and broadcasts against it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def interleaved_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
  out = []
  for n, b in zip(shape, block):
    out += [n // b, b]
  return tuple(out)


def scale_view_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
  out = []
  for n, b in zip(shape, block):
    out += [n // b, 1]
  return tuple(out)


def to_tiles(x: jax.Array, block: Sequence[int]) -> jax.Array:
  """(n0*b0, n1*b1, ...) -> (n0, n1, ..., b0*b1*...): each tile's elements on the last axis."""
  nd = x.ndim
  xi = x.reshape(interleaved_shape(x.shape, block))
  perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
  xt = jnp.transpose(xi, perm)
  return xt.reshape(tuple(n // b for n, b in zip(x.shape, block)) + (-1,))


def is_plain_broadcast(shape: Sequence[int], block: Sequence[int]) -> bool:
  """True when each axis is either fully reduced or not at all (per-tensor/channel/token): the scale then
  broadcasts against the value directly, with no interleaved reshape (which XLA:CPU fuses less well)."""
  return all(b == 1 or b == n for n, b in zip(shape, block))


def broadcast_apply(fn, x: jax.Array, block: Sequence[int], *params: jax.Array | None) -> jax.Array:
  """Applies ``fn(x, *params)`` elementwise where each param has the scale shape and is broadcast over its tile."""
  shape = x.shape
  if is_plain_broadcast(shape, block):
    return fn(x, *params)
  xi = x.reshape(interleaved_shape(shape, block))
  sv = scale_view_shape(shape, block)
  ps = [None if p is None else p.reshape(sv) for p in params]
  return fn(xi, *ps).reshape(shape)
