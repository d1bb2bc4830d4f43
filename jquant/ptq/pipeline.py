"""`quantize_model`: sequential, block-by-block post-training quantization of a `BlockwiseModel`.

Flow (all methods): ``embed`` runs once per calibration batch; the pipeline keeps the current block's inputs of
every batch (memory: one block's activations of the calibration set). Then, per block:

* RTN / GPTQ (and AWQ / SmoothQuant with ``gptq=``): for each linear sub-group of ``linear_groups()`` in order,
  the block runs on every batch with the already-quantized earlier groups (dequantized in the working params) while
  ``nn.intercept_methods`` captures the group's inputs, reduced to a streaming Gram matrix X^T X (GPTQ's Hessian up
  to a scale) plus a small token subsample for the report; each linear is solved and written back. The block's
  outputs are then recomputed with the quantized block and feed the next block (GPTQ's sequential / true-sequential
  mode).
* AWQ / SmoothQuant / LLM.int8: as their references, statistics come from the float model (one capture pass per
  block, float outputs feed the next block). AWQ searches each group's scales on its float inputs with the MSE of the
  group's concatenated linear outputs over all calibration tokens (computed exactly from the Gram matrix), folds
  them (`jquant.ptq.scaling`), searches clip thresholds, then rounds. SmoothQuant smooths the norm-fed groups and
  stores INT8 per-channel kernels for every linear; LLM.int8 stores INT8 per-channel kernels.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import sys
import time
import warnings
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.granularity import PerGroup, PerTensor
from jquant.core.qarray import QArray
from jquant.core.quantize import dequantize
from jquant.models.layers import default_matmul
from jquant.ptq import methods as M
from jquant.ptq.capture import capture_block, forward_block
from jquant.ptq.protocol import BlockwiseModel
from jquant.ptq.report import LayerReport, PTQReport, output_sqnr_db, tree_nbytes
from jquant.ptq.access import (copy_dicts, get_block, get_in, kernel_of, kernel_view, linear_leaves, put_block,
                               set_kernel)
from jquant.ptq.scaling import apply_group_scales, scale_plan
from jquant.solvers.awq import apply_clip, awq_clip, awq_scales
from jquant.solvers.gptq import gptq
from jquant.solvers.llm_int8 import llm_int8_prepare
from jquant.solvers.rtn import rtn
from jquant.solvers.smoothquant import smoothquant_scales, w8a8_quantize_weight, weight_absmax

__all__ = ["quantize_model", "runtime_model"]

PyTree = Any
_HI = jax.lax.Precision.HIGHEST


def runtime_model(model, method):
  """The model to run ``qparams`` with: for SmoothQuant / LLMInt8, ``model`` rebuilt with ``matmul=method.matmul``
  (activation quantization at run time); for weight-only methods ``model`` itself.

  Args:
    model: a ``jquant.models.SmolLM2`` / ``MiniLM`` (anything with ``config``, ``tokenizer`` and a
      ``(config, matmul=, tokenizer=)`` constructor), or a factory ``f(matmul=...) -> model``.
    method: the method config given to `quantize_model`.
  """
  M.check_method(method)
  mm = getattr(method, "matmul", None)
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
  return isinstance(model, nn.Module) and not isinstance(model, BlockwiseModel)


def _check_inputs(model, params, method, skip) -> tuple[list[tuple[str, ...]], list[str], tuple[str, ...]]:
  if not isinstance(model, BlockwiseModel):
    raise TypeError(f"quantize_model: model {type(model).__name__} does not implement jquant.ptq.BlockwiseModel "
                    "(block_names, embed, apply_block, linear_groups); wrap it like jquant.models.SmolLM2.")
  M.check_method(method)
  if not hasattr(params, "keys"):
    raise TypeError(f"quantize_model: params must be the model's Flax 'params' dict, got {type(params).__name__}.")
  if isinstance(skip, str) or not all(isinstance(p, str) for p in skip):
    raise TypeError(f"quantize_model: skip must be a sequence of glob patterns over linear paths (e.g. "
                    f"('layers_0/*', '*/down_proj')), got {skip!r}.")
  names = list(model.block_names())
  groups = [tuple(g) for g in model.linear_groups()]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f"quantize_model: params lack the blocks {missing[:3]}; pass the 'params' collection itself "
                     "(not {'params': ...}).")
  bad_fit = []
  for n in names:
    for g in groups:
      for p in g:
        try:
          w = get_in(params[n], f"{p}/kernel")
        except (KeyError, TypeError) as e:
          raise ValueError(f"quantize_model: params[{n!r}] has no linear kernel at {p!r}/kernel (from "
                           "linear_groups()).") from e
        if isinstance(w, QArray) or not hasattr(w, "ndim") or w.ndim != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
          raise ValueError(f"quantize_model: {n}/{p}/kernel must be a float (in, out) array, got "
                           f"{type(w).__name__} {getattr(w, 'shape', None)}; quantize float params only once.")
        spec = getattr(method, "spec", None)
        if spec is not None and isinstance(spec.granularity, PerGroup) and w.shape[0] % spec.granularity.size:
          bad_fit.append((f"{n}/{p}", w.shape[0]))
  if bad_fit:
    ks = sorted({k for _, k in bad_fit} | {get_in(params[names[0]], f"{p}/kernel").shape[0] for g in groups for p in g})
    size = method.spec.granularity.size
    fits = [g for g in (256, 192, 128, 96, 64, 32, 16, 8, 4) if g < size and all(k % g == 0 for k in ks)]
    hint = f"use PerGroup(axis=0, size={fits[0]})" if fits else "use PerChannel(axis=-1)"
    raise ValueError(f"quantize_model: group size {size} does not divide the input features "
                     f"of {len(bad_fit)} linears (e.g. {bad_fit[0][0]} has {bad_fit[0][1]}); {hint}.")
  return groups, names, tuple(skip)


def _layer_out(leaves: dict, kernel, x, matmul) -> jax.Array:
  if "input_scale" in leaves:
    x = x * leaves["input_scale"].astype(x.dtype)
  y = matmul(x, kernel)
  if "bias" in leaves:
    y = y + leaves["bias"].astype(y.dtype)
  return y


def _sqnr(fp_leaves, q_leaves, x, in_div=None, out_div=None, matmul=default_matmul) -> float:
  """Output SQNR of the quantized layer (inputs x / in_div, outputs * out_div) vs the float layer on x."""
  x = jnp.asarray(x, jnp.float32)
  if x.shape[0] == 0:
    return float("nan")
  ref = _layer_out(fp_leaves, fp_leaves["kernel"], x, default_matmul)
  xq = x / in_div if in_div is not None else x
  kq = q_leaves["kernel"]
  if matmul is default_matmul and isinstance(kq, QArray):
    kq = dequantize(kq)
  yq = _layer_out(q_leaves, kq, xq, matmul)
  if out_div is not None:
    yq = yq * out_div
  return output_sqnr_db(ref, yq)


def _static_groups_if_needed(method, view):
  """Act-order on a kernel with several input axes runs with static groups: a g_idx cannot index them."""
  g = method.gptq if isinstance(method, (M.AWQ, M.SmoothQuant)) else method
  if view is None or len(view.in_axes) < 2 or not isinstance(g, M.GPTQ) or not g.act_order or g.static_groups:
    return method
  g2 = dataclasses.replace(g, static_groups=True)
  return g2 if g is method else dataclasses.replace(method, gptq=g2)


def _solve(method, w, gram, path: str) -> tuple[QArray, float | None, dict]:
  """Quantizes one kernel (K, N) with the weight-only solver of ``method``."""
  if isinstance(method, (M.AWQ, M.SmoothQuant)):
    method = method.gptq if method.gptq is not None else M.RTN(method.spec)
  if isinstance(method, M.RTN):
    return rtn(w, method.spec), None, {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    qa, losses = gptq(w, gram, method.spec, block_size=method.block_size, damp=method.damp,
                      act_order=method.act_order, static_groups=method.static_groups)
  extra = {"warnings": [str(c.message) for c in caught]} if caught else {}
  return qa, float(jnp.sum(losses)), extra


def _eff_gram(st, leaves) -> jax.Array:
  """Gram matrix of the matmul's input: captured inputs times the layer's own ``input_scale`` if it has one."""
  if "input_scale" not in leaves:
    return st.gram
  d = leaves["input_scale"].astype(jnp.float32)
  return st.gram * d[:, None] * d[None, :]


def _eff_vec(v, leaves) -> jax.Array:
  return v * leaves["input_scale"].astype(jnp.float32) if "input_scale" in leaves else v


def _full(name: str, p: str) -> str:
  return f"{name}/{p}" if name else p


def _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries, wb=None, ob=None):
  """RTN / GPTQ: true-sequential over the groups of block i; returns the quantized block's outputs."""
  bits = M.method_bits(method)
  wb = get_block(model, work, name) if wb is None else wb
  ob = get_block(model, out, name) if ob is None else ob
  for paths in groups:
    qpaths = [p for p in paths if keep(_full(name, p))]
    if not qpaths:
      continue
    _, stats = capture_block(model, i, wb, hs, ctxs, qpaths, block_name=name)
    for p in qpaths:
      t0 = time.perf_counter()
      view = kernel_view(model, p)
      fp_leaves = linear_leaves(wb, p, view)
      m = _static_groups_if_needed(method, view)
      qa, loss, extra = _solve(m, fp_leaves["kernel"], _eff_gram(stats[p], fp_leaves), _full(name, p))
      if m is not method:
        extra = {**extra, "static_groups": "act-order over several input axes uses static groups (no g_idx)"}
      set_kernel(wb, p, view, dequantize(qa).astype(fp_leaves["kernel"].dtype))
      set_kernel(ob, p, view, qa)
      sq = _sqnr(fp_leaves, linear_leaves(ob, p, view), stats[p].sample())
      k, n = fp_leaves["kernel"].shape
      entries.append(LayerReport(_full(name, p), method.name, bits, sq, loss, time.perf_counter() - t0, k, n, extra))
  put_block(model, work, name, wb)
  put_block(model, out, name, ob)
  if i == "rest":
    return hs
  return forward_block(model, i, wb, hs, ctxs)


