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

import dataclasses
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.core.views import MatrixView, stack_qarrays
from jquant.ptq.batches import call_args

PyTree = Any

__all__ = ["LinenModel", "LinearSite", "linear_site"]


class _Stop(Exception):
  """Raised inside a traced forward once the first block's inputs are captured."""

  def __init__(self, payload):
    super().__init__("stop")
    self.payload = payload


@dataclasses.dataclass(frozen=True)
class LinearSite:
  """One linear layer: its kind, kernel view and the input axes it contracts (in kernel in-axis order)."""

  kind: str
  view: MatrixView
  x_axes: tuple[int, ...]      # negative axes of the input, in the order of view.in_axes
  einsum_str: str | None = None
  has_bias: bool = False


def _parse_einsum(eq: str, x_ndim: int, k_ndim: int):
  eq = eq.replace(" ", "")
  if "->" not in eq or eq.count(",") != 1:
    return None, f"einsum {eq!r} is not 'lhs,rhs->out'"
  lhs, rest = eq.split(",")
  rhs, out = rest.split("->")
  if "." in rhs:
    return None, f"einsum {eq!r}: an ellipsis in the kernel operand"
  if "..." in lhs:
    pre, post = lhs.split("...")
    pos = {c: i - x_ndim for i, c in enumerate(pre)}   # negative positions
    pos.update({c: j - len(post) for j, c in enumerate(post)})
  else:
    pos = {c: i - len(lhs) for i, c in enumerate(lhs)}
  out_letters = out.replace("...", "")
  shared = [c for c in rhs if c in pos and c in out_letters]
  if shared:
    return None, f"einsum {eq!r}: kernel axes {shared} are batch axes (in input, kernel and output)"
  in_axes = tuple(i for i, c in enumerate(rhs) if c in pos)
  out_axes = tuple(i for i, c in enumerate(rhs) if c not in pos)
  if not in_axes or not out_axes or any(c not in out_letters for c in rhs if c not in pos):
    return None, f"einsum {eq!r}: the kernel needs contracted and output axes"
  x_axes = tuple(pos[rhs[i]] for i in in_axes)
  return (in_axes, out_axes, x_axes), None


