"""Shared plumbing for models exposed as ``jquant.ptq.protocol.BlockwiseModel`` (embed -> blocks -> head)."""

from __future__ import annotations

import abc
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jquant.models.layers import Linear

PyTree = Any


class ArchConfig:
  """What every architecture's frozen config dataclass checks and derives (a mixin): sizes are positive ints
  (``vocab_size``, ``hidden``, ``intermediate``, ``num_layers``, ``num_heads`` and the subclass's ``_sizes``), the
  heads divide the width; ``head_dim``."""

  _sizes: tuple[str, ...] = ()

  def __post_init__(self):
    name = type(self).__name__
    for f in ("vocab_size", "hidden", "intermediate", "num_layers", "num_heads") + self._sizes:
      v = getattr(self, f)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name}.{f} must be a positive int, got {v!r}.")
    if self.hidden % self.num_heads:
      raise ValueError(f"{name}: hidden ({self.hidden}) must be divisible by num_heads ({self.num_heads}).")

  @property
  def head_dim(self) -> int:
    return self.hidden // self.num_heads


class BlockwiseBase(abc.ABC):
  """An architecture as a BlockwiseModel: its config, full Linen model and (homogeneous) block module.

  Subclasses set the class attributes ``config_type`` (the config dataclass, whose no-argument default is the
  architecture's preset), ``module_type`` / ``block_type`` (Linen modules built as ``(config, matmul)``) and
  ``block_prefix`` (block param key prefix, blocks ``{prefix}0 .. {prefix}{config.num_layers - 1}``), and implement
  ``embed``, ``_block_args``, ``head`` and ``apply``.

  Args:
    config: a ``config_type`` (None: its defaults).
    matmul: optional hashable ``matmul(x, kernel)`` used by every Linear (see ``jquant.models.layers.Linear``).
    tokenizer: optional ``tokenizers.Tokenizer``.
  """

  config_type: type
  module_type: type
  block_type: type
  block_prefix: str

  def __init__(self, config: Any = None, matmul: Callable | None = None, tokenizer: Any = None):
    name = type(self).__name__
    config = self.config_type() if config is None else config
    if not isinstance(config, self.config_type):
      raise TypeError(f"{name}: config must be a {self.config_type.__name__}, got {type(config).__name__}.")
    self.config, self.matmul, self.tokenizer = config, matmul, tokenizer
    self.module: nn.Module = self.module_type(config, matmul)
    self._block: nn.Module = self.block_type(config, matmul)
    self._prefix, self._num_blocks = self.block_prefix, config.num_layers
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

  def _tokenizer(self, what: str) -> Any:
    if self.tokenizer is None:
      raise ValueError(f"{type(self).__name__}.{what}: this model has no tokenizer; load it with its loader "
                       "(load_smollm2 / load_minilm / from_pretrained) or pass tokenizer= to the constructor.")
    return self.tokenizer

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
