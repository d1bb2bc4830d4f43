"""Input validation of `jquant.ptq.quantize_model`: a `BlockwiseModel`'s params and a traced model's kernels against
the method's spec, and the mixture-of-experts options."""

from __future__ import annotations

import jax.numpy as jnp

from jquant.core.granularity import PerGroup
from jquant.core.paths import get_in
from jquant.core.qarray import QArray
from jquant.ptq.methods import check_method
from jquant.ptq.protocol import BlockwiseModel

__all__ = ["check_blockwise", "check_generic", "check_experts_method"]


def check_blockwise(model, params, method, skip) -> tuple[list[tuple[str, ...]], list[str], tuple[str, ...]]:
  if not isinstance(model, BlockwiseModel):
    raise TypeError(f"quantize_model: model {type(model).__name__} does not implement jquant.ptq.BlockwiseModel "
                    "(block_names, embed, apply_block, linear_groups); wrap it like jquant.models.SmolLM2.")
  check_method(method)
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


def check_generic(model, params, method, skip):
  """Validation of a `LinenModel`: float kernels that fit the method's spec."""
  check_method(method)
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


def check_experts_method(model, method) -> None:
  """Stacked experts are solved by weight-only methods (RTN, GPTQ): no activation scaling or quantized matmul."""
  experts = [p for p, site in getattr(model, "sites", {}).items() if site.experts]
  if experts and (method.float_inputs or method.has_transform or method.matmul is not None):
    raise NotImplementedError(f"quantize_model: {method.name} on stacked MoE experts ({experts[0]}, ...) is not "
                              "supported: experts are calibrated per expert with weight-only methods; use "
                              "jq.ptq.GPTQ(spec) or jq.ptq.RTN(spec), or skip the experts (skip=['*experts*']).")
