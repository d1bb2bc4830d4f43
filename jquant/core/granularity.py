"""Granularities: which elements share one scale.

Every granularity maps an array shape to a *block shape* (the tile of elements that share a scale). The scale has
the same rank as the value, with ``scale.shape[i] == shape[i] // block[i]``. So one implementation serves them all:
reshape the value into tiles, reduce each tile, broadcast back.

Examples (a Flax kernel ``w`` of shape (in, out) = (4096, 11008)):
  PerTensor()                    -> scale (1, 1)
  PerChannel(axis=-1)            -> scale (1, 11008)       one per output channel
  PerGroup(axis=0, size=128)     -> scale (32, 11008)      groups of 128 consecutive inputs, per output channel
  PerBlock((128, 128))           -> scale (32, 86)
  PerToken() on x (2, 7, 4096)   -> scale (2, 7, 1)        one per token
Stacked weights (experts, scanned layers) of shape (E, in, out): ``batch_axes=(0,)`` gives each slice its own scales,
e.g. PerChannel(axis=-1, batch_axes=(0,)) -> scale (E, 1, out).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_axis_arg(obj, name: str) -> None:
  v = getattr(obj, name)
  if not _is_int(v):
    raise TypeError(f"{type(obj).__name__}({name}={v!r}): {name} must be an int axis such as -1 or 0, got "
                    f"{type(v).__name__}; pass e.g. {type(obj).__name__}({name}=-1).")
  object.__setattr__(obj, name, int(v))


def _check_batch_axes_arg(obj) -> None:
  ba = obj.batch_axes
  if _is_int(ba):
    raise TypeError(f"{type(obj).__name__}(batch_axes={ba!r}): batch_axes must be a tuple of ints; write "
                    f"batch_axes=({ba},).")
  if not isinstance(ba, (tuple, list)) or not all(_is_int(a) for a in ba):
    raise TypeError(f"{type(obj).__name__}(batch_axes={ba!r}): batch_axes must be a tuple of int axes, e.g. (0,).")
  ba = tuple(int(a) for a in ba)
  if len(set(ba)) != len(ba):
    raise ValueError(f"{type(obj).__name__}(batch_axes={ba!r}) lists an axis twice; give each batch axis once.")
  object.__setattr__(obj, "batch_axes", ba)


def _check_shape(shape: Sequence[int], what: str) -> None:
  if any(n == 0 for n in shape):
    raise ValueError(f"{what}: the array of shape {tuple(shape)} has no elements (an axis of length 0); there is "
                     "nothing to quantize. Skip empty arrays (e.g. with a QuantConfig skip pattern).")


def _no_overlap(axis: int, batch: tuple[int, ...], obj) -> None:
  if axis in batch:
    raise ValueError(f"{obj!r}: axis {obj.axis} is also a batch axis; the scale axis and the batch axes must "
                     "differ (batch axes already get one scale per index).")


def _norm_axis(axis: int, ndim: int, what: str) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(f"{what}: axis={axis} is out of range for an array of rank {ndim}; "
                     f"use an axis in [{-ndim}, {ndim - 1}].")
  return axis % ndim


def _norm_axes(axes: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
  return tuple(sorted({_norm_axis(a, ndim, what) for a in axes}))


@dataclasses.dataclass(frozen=True)
class PerTensor:
  """One scale for the whole array (per slice of ``batch_axes`` if given)."""

  batch_axes: tuple[int, ...] = ()

  def __post_init__(self):
    _check_batch_axes_arg(self)

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    _check_shape(shape, repr(self))
    batch = _norm_axes(self.batch_axes, len(shape), repr(self))
    return tuple(1 if i in batch else n for i, n in enumerate(shape))


@dataclasses.dataclass(frozen=True)
class PerChannel:
  """One scale per index along ``axis``, reducing over all other axes except ``batch_axes``."""

  axis: int = -1
  batch_axes: tuple[int, ...] = ()

  def __post_init__(self):
    _check_axis_arg(self, "axis")
    _check_batch_axes_arg(self)

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    _check_shape(shape, repr(self))
    ax, batch = _norm_axis(self.axis, len(shape), repr(self)), _norm_axes(self.batch_axes, len(shape), repr(self))
    _no_overlap(ax, batch, self)
    keep = (ax,) + batch
    return tuple(1 if i in keep else n for i, n in enumerate(shape))


@dataclasses.dataclass(frozen=True)
class PerGroup:
  """Groups of ``size`` consecutive elements along ``axis``; one scale per group and per index of other axes."""

  axis: int = 0
  size: int = 128
  batch_axes: tuple[int, ...] = ()

  def __post_init__(self):
    if not _is_int(self.size):
      raise TypeError(f"PerGroup(size={self.size!r}): size must be an int such as 32, 64 or 128, got "
                      f"{type(self.size).__name__}.")
    if self.size < 1:
      raise ValueError(f"PerGroup(size={self.size!r}): size must be a positive int such as 32, 64 or 128.")
    object.__setattr__(self, "size", int(self.size))
    _check_axis_arg(self, "axis")
    _check_batch_axes_arg(self)

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    _check_shape(shape, repr(self))
    ax = _norm_axis(self.axis, len(shape), repr(self))
    _no_overlap(ax, _norm_axes(self.batch_axes, len(shape), repr(self)), self)
    if shape[ax] % self.size:
      raise ValueError(
          f"PerGroup(axis={self.axis}, size={self.size}) needs axis {self.axis} (length {shape[ax]}) to be a "
          f"multiple of {self.size}; got shape {tuple(shape)}. Choose a size that divides {shape[ax]} "
          f"(e.g. {_divisor_hint(shape[ax], self.size)}), or use PerChannel().")
    return tuple(self.size if i == ax else 1 for i in range(len(shape)))


@dataclasses.dataclass(frozen=True)
class PerToken:
  """One scale per token: per index of every axis but the last (activations ``(..., features)``)."""

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    if len(shape) < 1:
      raise ValueError("PerToken() needs an array of rank >= 1 shaped (..., features); got a scalar.")
    _check_shape(shape, repr(self))
    return (1,) * (len(shape) - 1) + (shape[-1],)


@dataclasses.dataclass(frozen=True)
class PerBlock:
  """One scale per tile of ``shape`` over the trailing axes (leading axes get one tile per index)."""

  shape: tuple[int, ...] = (128, 128)

  def __post_init__(self):
    if not isinstance(self.shape, (tuple, list)) or not self.shape or any((not _is_int(b)) or b < 1
                                                                          for b in self.shape):
      raise ValueError(f"PerBlock(shape={self.shape!r}): shape must be a non-empty tuple of positive ints, "
                       "e.g. (128, 128).")
    object.__setattr__(self, "shape", tuple(int(b) for b in self.shape))

  def block_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    _check_shape(shape, repr(self))
    if len(self.shape) > len(shape):
      raise ValueError(f"PerBlock(shape={self.shape}) has more axes than the array of shape {tuple(shape)}.")
    lead = len(shape) - len(self.shape)
    for n, b in zip(shape[lead:], self.shape):
      if n % b:
        raise ValueError(f"PerBlock(shape={self.shape}) needs trailing axes {tuple(shape[lead:])} to be multiples "
                         f"of the block; {n} is not a multiple of {b}. Pick a block that divides the shape.")
    return (1,) * lead + tuple(self.shape)


Granularity = Union[PerTensor, PerChannel, PerGroup, PerToken, PerBlock]
GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerToken, PerBlock)


def scale_shape(granularity: Granularity, shape: Sequence[int]) -> tuple[int, ...]:
  """The shape of the scale (same rank as the value)."""
  block = granularity.block_shape(tuple(shape))
  return tuple(n // b for n, b in zip(shape, block))


def group_axis(granularity: Granularity, ndim: int) -> int | None:
  """The axis along which ``PerGroup`` groups (normalised), else None."""
  if isinstance(granularity, PerGroup):
    return granularity.axis % ndim
  return None


def _divisor_hint(n: int, size: int) -> int:
  divs = [d for d in (256, 192, 128, 96, 64, 48, 32, 16, 8) if n % d == 0]
  return min(divs, key=lambda d: abs(d - size)) if divs else 1
