"""`quantize_model`: sequential, block-by-block post-training quantization of any Flax model.

The model is a `BlockwiseModel` (jquant's own SmolLM2 / MiniLM), or any Flax Linen module, seen through
`jquant.ptq.linen_model.LinenModel` (linears, blocks and linear groups found by interception). Methods implement the
protocol of `jquant.ptq.methods.base` and the driver never asks which method it runs.

Flow: the inputs of the first block are computed once per calibration batch; the pipeline keeps the current
block's inputs of every batch (memory: one block's activations of the calibration set). Then, per block:

* ``method.float_inputs`` False (RTN, GPTQ, AWQ / SmoothQuant with ``gptq=``): (scales from ``method.transform`` on
  the block's inputs, then) for each linear group in order the block runs on every batch with the already-quantized
  earlier groups while the group's inputs are captured and reduced to a streaming Gram matrix X^T X (GPTQ's Hessian
  up to a scale) plus a small token subsample for the report; each linear is solved (``method.solve``) and written
  back. The block's outputs, recomputed with the quantized block, feed the next block (GPTQ's true-sequential mode).
* ``method.float_inputs`` True (AWQ, SmoothQuant, LLM.int8 as their references): statistics from the float block
  in one capture pass, ``method.transform`` (AWQ scale search + folding + clip search, SmoothQuant migration), then
  every linear solved from its scaled kernel; float outputs feed the next block.

Linears outside the blocks of a generic model are solved last, the whole model being their block.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.paths import get_in, set_in
from jquant.core.quantize import dequantize
from jquant.ptq.access import copy_dicts, get_block, kernel_view, linear_leaves, put_block, set_kernel
from jquant.ptq.capture import capture_block, forward_block
from jquant.ptq.checks import check_blockwise, check_experts_method, check_generic
from jquant.ptq.distributed import check_mesh, shard_batches, shard_params
from jquant.ptq.methods import check_method
from jquant.ptq.moe import check_moe_options, experts_sqnr, solve_experts
from jquant.ptq.protocol import BlockwiseModel
from jquant.ptq.block_solve import learned_block
from jquant.report import LayerReport, PTQReport, layer_sqnr, tree_nbytes
from jquant.ptq.scaling import eff_gram, scale_plan

__all__ = ["quantize_model", "runtime_model"]

PyTree = Any
_HI = jax.lax.Precision.HIGHEST


def runtime_model(model, method=None):
  """The model to run quantized params with.

  Args:
    model: a Flax Linen or NNX module (returns an object whose ``.apply(variables, *args, **kwargs)`` runs the
      unmodified module with QArray kernels through `jquant.ops.qdot`, input scales applied, and the method's
      activation-quantizing matmul for SmoothQuant / LLMInt8), a ``jquant.models.SmolLM2`` / ``MiniLM`` (rebuilt
      with ``matmul=method.matmul`` when the method has one), or a factory ``f(matmul=...) -> model``.
    method: the method given to `quantize_model`; None for weight-only params from any source
      (``jq.quantize_params``, ``jq.qat.convert``, a Hugging Face checkpoint).
  """
  if method is not None:
    check_method(method)
  mm = getattr(method, "matmul", None)
  if _is_nnx_module(model):
    from jquant.ptq.nnx_model import NNXRuntime  # pylint: disable=import-outside-toplevel
    return NNXRuntime(model, mm)
  if _is_flax_module(model):
    from jquant.ptq.runtime import QuantizedRuntime  # pylint: disable=import-outside-toplevel
    return QuantizedRuntime(model, mm)
  if isinstance(model, BlockwiseModel):
    if mm is None:
      return model
    if not hasattr(model, "config"):
      raise TypeError(f"runtime_model: {type(model).__name__} has no config to rebuild it from; construct it with "
                      f"matmul=method.matmul yourself.")
    return type(model)(model.config, matmul=mm, tokenizer=getattr(model, "tokenizer", None))
  if callable(model):
    return model(matmul=mm)
  raise TypeError(f"runtime_model: expected a BlockwiseModel or a factory f(matmul=...), got {type(model).__name__}.")


def _is_flax_module(model) -> bool:
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return (isinstance(model, nn.Module) and not isinstance(model, BlockwiseModel)) or _is_nnx_module(model)


def _is_nnx_module(model) -> bool:
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return isinstance(model, nnx.Module) and not isinstance(model, BlockwiseModel)


_sqnr = layer_sqnr   # one definition, in ptq/report.py


def _full(name: str, p: str) -> str:
  return f"{name}/{p}" if name else p


def _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries, wb=None, ob=None,
                      scaling=None):
  """True-sequential over the groups of block i on the quantized model's inputs; returns the block's outputs.
  ``scaling``: what a transform folded into ``wb`` (its layers' SQNR is then taken in float coordinates)."""
  in_div, out_div = (scaling.in_div, scaling.out_div) if scaling is not None else ({}, {})
  wb = get_block(model, work, name) if wb is None else wb
  ob = get_block(model, out, name) if ob is None else ob
  for paths in groups:
    qpaths = [p for p in paths if keep(_full(name, p))]
    if not qpaths:
      continue
    _, stats = capture_block(model, i, wb, hs, ctxs, qpaths, block_name=name, outputs=False)
    for p in qpaths:
      t0 = time.perf_counter()
      view = kernel_view(model, p)
      fp_leaves = linear_leaves(wb, p, view)
      experts = getattr(model, "experts_of", lambda _: 0)(p)
      if experts:         # stacked MoE experts: per-expert statistics, one stacked solve (jquant.ptq.moe)
        qa, loss, extra = solve_experts(method, fp_leaves["kernel"], stats[p], _full(name, p), *model.moe)
      else:
        qa, loss, extra = _solve(method, _full(name, p), fp_leaves["kernel"], eff_gram(stats[p], fp_leaves), view)
      set_kernel(wb, p, view, dequantize(qa).astype(fp_leaves["kernel"].dtype))
      set_kernel(ob, p, view, qa)
      if experts:
        sq = experts_sqnr(fp_leaves["kernel"], qa, stats[p])
      else:
        sq = _sqnr(fp_leaves, linear_leaves(ob, p, view), stats[p].sample(), out_div=out_div.get(p),
                   matmul=method.matmul, ref_out_div=out_div.get(p))
      k, n = fp_leaves["kernel"].shape[-2:]
      entries.append(LayerReport(_full(name, p), method.name, method.bits, sq, loss, time.perf_counter() - t0, k, n,
                                 extra, in_div.get(p), out_div.get(p)))
  put_block(model, work, name, wb)
  put_block(model, out, name, ob)
  if i == "rest":
    return hs
  return forward_block(model, i, wb, hs, ctxs)


def _solve(method, path, w, gram, view):
  """``method.solve`` with the layer's path in a ValueError (a solver's message alone does not say which of the
  model's linears failed)."""
  try:
    return method.solve(w, gram, view)
  except ValueError as e:
    raise ValueError(f"quantize_model: layer {path}: {e}") from e


def _float_inputs_block(model, i, name, params, out, hs, ctxs, groups, keep, method, entries):
  """Statistics from the float block (AWQ / SmoothQuant / LLM.int8 references): transform, then solve every linear
  from its scaled kernel; returns the float block outputs."""
  rel_keep = lambda p: keep(_full(name, p))
  view_of = lambda p: kernel_view(model, p)
  all_paths = [p for g in groups for p in g]
  fp_block = get_block(model, params, name)
  fp_outs, stats = capture_block(model, i, fp_block, hs, ctxs, all_paths, block_name=name)
  t0 = time.perf_counter()
  block = copy_dicts(get_block(model, out, name))      # float until this block is done (holds earlier QArrays)
  scaling = method.transform(block, stats, groups, scale_plan(model, groups), rel_keep, view_of)
  shared = (time.perf_counter() - t0) / max(len(all_paths), 1)
  for p in all_paths:
    if not rel_keep(p):
      continue
    t0 = time.perf_counter()
    view = view_of(p)
    leaves = linear_leaves(block, p, view)
    qa, loss, extra = _solve(method, _full(name, p), leaves["kernel"], eff_gram(stats[p], leaves), view)
    set_kernel(block, p, view, qa)
    sq = _sqnr(linear_leaves(fp_block, p, view), linear_leaves(block, p, view), stats[p].sample(),
               scaling.in_div.get(p), scaling.out_div.get(p), method.matmul)
    k, n = leaves["kernel"].shape
    entries.append(LayerReport(_full(name, p), method.name, method.bits, sq, loss,
                               shared + time.perf_counter() - t0, k, n, {**scaling.extra.get(p, {}), **extra},
                               scaling.in_div.get(p), scaling.out_div.get(p)))
  put_block(model, out, name, block)
  return fp_outs if i != "rest" else hs


def _run_block(model, i, name, params, work, out, hs, ctxs, groups, keep, method, entries):
  """One block (or the "rest" pass: linears outside blocks) with ``method``; returns the next block's inputs."""
  if getattr(method, "solves_blocks", False) and i != "rest":    # AutoRound: every linear of the block at once
    return learned_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries)
  if method.float_inputs:
    return _float_inputs_block(model, i, name, params, out, hs, ctxs, groups, keep, method, entries)
  if not method.has_transform:
    return _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries)
  # scales searched on the quantized model's inputs, then true-sequential solves of the scaled weights
  wb = get_block(model, work, name)
  _, stats = capture_block(model, i, wb, hs, ctxs, [p for g in groups for p in g], block_name=name,
                           outputs=False)
  block = copy_dicts(wb)
  scaling = method.transform(block, stats, groups, scale_plan(model, groups), lambda p: keep(_full(name, p)),
                             lambda p: kernel_view(model, p))
  ob = copy_dicts(block)
  if i == "rest":   # ``block`` is the whole working tree (dequantized blocks): keep ``out``'s quantized blocks and
    ob = copy_dicts(out)     # take the scaled outside linears (a generic model's plan only touches their leaves)
    for p in (p for g in groups for p in g):
      set_in(ob, p, copy_dicts(get_in(block, p)))
  return _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries, wb=block, ob=ob,
                           scaling=scaling)