def linear_site(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[LinearSite | None, str | None]:
  """(site, None) for a supported linear call, (None, reason) for a module with a kernel it cannot quantize,
  (None, None) for anything else."""
  if not mod.has_variable("params", "kernel"):
    return None, None
  kernel = mod.get_variable("params", "kernel")
  kshape = tuple(getattr(kernel, "shape", ()))
  x = args[0] if args else None
  has_bias = mod.has_variable("params", "bias")
  if x is None or not hasattr(x, "ndim"):
    return None, f"{type(mod).__name__}: first argument is not an array"
  if type(mod) is nn.Dense or isinstance(mod, nn.Dense):
    if len(kshape) != 2:
      return None, f"Dense kernel of rank {len(kshape)}"
    return LinearSite("dense", MatrixView.dense(kshape, 1), (-1,), None, has_bias), None
  if isinstance(mod, nn.DenseGeneral):
    if mod.batch_dims:
      return None, "DenseGeneral with batch_dims"
    axis = mod.axis if isinstance(mod.axis, (tuple, list)) else (mod.axis,)
    x_axes = tuple((a % x.ndim) - x.ndim for a in axis)
    return LinearSite("dense_general", MatrixView.dense(kshape, len(axis)), x_axes, None, has_bias), None
  if isinstance(mod, nn.Einsum):
    eq = kwargs.get("einsum_str") or (args[1] if len(args) > 1 else None) or mod.einsum_str
    parsed, why = _parse_einsum(eq or "", x.ndim, len(kshape))
    if parsed is None:
      return None, why
    in_axes, out_axes, x_axes = parsed
    return LinearSite("einsum", MatrixView(kshape, in_axes, out_axes), x_axes, eq.replace(" ", ""), has_bias), None
  return None, f"{type(mod).__name__} (a module with a 'kernel' param jquant cannot quantize)"


def flatten_input(x: jax.Array, x_axes: Sequence[int]) -> jax.Array:
  """The input of a linear as (tokens, K): contracted axes moved last (kernel order), the rest flattened."""
  nd = x.ndim
  src = [a % nd for a in x_axes]
  rest = [a for a in range(nd) if a not in src]
  xt = jnp.transpose(x, rest + src)
  k = int(np.prod([x.shape[a] for a in src]))
  return xt.reshape(-1, k)


def _path_str(path: Sequence[str]) -> str:
  return "/".join(str(p) for p in path)


def _get_in(tree, path: Sequence[str]):
  node = tree
  for p in path:
    node = node[p]
  return node


def _struct(tree) -> Any:
  return jax.tree.map(lambda a: tuple(a.shape), tree)


_INDEXED = re.compile(r"^(.*?)(\d+)$")


@dataclasses.dataclass
class _Call:
  path: tuple[str, ...]
  module: nn.Module          # unbound clone
  args: tuple
  kwargs: dict
  out: Any
  scanned: bool = False


class LinenModel:
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
    self.sites: dict[str, LinearSite] = {}          # full linear path -> site
    self.unsupported: dict[str, str] = {}            # full path -> reason
    self.linear_order: list[str] = []
    self.outside: list[str] = []
    self._pending: dict[int, dict] = {}
    self._linear_input: dict[str, int] = {}
    calls = self._trace(params, batch)
    self._find_blocks(calls, params, blocks)

  # --- tracing ---
  def _forward(self, variables, batch):
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
      p = _path_str(path)
      if site is not None:
        if p not in self.sites:
          self.sites[p] = site
          self.linear_order.append(p)
          self._linear_input[p] = id(args[0])
      elif why is not None:
        self.unsupported.setdefault(p, why)
      else:
        calls.append(_Call(path, mod.clone(parent=None), args, kwargs, out))
      return out

    def run(p, b):
      with nn.intercept_methods(interceptor):
        return self._forward({"params": p}, b)

    self._trace_keepalive = calls   # ids are only meaningful while the traced values live
    try:
      jax.eval_shape(run, params, batch)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"quantize_model: the model rejected calibration batch 0 "
                       f"({jax.tree.map(lambda a: getattr(a, 'shape', a), batch)}): {type(e).__name__}: {e}") from e
    if not self.sites:
      types = sorted({type(c.module).__name__ for c in calls})
      raise ValueError(f"quantize_model: found no supported linear layer (nn.Dense, nn.DenseGeneral, nn.Einsum) in "
                       f"{type(self.module).__name__}; it called modules of types {types}"
                       + (f" and unsupported layers {sorted(set(self.unsupported.values()))}" if self.unsupported
                          else "") + ".")
    return calls

  # --- blocks ---
  def _covered(self, prefix: tuple[str, ...]) -> list[str]:
    pre = _path_str(prefix) + "/"
    return [p for p in self.linear_order if p.startswith(pre)]

  def _find_blocks(self, calls: list[_Call], params, blocks_regex):
    first_calls: dict[tuple, _Call] = {}
    for c in calls:
      first_calls.setdefault(c.path, c)
    candidates: list[tuple[int, int, list[tuple], bool]] = []   # (-linears, depth, paths, scanned)
    if blocks_regex is not None:
      try:
        rx = re.compile(blocks_regex)
      except re.error as e:
        raise ValueError(f"quantize_model: blocks={blocks_regex!r} is not a valid regex: {e}.") from e
      paths = [p for p in first_calls if p and rx.fullmatch(_path_str(p))]
      if not paths:
        raise ValueError(f"quantize_model: blocks={blocks_regex!r} matches no module path; module paths called: "
                         f"{[_path_str(p) for p in list(first_calls)[:12]]}.")
      scanned = len(paths) == 1 and self._is_scanned(paths[0], params)
      candidates.append((0, 0, paths, scanned))
    else:
      families: dict[tuple, list[tuple[int, tuple]]] = {}
      for p in first_calls:
        if not p:
          continue
        m = _INDEXED.match(p[-1])
        if m:
          families.setdefault(p[:-1] + (m.group(1),), []).append((int(m.group(2)), p))
        if self._is_scanned(p, params) and self._covered(p):
          candidates.append((-len(self._covered(p)), len(p), [p], True))
      for fam in families.values():
        fam.sort()
        paths = [p for _, p in fam]
        if len(paths) < 2 or not self._covered(paths[0]):
          continue
        try:
          structs = [_struct(_get_in(params, p)) for p in paths]
        except (KeyError, TypeError):
          continue
        if all(s == structs[0] for s in structs):
          candidates.append((-sum(len(self._covered(p)) for p in paths), len(paths[0]), paths, False))
    candidates.sort(key=lambda c: (c[0], c[1]))
    if not candidates:
      self.block_paths, self.scanned = [], False      # no blocks: every linear is solved in the "rest" pass
      self._groups = [[]]
      self.outside = list(self.linear_order)
      return
    _, _, paths, scanned = candidates[0]
    self.block_paths = paths
    self.scanned = scanned
    self._check_chain(paths, first_calls, calls, scanned)
    rel = lambda bp: [p[len(_path_str(bp)) + 1:] for p in self._covered(bp)]
    self._groups = [[[q[len(_path_str(paths[0])) + 1:] for q in g] for g in self._grouped(self._covered(paths[0]))]]
    for bp in paths[1:]:
      if sorted(rel(bp)) != sorted(rel(paths[0])):
        raise ValueError(f"quantize_model: block {_path_str(bp)} has linears {rel(bp)}, block "
                         f"{_path_str(paths[0])} has {rel(paths[0])}; blocks must be alike. Pass blocks=REGEX.")
    self._block_module = first_calls[paths[0]].module
    inside = {p for bp in paths for p in self._covered(bp)}
    self.outside = [p for p in self.linear_order if p not in inside]

  def _is_scanned(self, path: tuple, params) -> bool:
    try:
      sub = _get_in(params, path)
    except (KeyError, TypeError):
      return False
    lin = self._covered(path)
    if not lin:
      return False
    stored = _get_in(params, lin[0].split("/"))["kernel"]
    return len(stored.shape) == len(self.sites[lin[0]].view.shape) + 1 and isinstance(sub, dict)

  def _grouped(self, linears: Sequence[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for p in linears:
      groups.setdefault(self._linear_input[p], []).append(p)
    return list(groups.values())

  def _check_chain(self, paths, first_calls, calls, scanned):
    if scanned:
      c = first_calls[paths[0]]
      self._out_index = 0 if isinstance(c.out, (tuple, list)) else None
      self._ctx_static = self._split_ctx(c.args[1:], c.kwargs)[1]
      return
    c0 = first_calls[paths[0]]
    self._out_index = 0 if isinstance(c0.out, (tuple, list)) else None
    dyn0, self._ctx_static = self._split_ctx(c0.args[1:], c0.kwargs)
    for prev, cur in zip(paths[:-1], paths[1:]):
      a, b = first_calls[prev], first_calls[cur]
      out = a.out[0] if self._out_index == 0 and isinstance(a.out, (tuple, list)) else a.out
      if not b.args or b.args[0] is not out:
        raise ValueError(f"quantize_model: block {_path_str(cur)} does not read the output of block "
                         f"{_path_str(prev)} as its first argument, so the blocks cannot be chained; pass "
                         "blocks=REGEX naming modules that follow one another (or a model without blocks).")
      dyn, _ = self._split_ctx(b.args[1:], b.kwargs)
      if len(dyn) != len(dyn0) or any(x is not y for x, y in zip(dyn, dyn0)):
        raise ValueError(f"quantize_model: block {_path_str(cur)} gets other extra inputs than block "
                         f"{_path_str(paths[0])} (masks, positions must be the same arrays for every block); pass "
                         "blocks=REGEX naming blocks that share their extra inputs.")

  @staticmethod
  def _split_ctx(args, kwargs):
    leaves, treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
    is_arr = [hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves]
    dyn = [x for x, a in zip(leaves, is_arr) if a]
    static = (treedef, tuple(None if a else x for x, a in zip(leaves, is_arr)), tuple(is_arr))
    return dyn, static

  def _join_ctx(self, dyn):
    treedef, statics, is_arr = self._ctx_static
    it = iter(dyn)
    leaves = [next(it) if a else s for s, a in zip(statics, is_arr)]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  # --- BlockwiseModel protocol ---
  def block_names(self) -> Sequence[str]:
    if self.scanned:
      n = jax.tree.leaves(self._scan_len_params)[0].shape[0] if hasattr(self, "_scan_len_params") else None
      return tuple(f"{_path_str(self.block_paths[0])}[{i}]" for i in range(n))
    return tuple(_path_str(p) for p in self.block_paths)

  def bind_params(self, params):
    """Remembers the layer count of a scanned block from ``params``."""
    if self.scanned:
      self._scan_len_params = _get_in(params, self.block_paths[0])

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return self._groups[0]

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
    raise ValueError(f"quantize_model: block {_path_str(target)} was not called on this batch.")

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
                       f"{_path_str(self.block_paths[0])} (unknown Flax scan internals); unroll the layers or pass "
                       "blocks=REGEX naming other modules.")
    init_leaves = jax.tree.leaves(frame_locals["init"])
    h_leaves, h_tree = jax.tree.flatten(h)
    outer = init_leaves[len(init_leaves) - len(h_leaves):]
    if [(x.shape, x.dtype) for x in outer] != [(x.shape, x.dtype) for x in h_leaves]:
      raise ValueError(f"quantize_model: the carry of scanned block {_path_str(self.block_paths[0])} is not its "
                       "first argument; pass blocks=REGEX or unroll the layers.")
    arg_leaves = jax.tree.leaves(frame_locals["args"])
    if any(not any(d is a for a in arg_leaves) for d in dyn):
      raise ValueError(f"quantize_model: scanned block {_path_str(self.block_paths[0])} takes per-layer inputs "
                       "(in_axes other than nn.broadcast); only broadcast extra inputs are supported.")
    return jax.tree.unflatten(h_tree, outer), dyn

  def apply_block(self, i: int, block_params, hidden, ctx):
    args, kwargs = self._join_ctx(ctx)
    out = self._block_module.apply({"params": block_params}, hidden, *args, **kwargs)
    return out[0] if self._out_index == 0 else out

  # --- params access ---
  def get_block(self, params, name: str):
    if self.scanned:
      i = int(name.rsplit("[", 1)[1][:-1])
      return jax.tree.map(lambda a: a[i], _get_in(params, self.block_paths[0]))
    return _get_in(params, name.split("/"))

  def set_block(self, tree, name: str, block) -> None:
    """Writes a block's params into ``tree`` (scanned layers are collected and stacked by `finish`)."""
    if self.scanned:
      self._pending.setdefault(id(tree), {})[name] = block
      return
    parts = name.split("/")
    node = tree
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = block

  def finish(self, tree) -> None:
    """Stacks the collected layers of a scanned block back into ``tree`` (QArrays via `stack_qarrays`)."""
    if not self.scanned:
      return
    layers = self._pending.pop(id(tree), {})
    names = self.block_names()
    missing = [n for n in names if n not in layers]
    if missing:
      return
    blocks = [layers[n] for n in names]
    is_q = lambda a: isinstance(a, QArray)
    structs = [jax.tree.structure(b, is_leaf=is_q) for b in blocks]
    if any(s != structs[0] for s in structs):
      raise ValueError(f"quantize_model: the layers of scanned block {_path_str(self.block_paths[0])} were "
                       "quantized differently (a skip pattern hit some layers only); a scanned stack must be "
                       "quantized alike: skip all of its layers or none.")
    stacked = jax.tree.map(lambda *xs: stack_qarrays(xs) if is_q(xs[0]) else jnp.stack(xs), *blocks, is_leaf=is_q)
    node = tree
    for p in self.block_paths[0][:-1]:
      node = node[p]
    node[self.block_paths[0][-1]] = stacked

  def kernel_view(self, path: str) -> MatrixView | None:
    """The (K, N) view of a linear's kernel by block-relative (or, for linears outside blocks, full) path."""
    full = path if path in self.sites else f"{_path_str(self.block_paths[0])}/{path}"
    view = self.sites[full].view
    return None if view.is_identity else view

  def capture_input(self, mod: nn.Module, args: tuple, kwargs: dict):
    """The (tokens, K) input of a supported linear call, else None."""
    site, _ = linear_site(mod, args, kwargs)
    return None if site is None else flatten_input(args[0], site.x_axes)

  def outside_groups(self) -> list[list[str]]:
    """Linears outside the blocks (full paths), grouped by shared input, in call order."""
    return self._grouped(self.outside)

  def block_fn(self, i):
    """fn(block_params, hidden, ctx); the "rest" pseudo-block is the whole model on the batch."""
    if i == "rest":
      return lambda p, batch, ctx: self._forward({"params": p}, batch)
    return lambda bp, h, ctx: self.apply_block(0, bp, h, ctx)