def _awq_transform(method, plan, block, stats, groups, keep_rel, view_of) -> tuple[dict, dict, dict]:
  """AWQ scale search (float inputs) + folding + clip, in place on the float ``block``.

  Returns (in_div, out_div, extra): per linear path, the scale its input is divided by / its outputs are divided by
  (for the report), and per-path details (alpha, clip).
  """
  spec = method.spec
  found = []
  extra: dict[str, dict] = {}
  # E[x x^T] of each matmul input, taken before any input_scale changes below
  moments = {p: _eff_gram(stats[p], linear_leaves(block, p, view_of(p))) / max(stats[p].count, 1)
             for g in groups for p in g}
  for g, paths in enumerate(groups):
    target = plan.targets[g] if g < len(plan.targets) else None
    if target is None or target.kind == "none" or not any(keep_rel(p) for p in paths):
      continue
    act = _eff_vec(stats[paths[0]].mean_abs, linear_leaves(block, paths[0], view_of(paths[0])))
    res = awq_scales([kernel_of(block, p, view_of(p)) for p in paths], act, spec, gram=moments[paths[0]],
                     grid=method.grid, duo_scaling=method.duo_scaling)
    found.append((target, paths, res.scales))
    for p in paths:
      extra[p] = {"alpha": float(res.alpha)}
  in_div, out_div, scaled = {}, {}, {}
  for target, paths, s in found:     # all scales were searched on the unscaled weights, as in the reference
    info = apply_group_scales(block, target, paths, s, view_of)
    in_div.update(info["in_div"])
    out_div.update(info["out_div"])
    scaled.update(info["scaled"])
  if method.clip and not isinstance(spec.granularity, PerTensor):
    for paths in groups:
      for p in paths:
        if not keep_rel(p) or p in plan.no_clip:
          continue
        gram = moments[p]
        if p in scaled:        # the scaled kernel reads x / s
          gram = gram / (scaled[p][:, None] * scaled[p][None, :])
        w = kernel_of(block, p, view_of(p))
        clip = awq_clip(w, None, spec, gram=gram, mode=method.clip_mode)
        set_kernel(block, p, view_of(p), apply_clip(w, clip.max_val, clip.min_val))
        extra.setdefault(p, {})["clipped"] = True
  return in_div, out_div, extra


