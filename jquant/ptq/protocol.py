"""The contract between real model definitions and the sequential PTQ pipeline.

A model that wants layer-by-layer calibration (GPTQ's sequential mode, AWQ, SmoothQuant) exposes itself as a
stack of blocks. The pipeline runs ``embed`` once per calibration batch, then, block by block, captures the inputs
of every linear layer inside ``apply_block`` (with ``flax.linen.intercept_methods``), solves, and feeds the block's
outputs, computed with the already-quantized weights, to the next block.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import jax

PyTree = Any


@runtime_checkable
class BlockwiseModel(Protocol):
  """A model split into embed -> blocks -> head.

  ``params`` is the full Flax ``params`` collection (a nested dict). Block ``i``'s parameters are
  ``params[block_names()[i]]`` (one top-level key per block, e.g. ``"layers_0"``).
  """

  def block_names(self) -> Sequence[str]:
    """Top-level param keys of the blocks, in execution order."""

  def embed(self, params: PyTree, batch: PyTree) -> tuple[jax.Array, PyTree]:
    """Runs everything before the first block. Returns (hidden, ctx); ctx (masks, positions) is passed to blocks."""

  def apply_block(self, i: int, block_params: PyTree, hidden: jax.Array, ctx: PyTree) -> jax.Array:
    """Runs block ``i`` on ``hidden``; its linear layers are Flax modules whose ``__call__`` takes the input."""

  def linear_groups(self) -> Sequence[Sequence[str]]:
    """Sub-groups of linear layers inside a block, quantized in order, as paths relative to the block,
    e.g. ``[["self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj"], ["self_attn/o_proj"], ...]``."""