@functools.lru_cache(maxsize=16)
def _jit_embed(model):
  return jax.jit(model.embed)


def _embed_all(model, params, batches) -> tuple[list, list, int]:
  hs, ctxs, tokens = [], [], 0
  embed = _jit_embed(model)
  for b, batch in enumerate(batches):
    try:
      h, ctx = embed(params, batch)
    except (TypeError, ValueError) as e:
      shapes = jax.tree.map(lambda a: getattr(a, "shape", a), batch)
      raise ValueError(f"quantize_model: calibration batch {b} (shapes {shapes}) failed in the model: {e}") from e
    if not bool(jnp.all(jnp.isfinite(h))):
      raise ValueError(f"quantize_model: the embedding of calibration batch {b} holds NaN/inf; check the params.")
    hs.append(h)
    ctxs.append(ctx)
    m = ctx.get("mask") if isinstance(ctx, dict) else None
    tokens += int(jnp.sum(m)) if m is not None and tuple(m.shape) == tuple(h.shape[:2]) else \
        int(np.prod(h.shape[:-1]))
  return hs, ctxs, tokens


def _generic_model(model, params, batches, blocks, apply_fn):
  """A `LinenModel` for a user's Linen module, an `NNXModel` for an NNX one."""
  from jquant.ptq.linen_model import LinenModel  # pylint: disable=import-outside-toplevel
  if not _is_flax_module(model):
    raise TypeError(f"quantize_model: model {type(model).__name__} is neither a flax.linen.Module nor a "
                    "flax.nnx.Module and does not implement jquant.ptq.BlockwiseModel (block_names, embed, "
                    "apply_block, linear_groups).")
  if _is_nnx_module(model):
    from jquant.ptq.nnx_model import NNXModel  # pylint: disable=import-outside-toplevel
    return NNXModel(model, params, batches[0], blocks=blocks, apply_fn=apply_fn)
  if not hasattr(params, "keys"):
    raise TypeError(f"quantize_model: params must be the model's Flax 'params' dict, got {type(params).__name__}.")
  if "params" in params and len(params) == 1:
    raise ValueError("quantize_model: pass the 'params' collection itself (variables['params']), not "
                     "{'params': ...}.")
  return LinenModel(model, params, batches[0], blocks=blocks, apply_fn=apply_fn)