def _smooth_transform(method, plan, block, stats, groups, keep_rel, view_of) -> tuple[dict, dict, dict]:
  """SmoothQuant migration scales (act max of the captured inputs, current weights), folded in place; returns
  (in_div, out_div, extra) as `_awq_transform`."""
  in_div, out_div, extra = {}, {}, {}
  for g, paths in enumerate(groups):
    target = plan.targets[g] if g < len(plan.targets) else None
    if target is None or target.kind == "none" or not any(keep_rel(p) for p in paths):
      continue
    if method.smooth == "norm" and not target.norm_fed:
      continue
    st = stats[paths[0]]
    w_max = weight_absmax([kernel_of(block, p, view_of(p)) for p in paths])
    s = smoothquant_scales(_eff_vec(st.abs_max, linear_leaves(block, paths[0], view_of(paths[0]))), w_max,
                           method.alpha)
    info = apply_group_scales(block, target, paths, s, view_of)
    in_div.update(info["in_div"])
    out_div.update(info["out_div"])
    for p in paths:
      extra[p] = {"smooth_min": float(jnp.min(s)), "smooth_max": float(jnp.max(s))}
  return in_div, out_div, extra


def _scale_transform(method, plan, block, stats, groups, keep_rel, view_of) -> tuple[dict, dict, dict]:
  """The per-input-channel scaling of ``method`` (AWQ search + clip, SmoothQuant migration; none for LLM.int8)."""
  if isinstance(method, M.AWQ):
    return _awq_transform(method, plan, block, stats, groups, keep_rel, view_of)
  if isinstance(method, M.SmoothQuant):
    return _smooth_transform(method, plan, block, stats, groups, keep_rel, view_of)
  return {}, {}, {}


