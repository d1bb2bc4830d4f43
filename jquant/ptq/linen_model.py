"""Bring your own Flax Linen model: linears, blocks and linear groups found by interception.

`LinenModel(module, params, batch)` traces ``module.apply({"params": params}, *batch)`` once (abstractly, with
``jax.eval_shape``) under ``nn.intercept_methods`` and records:

* every linear layer the forward calls: ``nn.Dense``, ``nn.DenseGeneral`` (any ``axis`` / ``features`` tuples; no
  ``batch_dims``) and ``nn.Einsum`` (two operands, no axis shared by input, kernel and output). Each gets a
  `jquant.core.views.MatrixView` (its kernel as (K, N)) and the input axes it contracts. Any other module that owns
  a ``kernel`` param (``nn.Conv``, a DenseGeneral with ``batch_dims``, ...) is *unsupported* and listed as such;
* the blocks: repeated sibling modules with the same parameter structure (``layers_0..N``, ``blocks_0..N``,
  ``h_0..N``; the family covering the most linears wins) or an ``nn.scan``-ned layer (its params carry a leading
  layer axis), or the modules whose path matches ``blocks=REGEX``. A block's first positional input must be the
  previous block's output (or the first element of a returned tuple, as ``nn.scan`` bodies return ``(carry, y)``),
  its other inputs the same for every block (masks, positions);
* the linear groups of a block: linears that read the same input array (q/k/v, gate/up), in call order.

It then implements the `jquant.ptq.BlockwiseModel` protocol (``embed`` = everything before the first block,
``apply_block`` = the block module run alone with ``module.clone(parent=None)``), plus the hooks the pipeline uses
for N-D kernels, scanned params and linears outside the blocks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import flax.linen as nn
import jax

from jquant.core.paths import join
from jquant.ptq.batches import call_args
from jquant.ptq.sites import LinearTypes, classify_module
from jquant.ptq.traced import (LinearSite, TracedModel, _Call, _Stop, classify_linear,  # noqa: F401
                               experts_call, flatten_input)

PyTree = Any

__all__ = ["LinenModel", "LinearSite", "linear_site", "linen_intercept", "flatten_input"]

_LINEN_TYPES = LinearTypes(nn.Dense, nn.DenseGeneral, nn.Einsum, "batch_dims", experts=True)


def linen_intercept(fn):
  """``nn.intercept_methods`` calling ``fn(next_fun, args, kwargs, path, module)`` for every ``__call__`` (``path``:
  the module's '/'-joined param path)."""

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    return fn(next_fun, args, kwargs, join(context.module.path), context.module)

  return nn.intercept_methods(interceptor)


def _input_scales_applied(module):
  """A context in which linears whose params hold an ``input_scale`` (AWQ / SmoothQuant scales written by
  ``method.transform`` on the working params, e.g. before ``gptq=`` solves) multiply their input by it, as the
  quantized runtime does: Flax alone would ignore the extra param. Registered after the pipeline's capture
  interceptor, so captures still see the linear's raw input."""
  from jquant.ptq.runtime import QuantizedRuntime  # pylint: disable=import-outside-toplevel  (runtime imports us)
  return nn.intercept_methods(QuantizedRuntime(module)._interceptor)  # pylint: disable=protected-access


def linear_site(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[LinearSite | None, str | None]:
  """(site, None) for a supported linear call, (None, reason) for a module with a kernel it cannot quantize,
  (None, None) for anything else."""
  if not mod.has_variable("params", "kernel"):
    return None, None
  kshape = tuple(getattr(mod.get_variable("params", "kernel"), "shape", ()))
  return classify_module(_LINEN_TYPES, mod, kshape, args, kwargs, mod.has_variable("params", "bias"))


class LinenModel(TracedModel):
  """A user's Linen module seen as blocks of linear groups (see the module docstring).

  Args:
    module: the Linen module (unmodified).
    params: its ``params`` collection.
    batch: one calibration batch (a tuple is splatted, a dict is keyword arguments), used for the abstract trace.
    blocks: optional regex over module paths (``"layers_\\d+"``, ``"decoder/layers"``) naming the blocks.
    apply_fn: optional ``f(variables, batch) -> out`` used instead of ``module.apply``.
  """

  def __init__(self, module: nn.Module, params: PyTree, batch: Any, *, blocks: str | None = None, apply_fn=None):
    self.module = module
    self._apply_fn = apply_fn
    self._init_tables()
    calls = self._trace(params, batch)
    self._find_blocks(calls, params, blocks)

  # --- tracing ---
  def _forward(self, variables, batch):
    with _input_scales_applied(self.module):
      if self._apply_fn is not None:
        return self._apply_fn(variables, batch)
      args, kwargs = call_args(batch)
      return self.module.apply(variables, *args, **kwargs)

  def _trace(self, params, batch) -> list[_Call]:
    calls: list[_Call] = []

    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      path = tuple(mod.path)
      site, why = linear_site(mod, args, kwargs)
      out = next_fun(*args, **kwargs)
      if not self._record(join(path), site, why, args[0] if args else None):
        calls.append(_Call(path, mod.clone(parent=None), args, kwargs, out))
      return out

    def run(p, b):
      with nn.intercept_methods(interceptor):
        return self._forward({"params": p}, b)

    self._trace_batch0(run, params, batch, calls)
    self._check_found_linears(calls, "nn.Dense, nn.DenseGeneral, nn.Einsum")
    return calls

  def embed(self, params, batch):
    """Inputs of the first block: (hidden, ctx) with ctx the block's other array inputs. The forward stops at the
    first block (its cost is the embedding only); jit-compatible."""
    target = self.block_paths[0]

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and tuple(context.module.path) == target:
        dyn, _ = self._split_ctx(args[1:], kwargs)
        raise _Stop((args[0], dyn))
      return next_fun(*args, **kwargs)

    try:
      with nn.intercept_methods(interceptor):
        self._forward({"params": params}, batch)
    except _Stop as s:
      return self._outer_values(s) if self.scanned else s.payload
    raise ValueError(f"quantize_model: block {join(target)} was not called on this batch.")

  def _outer_values(self, stop: _Stop):
    """For an ``nn.scan``-ned block: the scan's own inputs (its initial carry, the broadcast arguments), read from
    Flax's scan frame, since the body only sees per-iteration tracers."""
    h, dyn = stop.payload
    tb, frame_locals = stop.__traceback__, None
    while tb is not None:
      loc = tb.tb_frame.f_locals
      if tb.tb_frame.f_code.co_name == "scan_fn" and "init" in loc and "args" in loc:
        frame_locals = loc
      tb = tb.tb_next
    if frame_locals is None:
      raise ValueError(f"quantize_model: could not read the inputs of the scanned block "
                       f"{join(self.block_paths[0])} (unknown Flax scan internals); unroll the layers or pass "
                       "blocks=REGEX naming other modules.")
    init_leaves = jax.tree.leaves(frame_locals["init"])
    h_leaves, h_tree = jax.tree.flatten(h)
    outer = init_leaves[len(init_leaves) - len(h_leaves):]
    if [(x.shape, x.dtype) for x in outer] != [(x.shape, x.dtype) for x in h_leaves]:
      raise ValueError(f"quantize_model: the carry of scanned block {join(self.block_paths[0])} is not its "
                       "first argument; pass blocks=REGEX or unroll the layers.")
    arg_leaves = jax.tree.leaves(frame_locals["args"])
    if any(not any(d is a for a in arg_leaves) for d in dyn):
      raise ValueError(f"quantize_model: scanned block {join(self.block_paths[0])} takes per-layer inputs "
                       "(in_axes other than nn.broadcast); only broadcast extra inputs are supported.")
    return jax.tree.unflatten(h_tree, outer), dyn

  def apply_block(self, i: int, block_params, hidden, ctx):
    args, kwargs = self._join_ctx(ctx)
    with _input_scales_applied(self.module):
      out = self._block_module.apply({"params": block_params}, hidden, *args, **kwargs)
    return out[0] if self._out_index == 0 else out

  def linear_site(self, mod, args, kwargs):
    return linear_site(mod, args, kwargs)

  def forward_params(self, params, batch):
    return self._forward({"params": params}, batch)

  @staticmethod
  def intercept(fn) -> contextlib.AbstractContextManager:
    """A context in which ``fn(next_fun, args, kwargs, path, module)`` sees every module call."""
    return linen_intercept(fn)