def quantize_model(model, params: PyTree, calib_batches: Iterable, method, *, skip: Sequence[str] = (),
                   blocks: str | None = None, apply_fn=None, progress: bool = True, mesh=None,
                   data_axis: str = "data", model_axis: str = "model", moe_min_tokens: int = 32,
                   moe_fallback: str = "rtn") -> tuple[PyTree, PTQReport]:
  """Quantizes every linear of ``model``'s blocks with ``method``, calibrated on ``calib_batches``.

  Args:
    model: a `jquant.ptq.BlockwiseModel` (e.g. ``jquant.models.SmolLM2`` / ``MiniLM``).
    params: its float Flax params dict (not modified).
    calib_batches: an iterable of model batches (SmolLM2: (B, T) int32 token ids; MiniLM: ``encode_batch`` dicts).
      Same-shaped batches compile once.
    method: ``RTN(spec)``, ``GPTQ(spec, ...)``, ``AWQ(spec, ..., gptq=None)``, ``SmoothQuant(alpha, act)`` or
      ``LLMInt8(threshold)``.
    skip: glob patterns over full linear paths (``"layers_0/self_attn/q_proj"``) to leave in float.
    progress: a tqdm bar over blocks on stderr.
    mesh: a `jax.sharding.Mesh` to calibrate on (`jquant.ptq.distributed`): batches (this process's own) split over
      ``data_axis``, kernels over ``model_axis`` (unless already laid out on the mesh), statistics all-reduced over
      the data axis, N-sharded kernels solved shard-locally; the quantized kernels keep their sharding.
    moe_min_tokens: stacked MoE experts (`jquant.ptq.moe`) that received fewer calibration tokens are "starved".
    moe_fallback: what starved experts get: ``"rtn"`` (round-to-nearest, with a warning) or ``"all_tokens"`` (solved
      with the statistics of every token reaching the layer). The report lists each expert's tokens.

  Returns:
    ``(qparams, report)``: params with `QArray` kernels (plus folded norm scales / ``input_scale`` leaves for
    AWQ / SmoothQuant), and a `PTQReport`. Run SmoothQuant / LLMInt8 params with ``runtime_model(model, method)``.

  Raises:
    TypeError: a model that does not implement the protocol, an unknown method, bad ``skip``.
    ValueError: empty ``calib_batches``, NaN/inf activations, a spec that does not fit a layer (group size not
      dividing the input features), params that do not match the model.
  """
  t_start = time.perf_counter()
  check_method(method)
  if calib_batches is None or isinstance(calib_batches, (str, dict)) or not hasattr(calib_batches, "__iter__"):
    raise TypeError(f"quantize_model: calib_batches must be an iterable of model batches (a list of (B, T) token "
                    f"arrays or encode_batch dicts), got {type(calib_batches).__name__}.")
  if hasattr(calib_batches, "ndim"):
    raise TypeError(f"quantize_model: calib_batches is one array of shape {tuple(calib_batches.shape)}; pass a list "
                    "of batches, e.g. [windows[i:i + 4] for i in range(0, len(windows), 4)].")
  batches = list(calib_batches)
  if not batches:
    raise ValueError("quantize_model: calib_batches is empty; pass at least one calibration batch (e.g. "
                     "jquant.eval.lm_calibration_windows(model) split into batches).")
  if mesh is not None:
    check_mesh(mesh, data_axis, model_axis)
    batches = shard_batches(batches, mesh, data_axis)
  generic = not isinstance(model, BlockwiseModel)
  if generic:
    model = _generic_model(model, params, batches, blocks, apply_fn)
    params = model.params_tree(params)         # NNX: the nnx.State as a dict of arrays (string keys)
    groups, names, skip = check_generic(model, params, method, skip)
    check_experts_method(model, method)
    check_moe_options(moe_min_tokens, moe_fallback)
    model.moe = (moe_min_tokens, moe_fallback)
  else:
    groups, names, skip = check_blockwise(model, params, method, skip)
  if mesh is not None:
    params = shard_params(params, mesh, model_axis)
  keep = lambda full: not any(fnmatch.fnmatchcase(full, pat) for pat in skip)
  if names:
    hs, ctxs, tokens = _embed_all(model, params, batches)
  else:
    hs, ctxs, tokens = [], [], 0
  out = copy_dicts(params)
  work = copy_dicts(params)
  entries: list[LayerReport] = []
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(names), desc=f"PTQ {method.name}", unit="block", file=sys.stderr)
  try:
    for i, name in enumerate(names):
      hs = _run_block(model, i, name, params, work, out, hs, ctxs, groups, keep, method, entries)
      if bar is not None:
        bar.update(1)
    if generic:
      model.finish(out)
      model.finish(work)
      if model.outside:      # linears outside the blocks: the whole model is their block
        _run_block(model, "rest", "", params, work, out, batches, [None] * len(batches),
                   model.outside_groups(), keep, method, entries)
        if not names:
          tokens = sum(int(np.prod(jax.tree.leaves(b)[0].shape[:2])) for b in batches)
  finally:
    if bar is not None:
      bar.close()
  all_paths = [_full(n, p) for n in names for g in groups for p in g]
  if generic:
    all_paths += list(model.outside)
  skipped = tuple(p for p in all_paths if not keep(p))
  report = PTQReport(method=method, layers=tuple(entries), skipped=skipped, seconds=time.perf_counter() - t_start,
                     bytes_before=tree_nbytes(params), bytes_after=tree_nbytes(out), calib_batches=len(batches),
                     calib_tokens=tokens, unsupported=tuple(sorted(getattr(model, "unsupported", {}).items())))
  return (model.export_params(out) if generic else out), report