def _fp_block(model, i, name, params, out, hs, ctxs, groups, keep, method, entries):
  """AWQ / SmoothQuant / LLM.int8: statistics from the float block; returns its float outputs."""
  rel_keep = lambda p: keep(_full(name, p))
  view_of = lambda p: kernel_view(model, p)
  all_paths = [p for g in groups for p in g]
  fp_block = get_block(model, params, name)
  fp_outs, stats = capture_block(model, i, fp_block, hs, ctxs, all_paths, block_name=name)
  plan = scale_plan(model, groups)
  t0 = time.perf_counter()
  block = copy_dicts(get_block(model, out, name))      # float until this block is done (holds earlier QArrays)
  in_div, out_div, extra = _scale_transform(method, plan, block, stats, groups, rel_keep, view_of)
  shared = (time.perf_counter() - t0) / max(len(all_paths), 1)
  bits = M.method_bits(method)
  matmul = getattr(method, "matmul", default_matmul)
  for p in all_paths:
    if not rel_keep(p):
      continue
    t0 = time.perf_counter()
    w = kernel_of(block, p, view_of(p))
    if isinstance(method, M.AWQ):
      qa = rtn(w, method.spec)
    elif isinstance(method, M.SmoothQuant):
      qa = w8a8_quantize_weight(w, per_channel=True)
    else:
      qa = llm_int8_prepare(w)
    set_kernel(block, p, view_of(p), qa)
    sq = _sqnr(linear_leaves(fp_block, p, view_of(p)), linear_leaves(block, p, view_of(p)), stats[p].sample(),
               in_div.get(p), out_div.get(p), matmul)
    k, n = w.shape
    entries.append(LayerReport(_full(name, p), method.name, bits, sq, None, shared + time.perf_counter() - t0, k, n,
                               extra.get(p, {})))
  put_block(model, out, name, block)
  return fp_outs if i != "rest" else hs


def _scaled_gptq_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries):
  """AWQ scales + clip (or SmoothQuant migration) on the block's quantized-model inputs, then true-sequential GPTQ
  on the scaled weights."""
  rel_keep = lambda p: keep(_full(name, p))
  all_paths = [p for g in groups for p in g]
  wb = get_block(model, work, name)
  _, stats = capture_block(model, i, wb, hs, ctxs, all_paths, block_name=name)
  block = copy_dicts(wb)
  _scale_transform(method, scale_plan(model, groups), block, stats, groups, rel_keep,
                   lambda p: kernel_view(model, p))
  return _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries,
                           wb=block, ob=copy_dicts(block))


