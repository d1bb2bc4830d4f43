"""Shared plumbing for models exposed as ``jquant.ptq.protocol.BlockwiseModel`` (embed -> blocks -> head)."""

from __future__ import annotations

import abc
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jquant.models.layers import Linear

PyTree = Any


class BlockwiseBase(abc.ABC):
  """Holds a full Linen model and its (homogeneous) block module; subclasses say how to call them.

  Subclasses set ``self.module`` (the full model), ``self._block`` (one block module, unnamed), ``self._prefix``
  (block param key prefix) and ``self._num_blocks`` before calling ``super().__init__()``, and implement
  ``embed``, ``_block_args``, ``head`` and ``apply``.
  """

  module: nn.Module
  _block: nn.Module
  _prefix: str
  _num_blocks: int

  def __init__(self):
    self._jit_embed = jax.jit(self.embed)
    self._jit_block = jax.jit(self._run_block)
    self._jit_head = jax.jit(self.head)

  # --- BlockwiseModel protocol ---
  def block_names(self) -> Sequence[str]:
    return tuple(f"{self._prefix}{i}" for i in range(self._num_blocks))

  @abc.abstractmethod
  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    """Runs everything before the first block; returns (hidden (B, T, hidden), ctx)."""

  def apply_block(self, i: int, block_params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """Runs block ``i`` as a Linen module (so ``nn.intercept_methods`` sees each Linear call).

    Args:
      i: block index in [0, len(block_names())).
      block_params: ``params[block_names()[i]]``.
      hidden: (B, T, hidden).
      ctx: what ``embed`` returned next to the hidden states.

    Returns:
      (B, T, hidden).
    """
    if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < self._num_blocks:
      raise ValueError(f"apply_block: block index must be an int in [0, {self._num_blocks}), got {i!r}.")
    return self._run_block(block_params, hidden, ctx)

  @abc.abstractmethod
  def head(self, params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """Runs everything after the last block (final norm + LM head, or pooling)."""

  @abc.abstractmethod
  def apply(self, params: PyTree, batch: PyTree) -> jax.Array:
    """The whole model in one Linen apply (equal to embed -> blocks -> head)."""

  # --- hooks of jquant.ptq's capture (homogeneous blocks: one compiled program serves every block) ---
  def block_fn(self, i):
    """fn(block_params, hidden, ctx) running block ``i`` (the index only selects params: blocks are alike)."""
    return lambda bp, h, ctx: self._run_block(bp, h, ctx)

  def capture_input(self, module: nn.Module, args: tuple, kwargs: dict):  # pylint: disable=unused-argument
    """The input of a jquant `Linear` call (what PTQ statistics are taken of), else None."""
    return args[0] if isinstance(module, Linear) else None

  # --- helpers ---
  def _run_block(self, block_params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    return self._block.apply({"params": block_params}, hidden, *self._block_args(ctx))

  @abc.abstractmethod
  def _block_args(self, ctx: PyTree) -> tuple:
    """The block module's positional arguments after ``hidden``, taken from ctx."""

  def hidden_states(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    """embed -> every block, jit-compiled (one block program reused for all blocks). Returns (hidden, ctx)."""
    self._check_params(params)
    hidden, ctx = self._jit_embed(params, batch)
    for name in self.block_names():
      hidden = self._jit_block(params[name], hidden, ctx)
    return hidden, ctx

  def forward_blockwise(self, params: PyTree, batch: PyTree) -> jax.Array:
    """Same result as ``apply`` via one jit-compiled block function reused for every block.

    Compiles three small programs (embed, block, head) instead of one unrolled whole-model program, which
    keeps compile time flat in depth. Blocks whose params differ in structure (e.g. mixed quantization)
    compile once per distinct structure.
    """
    hidden, ctx = self.hidden_states(params, batch)
    return self._jit_head(params, hidden, ctx)

  def _check_params(self, params: PyTree) -> None:
    if not isinstance(params, dict) and not hasattr(params, "keys"):
      raise TypeError(f"params must be the Flax 'params' dict (nested dict), got {type(params).__name__}.")
    missing = [n for n in self.block_names() if n not in params]
    if missing:
      raise ValueError(f"params lack the block keys {missing[:3]}{'...' if len(missing) > 3 else ''}; expected "
                       f"{self._num_blocks} blocks named {self._prefix}0..{self._prefix}{self._num_blocks - 1}. "
                       f"Pass the 'params' collection itself, not {{'params': ...}}.")


def run_method(module: nn.Module, params: PyTree, method: Callable, *args) -> Any:
  """``module.apply({'params': params}, *args, method=method)``."""
  return module.apply({"params": params}, *args, method=method)
