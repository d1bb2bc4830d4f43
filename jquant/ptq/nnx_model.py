"""Bring your own Flax NNX model: linears, blocks and linear groups found by interception.

NNX modules are mutable Python objects, so jquant never runs (or changes) the user's instance: it works on
``graphdef, params, rest = nnx.split(model, nnx.Param, ...)`` and each forward is
``nnx.merge(graphdef, params_from(dict), rest)(*args, **kwargs)`` on a fresh copy. Interception: after the merge,
every module of that fresh copy whose class defines ``__call__`` gets its class swapped for a cached subclass whose
``__call__`` hands the call to the active interceptor ``fn(next_fun, args, kwargs, path, module)`` (``path``: the
module's '/'-joined path in the params, list indices as decimal strings: ``layers/0/attn/q``). The copy is
discarded after the call, so nothing needs restoring, and the forward is a pure function of the params dict (it
works under ``jax.jit`` / ``jax.eval_shape``).

Params: the user passes ``nnx.state(model, nnx.Param)`` (an ``nnx.State``); the pipeline works on the same tree as
a nested dict of arrays with string keys (`NNXModel.params_tree`) and `NNXModel.export_params` turns its result
back into an ``nnx.State`` of the same structure, with `QArray` values in the quantized kernels' ``nnx.Param``\\ s and
an extra ``input_scale`` ``nnx.Param`` beside the kernel of a linear that needs one (AWQ / SmoothQuant on a model
whose producers cannot take the scales). Such a State is run by `NNXRuntime` (``jq.ptq.runtime_model``) or turned
into float params the unmodified model runs with ``jq.dequantize_params`` (which folds ``input_scale`` into the
kernel and drops it).

Linears: ``nnx.Linear``, ``nnx.LinearGeneral`` (any ``in_features`` / ``out_features`` tuples and ``axis``; no
``batch_axis``), ``nnx.Einsum`` (two operands, no axis shared by input, kernel and output). Any other module with a
``kernel`` param (``nnx.Conv``, ...) is listed in ``report.unsupported``, as is a linear the forward never called.
Layers built with ``nnx.vmap`` / ``nnx.scan`` (stacked params) are refused with a ValueError: unroll them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jquant.core.paths import flatten, get_in, join, unflatten
from jquant.core.qarray import QArray
from jquant.ptq.batches import call_args
from jquant.ptq.runtime import quantized_linear
from jquant.ptq.sites import LinearTypes, classify_module
from jquant.ptq.traced import LinearSite, TracedModel, _Call, _Stop

PyTree = Any

__all__ = ["NNXModel", "NNXRuntime", "nnx_linear_site", "is_nnx_module"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jquant_nnx_intercept", default=None)
_NNX_TYPES = LinearTypes(nnx.Linear, nnx.LinearGeneral, nnx.Einsum, "batch_axis")


def is_nnx_module(obj) -> bool:
  return isinstance(obj, nnx.Module)


@functools.lru_cache(maxsize=None)
def _hooked(cls: type) -> type:
  """``cls`` with a ``__call__`` that consults the active interceptor (created once per class)."""
  base_call = cls.__call__

  def __call__(self, *args, **kwargs):
    active = _ACTIVE.get()
    path = None if active is None else active[1].get(id(self))
    if path is None:
      return base_call(self, *args, **kwargs)
    return active[0](lambda *a, **k: base_call(self, *a, **k), args, kwargs, path, self)

  return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__, "_jquant_base": cls})


def _kernel_of(mod):
  k = getattr(mod, "kernel", None)
  return k.get_value() if isinstance(k, nnx.Variable) else None


def _declared_kernel_rank(mod) -> int | None:
  if isinstance(mod, nnx.Linear):
    return 2
  if isinstance(mod, nnx.LinearGeneral):
    return len(mod.batch_axis) + len(mod.in_features) + len(mod.out_features)
  if isinstance(mod, nnx.Einsum):
    return len(mod.kernel_shape)
  return None


def nnx_linear_site(mod, args: tuple, kwargs: dict) -> tuple[LinearSite | None, str | None]:
  """(site, None) for a supported NNX linear call, (None, reason) for a module with a kernel jquant cannot quantize,
  (None, None) for anything else."""
  kernel = _kernel_of(mod)
  if kernel is None:
    return None, None
  kshape = tuple(getattr(kernel, "shape", ()))
  return classify_module(_NNX_TYPES, mod, kshape, args, kwargs, getattr(mod, "bias", None) is not None)


class _Graph:
  """One NNX module split into graphdef / Param template / rest, run on a params dict with string keys."""

  def __init__(self, module):
    self.graphdef, params, self.rest = nnx.split(module, nnx.Param, ...)
    self.flat = [(tuple(kp), join(kp), var) for kp, var in nnx.to_flat_state(params)]
    self.keys = {s for _, s, _ in self.flat}

  def to_dict(self, state, what: str = "params") -> dict:
    """A nested dict (string keys) of the values of ``state`` (an nnx.State or a pure dict); entries named
    ``input_scale`` beside a kernel are kept, anything else unknown is an error."""
    if isinstance(state, nnx.State):
      items = [(join(kp), v.get_value() if isinstance(v, nnx.Variable) else v)
               for kp, v in nnx.to_flat_state(state)]
    elif isinstance(state, dict):
      items = list(flatten(state).items())
    else:
      raise TypeError(f"{what} must be nnx.state(model, nnx.Param) (an nnx.State), got {type(state).__name__}.")
    got = {p for p, _ in items}
    extra = sorted(p for p in got - self.keys if not (p.endswith("/input_scale") and
                                                     p[:-len("input_scale")] + "kernel" in self.keys))
    missing = sorted(self.keys - got)
    if extra or missing:
      raise ValueError(f"{what} do not match the model's nnx.Param state: missing {missing[:4]}, unexpected "
                       f"{extra[:4]}; pass nnx.state(model, nnx.Param) of this model (or the State quantize_model "
                       "returned for it).")
    return unflatten(dict(items))

  def _flat(self, tree: dict) -> tuple[list, dict]:
    """(flat Param state of ``tree`` in the module's structure, {linear path: input_scale})."""
    flat, scales = [], {}
    for kp, sp, var in self.flat:
      flat.append((kp, var.replace(value=get_in(tree, sp))))
      if sp.endswith("/kernel") or sp == "kernel":
        lin = sp[:-len("kernel")]
        s = get_in(tree, lin + "input_scale", None)
        if s is not None:
          scales[lin.rstrip("/")] = (kp[:-1] + ("input_scale",), s)
    return flat, scales

  def to_state(self, tree: dict) -> nnx.State:
    """``tree`` (string keys) as an nnx.State shaped as the module's params, plus ``input_scale`` Params."""
    flat, scales = self._flat(tree)
    return nnx.from_flat_state(flat + [(kp, nnx.Param(s)) for kp, s in scales.values()])

  def call(self, tree: dict, args: tuple, kwargs: dict, fn: Callable | None, matmul: Callable | None = None,
           apply_fn: Callable | None = None):
    """The module on ``tree``, every module call going through ``fn`` (then jquant's linear where the kernel is a
    QArray, has an input_scale, or ``matmul`` is set)."""
    flat, scales = self._flat(tree)
    scales = {p: v for p, (_, v) in scales.items()}
    module = nnx.merge(self.graphdef, nnx.from_flat_state(flat), self.rest)
    paths = {}
    for kp, sub in nnx.iter_modules(module):
      if id(sub) in paths or not callable(sub):
        continue
      paths[id(sub)] = join(kp)
      object.__setattr__(sub, "__class__", _hooked(getattr(type(sub), "_jquant_base", type(sub))))

    def run_linear(next_fun, a, k, path, mod):
      kernel = _kernel_of(mod)
      scale = scales.get(path)
      if kernel is None or (not isinstance(kernel, QArray) and scale is None and matmul is None):
        return next_fun(*a, **k)
      site, why = nnx_linear_site(mod, a, k)
      if site is None:
        if isinstance(kernel, QArray) or scale is not None:
          raise NotImplementedError(f"{path}: quantized params on a layer jquant cannot run: {why}.")
        return next_fun(*a, **k)
      return _nnx_linear(mod, site, a[0], kernel, scale, matmul)

    outer = _chain(_INTERCEPT.get(), fn)      # capture.py's interceptor (NNXModel.intercept), then ``fn``

    def hook(next_fun, a, k, path, mod):
      inner = lambda *a2, **k2: run_linear(next_fun, a2, k2, path, mod)
      return outer(inner, a, k, path, mod) if outer is not None else inner(*a, **k)

    token = _ACTIVE.set((hook, paths))
    try:
      if apply_fn is not None:
        return apply_fn(module, *args, **kwargs)
      return module(*args, **kwargs)
    finally:
      _ACTIVE.reset(token)


def _nnx_linear(mod, site: LinearSite, x, kernel, scale, matmul):
  kdtype = jnp.dtype(kernel.dtype) if isinstance(kernel, QArray) else kernel.dtype
  dtype = getattr(mod, "dtype", None) or jnp.result_type(x.dtype, kdtype)
  bias = None
  if site.has_bias:
    bias = mod.bias.get_value()
    if site.kind == "einsum":
      shape = mod._infer_broadcasted_bias_shape(site.einsum_str, x, np.broadcast_to(np.float32(0), site.view.shape))  # pylint: disable=protected-access
      bias = jnp.reshape(bias, shape)
  return quantized_linear(site, x, kernel, scale, bias, dtype, matmul)


class NNXModel(TracedModel):
  """A user's NNX module seen as blocks of linear groups (see the module docstring and `TracedModel`).

  Args:
    module: the NNX module (never modified).
    params: ``nnx.state(module, nnx.Param)``.
    batch: one calibration batch (a tuple is splatted, a dict is keyword arguments), used for the abstract trace.
    blocks: optional regex over module paths (``"layers/\\d+"``) naming the blocks.
    apply_fn: optional ``f(module, *args, **kwargs) -> out`` used instead of ``module(*args, **kwargs)``.
  """

  def __init__(self, module, params, batch, *, blocks: str | None = None, apply_fn=None):
    self.module = module
    self._apply_fn = apply_fn
    self._init_tables()
    self._graph = _Graph(module)
    tree = self.params_tree(params)
    calls = self._trace(tree, batch)
    self._find_blocks(calls, tree, blocks)
    if self.block_paths:
      subs = {join(kp): m for kp, m in nnx.iter_modules(module)}
      self._block_graph = _Graph(subs[join(self.block_paths[0])])

  # --- params format ---
  def params_tree(self, params) -> dict:
    return self._graph.to_dict(params, "quantize_model: params")

  def export_params(self, tree) -> nnx.State:
    return self._graph.to_state(tree)

  # --- tracing ---
  def forward_params(self, params, batch, fn=None):
    args, kwargs = call_args(batch)
    return self._graph.call(params, args, kwargs, fn, apply_fn=self._apply_fn)

  def _trace(self, tree, batch) -> list[_Call]:
    calls: list[_Call] = []
    called = set()

    def interceptor(next_fun, args, kwargs, path, mod):
      called.add(path)
      site, why = nnx_linear_site(mod, args, kwargs)
      out = next_fun(*args, **kwargs)
      if not self._record(path, site, why, args[0] if args else None):
        calls.append(_Call(tuple(path.split("/")) if path else (), mod, args, kwargs, out))
      return out

    self._trace_batch0(lambda p, b: self.forward_params(p, b, interceptor), tree, batch, calls)
    for kp, mod in nnx.iter_modules(self.module):
      p, kernel = join(kp), _kernel_of(mod)
      if kernel is None or p in called:
        continue
      rank = _declared_kernel_rank(mod)
      if rank is not None and kernel.ndim > rank:
        raise ValueError(f"quantize_model: {p} ({type(mod).__name__}) has a stacked kernel {kernel.shape} (layers "
                         "built with nnx.vmap / nnx.scan); jquant does not quantize scanned NNX layers: unroll them "
                         "(an nnx.List of layers called in a Python loop).")
      self.unsupported.setdefault(p, f"{type(mod).__name__} not called by the forward on calibration batch 0 (left "
                                     "in float)")
    self._check_found_linears(calls, "nnx.Linear, nnx.LinearGeneral, nnx.Einsum")
    return calls

  # --- framework side of the protocol ---
  def linear_site(self, mod, args, kwargs):
    return nnx_linear_site(mod, args, kwargs)

  @staticmethod
  def intercept(fn) -> contextlib.AbstractContextManager:
    """A context in which ``fn(next_fun, args, kwargs, path, module)`` sees every module call of the forwards this
    model runs (the hooked modules chain to the active function)."""

    @contextlib.contextmanager
    def ctx():
      prev = _INTERCEPT.get()
      token = _INTERCEPT.set(_chain(prev, fn))
      try:
        yield
      finally:
        _INTERCEPT.reset(token)

    return ctx()

  def embed(self, params, batch):
    """Inputs of the first block: (hidden, ctx) with ctx the block's other array inputs; the forward stops there."""
    target = join(self.block_paths[0])

    def interceptor(next_fun, args, kwargs, path, mod):
      if path == target:
        dyn, _ = self._split_ctx(args[1:], kwargs)
        raise _Stop((args[0], dyn))
      return next_fun(*args, **kwargs)

    try:
      self.forward_params(params, batch, interceptor)
    except _Stop as s:
      return s.payload
    raise ValueError(f"quantize_model: block {target} was not called on this batch.")

  def apply_block(self, i: int, block_params, hidden, ctx):
    args, kwargs = self._join_ctx(ctx)
    out = self._block_graph.call(block_params, (hidden, *args), kwargs, None)
    return out[0] if self._out_index == 0 else out


# interceptors installed by NNXModel.intercept (capture.py): consulted by the forwards the model runs
_INTERCEPT: contextvars.ContextVar = contextvars.ContextVar("jquant_nnx_user_intercept", default=None)


def _chain(outer, inner):
  """One interceptor: ``outer`` sees a call first, its ``next_fun`` goes through ``inner``."""
  if outer is None or inner is None:
    return inner if outer is None else outer
  return lambda nf, a, k, p, m: outer(lambda *a2, **k2: inner(nf, a2, k2, p, m), a, k, p, m)


class NNXRuntime:
  """Runs the user's unmodified NNX module with a quantized ``nnx.State`` (see the module docstring).

  ``apply(qstate, *args, **kwargs)``: the module's forward with QArray kernels computed by `jquant.ops.qdot` (or
  ``matmul``: W8A8, LLM.int8), ``input_scale`` applied; float linears run as NNX runs them unless ``matmul`` is set.
  Works under ``jax.jit``.
  """

  def __init__(self, module, matmul: Callable | None = None):
    self.module = module
    self.matmul = matmul
    self._graph = _Graph(module)

  def __repr__(self) -> str:
    return f"NNXRuntime({type(self.module).__name__}, matmul={self.matmul!r})"

  def apply(self, qstate, *args, **kwargs):
    tree = self._graph.to_dict(qstate, "runtime_model(...).apply: qstate")
    return self._graph.call(tree, args, kwargs, None, self.matmul)