def _run_block(model, i, name, params, work, out, hs, ctxs, groups, keep, method, entries):
  """One block (or the "rest" pass) with ``method``; returns the next block's inputs."""
  if isinstance(method, (M.RTN, M.GPTQ)):
    return _sequential_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries)
  if isinstance(method, (M.AWQ, M.SmoothQuant)) and method.gptq is not None:
    return _scaled_gptq_block(model, i, name, work, out, hs, ctxs, groups, keep, method, entries)
  return _fp_block(model, i, name, params, out, hs, ctxs, groups, keep, method, entries)


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
  """A `LinenModel` for a user's Flax module (nnx modules are wrapped first)."""
  from jquant.ptq.linen_model import LinenModel  # pylint: disable=import-outside-toplevel
  if not _is_flax_module(model):
    raise TypeError(f"quantize_model: model {type(model).__name__} is neither a flax.linen.Module nor a "
                    "flax.nnx.Module and does not implement jquant.ptq.BlockwiseModel (block_names, embed, "
                    "apply_block, linear_groups).")
  if not hasattr(params, "keys"):
    raise TypeError(f"quantize_model: params must be the model's Flax 'params' dict, got {type(params).__name__}.")
  if "params" in params and len(params) == 1:
    raise ValueError("quantize_model: pass the 'params' collection itself (variables['params']), not "
                     "{'params': ...}.")
  return LinenModel(model, params, batches[0], blocks=blocks, apply_fn=apply_fn)


def _check_generic(model, params, method, skip):
  """Validation of a `LinenModel`: float kernels that fit the method's spec."""
  M.check_method(method)
  if isinstance(skip, str) or not all(isinstance(p, str) for p in skip):
    raise TypeError(f"quantize_model: skip must be a sequence of glob patterns over linear paths, got {skip!r}.")
  spec = getattr(method, "spec", None)
  bad = []
  for p, site in model.sites.items():
    w = get_in(params, f"{p}/kernel")
    if isinstance(w, QArray) or not jnp.issubdtype(w.dtype, jnp.floating):
      raise ValueError(f"quantize_model: {p}/kernel must be a float array, got {type(w).__name__}; quantize float "
                       "params only once.")
    if spec is not None and isinstance(spec.granularity, PerGroup):
      try:
        site.view.granularity_for(spec.granularity) if site.view.k % spec.granularity.size == 0 else bad.append(p)
      except ValueError:
        bad.append(p)
  if bad:
    ks = sorted({model.sites[p].view.k for p in bad})
    raise ValueError(f"quantize_model: group size {spec.granularity.size} does not fit the input features of "
                     f"{len(bad)} linears (e.g. {bad[0]} with K = {ks[0]} over input axes "
                     f"{model.sites[bad[0]].view.in_shape}); use a group size dividing each, or PerChannel(axis=-1).")
  model.bind_params(params)
  return [tuple(g) for g in model.linear_groups()], list(model.block_names()) if model.block_paths else [], \
      tuple(skip)


def quantize_model(model, params: PyTree, calib_batches: Iterable, method, *, skip: Sequence[str] = (),
                   blocks: str | None = None, apply_fn=None, progress: bool = True) -> tuple[PyTree, PTQReport]:
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

  Returns:
    ``(qparams, report)``: params with `QArray` kernels (plus folded norm scales / ``input_scale`` leaves for
    AWQ / SmoothQuant), and a `PTQReport`. Run SmoothQuant / LLMInt8 params with ``runtime_model(model, method)``.

  Raises:
    TypeError: a model that does not implement the protocol, an unknown method, bad ``skip``.
    ValueError: empty ``calib_batches``, NaN/inf activations, a spec that does not fit a layer (group size not
      dividing the input features), params that do not match the model.
  """
  t_start = time.perf_counter()
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
  generic = not isinstance(model, BlockwiseModel)
  if generic:
    model = _generic_model(model, params, batches, blocks, apply_fn)
    groups, names, skip = _check_generic(model, params, method, skip)
  else:
    groups, names, skip = _check_inputs(model, params, method, skip)
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
  return out, report
