"""What Linen and NNX models share once a forward has been traced: linear sites, blocks, linear groups.

A framework adapter (`jquant.ptq.linen_model.LinenModel`, `jquant.ptq.nnx_model.NNXModel`) traces the user's forward
once, calling `TracedModel._find_blocks` with the module calls it saw (path, module, args, kwargs, output) and the
params as a nested dict with string keys. This base then knows:

* the blocks: repeated sibling modules with the same parameter structure (``layers_0..N``, ``blocks_0..N``,
  ``h_0..N``, an NNX list ``layers/0..N``; the family covering the most linears wins), an ``nn.scan``-ned layer (its
  params carry a leading layer axis), or the modules whose path matches ``blocks=REGEX``. A block's first positional
  input must be the previous block's output (or the first element of a returned tuple), its other inputs the same
  for every block (masks, positions);
* the linear groups of a block: linears that read the same input array (q/k/v, gate/up), in call order;

and implements the params-access side of `jquant.ptq.BlockwiseModel` (block names, get/set a block, kernel views,
linear groups, the linears outside blocks). The adapter supplies the framework side: ``embed``, ``apply_block``,
``forward_params`` (the whole model on a params dict), ``linear_site`` and ``intercept``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jquant.core.paths import get_in, join, set_in
from jquant.core.qarray import QArray
from jquant.core.views import MatrixView, stack_qarrays
from jquant.ptq.sites import (LinearSite, classify_linear, experts_call, flatten_input,  # noqa: F401  (re-exported)
                              group_sizes_of, parse_einsum)

PyTree = Any

__all__ = ["TracedModel", "LinearSite", "experts_call", "flatten_input", "group_sizes_of", "parse_einsum"]


class _Stop(Exception):
  """Raised inside a traced forward once the first block's inputs are captured."""

  def __init__(self, payload):
    super().__init__("stop")
    self.payload = payload


def _get_in(tree, path: Sequence[str]):
  return get_in(tree, join(path))


def _struct(tree) -> Any:
  return jax.tree.map(lambda a: tuple(a.shape), tree)


_INDEXED = re.compile(r"^(.*?)(\d+)$")


@dataclasses.dataclass
class _Call:
  path: tuple[str, ...]
  module: Any                # an unbound clone (Linen) or the module (NNX)
  args: tuple
  kwargs: dict
  out: Any
  scanned: bool = False


class TracedModel:
  """Blocks, linear groups and params access of a traced model (see the module docstring). Subclasses set
  ``sites``, ``unsupported``, ``linear_order``, ``_linear_input`` (path -> id of the input array) while tracing, then
  call `_find_blocks`."""

  scanned = False

  def _init_tables(self):
    self.sites: dict[str, LinearSite] = {}          # full linear path -> site
    self.unsupported: dict[str, str] = {}            # full path -> reason
    self.linear_order: list[str] = []
    self.outside: list[str] = []
    self._pending: dict[int, dict] = {}
    self._linear_input: dict[str, int] = {}

  def _record(self, path: str, site, why, x) -> bool:
    """Records a module call seen while tracing; True when it was a linear (or unsupported kernel) module."""
    if site is not None:
      if path not in self.sites:
        self.sites[path] = site
        self.linear_order.append(path)
        self._linear_input[path] = id(x)
      return True
    if why is not None:
      self.unsupported.setdefault(path, why)
      return True
    return False

  def _trace_batch0(self, run, params, batch, calls: list) -> None:
    """``jax.eval_shape(run, params, batch)`` while the adapter's interceptor fills ``calls``; a model that rejects
    the batch is a ValueError naming the batch's shapes."""
    self._trace_keepalive = calls   # ids are only meaningful while the traced values live
    try:
      jax.eval_shape(run, params, batch)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"quantize_model: the model rejected calibration batch 0 "
                       f"({jax.tree.map(lambda a: getattr(a, 'shape', a), batch)}): {type(e).__name__}: {e}") from e

  def _check_found_linears(self, calls: list, supported: str) -> None:
    """ValueError when the trace found no supported linear layer (``supported`` names the framework's types)."""
    if not self.sites:
      types = sorted({type(c.module).__name__ for c in calls})
      raise ValueError(f"quantize_model: found no supported linear layer ({supported}) in "
                       f"{type(self.module).__name__}; it called modules of types {types}"
                       + (f" and unsupported layers {sorted(set(self.unsupported.values()))}" if self.unsupported
                          else "") + ".")

  # --- framework side (subclasses) ---
  def linear_site(self, mod, args: tuple, kwargs: dict):
    """(site, None) for a supported linear call, (None, reason) for an unsupported kernel module, else (None, None)."""
    raise NotImplementedError(f"{type(self).__name__}: a framework adapter must implement linear_site")

  def forward_params(self, params, batch):
    """The whole model on a params dict and a calibration batch."""
    raise NotImplementedError(f"{type(self).__name__}: a framework adapter must implement forward_params")

  def params_tree(self, params):
    """The user's params as the nested dict the pipeline works on."""
    return params

  def export_params(self, tree):
    """The pipeline's output dict in the user's params format."""
    return tree

  # --- blocks ---
  def _covered(self, prefix: tuple[str, ...]) -> list[str]:
    pre = join(prefix) + "/"
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
      paths = [p for p in first_calls if p and rx.fullmatch(join(p))]
      if not paths:
        raise ValueError(f"quantize_model: blocks={blocks_regex!r} matches no module path; module paths called: "
                         f"{[join(p) for p in list(first_calls)[:12]]}.")
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
    rel = lambda bp: [p[len(join(bp)) + 1:] for p in self._covered(bp)]
    self._groups = [[[q[len(join(paths[0])) + 1:] for q in g] for g in self._grouped(self._covered(paths[0]))]]
    for bp in paths[1:]:
      if sorted(rel(bp)) != sorted(rel(paths[0])):
        raise ValueError(f"quantize_model: block {join(bp)} has linears {rel(bp)}, block "
                         f"{join(paths[0])} has {rel(paths[0])}; blocks must be alike. Pass blocks=REGEX.")
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
    stored = get_in(params, lin[0])["kernel"]
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
        raise ValueError(f"quantize_model: block {join(cur)} does not read the output of block "
                         f"{join(prev)} as its first argument, so the blocks cannot be chained; pass "
                         "blocks=REGEX naming modules that follow one another (or a model without blocks).")
      dyn, _ = self._split_ctx(b.args[1:], b.kwargs)
      if len(dyn) != len(dyn0) or any(x is not y for x, y in zip(dyn, dyn0)):
        raise ValueError(f"quantize_model: block {join(cur)} gets other extra inputs than block "
                         f"{join(paths[0])} (masks, positions must be the same arrays for every block); pass "
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

  # --- BlockwiseModel protocol (params side) ---
  def block_names(self) -> Sequence[str]:
    if self.scanned:
      n = jax.tree.leaves(self._scan_len_params)[0].shape[0] if hasattr(self, "_scan_len_params") else None
      return tuple(f"{join(self.block_paths[0])}[{i}]" for i in range(n))
    return tuple(join(p) for p in self.block_paths)

  def bind_params(self, params):
    """Remembers the layer count of a scanned block from ``params``."""
    if self.scanned:
      self._scan_len_params = _get_in(params, self.block_paths[0])

  def linear_groups(self) -> Sequence[Sequence[str]]:
    return self._groups[0]

  # --- params access ---
  def get_block(self, params, name: str):
    if self.scanned:
      i = int(name.rsplit("[", 1)[1][:-1])
      return jax.tree.map(lambda a: a[i], _get_in(params, self.block_paths[0]))
    return get_in(params, name)

  def set_block(self, tree, name: str, block) -> None:
    """Writes a block's params into ``tree`` (scanned layers are collected and stacked by `finish`)."""
    if self.scanned:
      self._pending.setdefault(id(tree), {})[name] = block
      return
    set_in(tree, name, block)

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
      raise ValueError(f"quantize_model: the layers of scanned block {join(self.block_paths[0])} were "
                       "quantized differently (a skip pattern hit some layers only); a scanned stack must be "
                       "quantized alike: skip all of its layers or none.")
    stacked = jax.tree.map(lambda *xs: stack_qarrays(xs) if is_q(xs[0]) else jnp.stack(xs), *blocks, is_leaf=is_q)
    node = tree
    for p in self.block_paths[0][:-1]:
      node = node[p]
    node[self.block_paths[0][-1]] = stacked

  def kernel_view(self, path: str) -> MatrixView | None:
    """The (K, N) view of a linear's kernel by block-relative (or, for linears outside blocks, full) path."""
    full = path if path in self.sites else f"{join(self.block_paths[0])}/{path}"
    view = self.sites[full].view
    return None if view.is_identity else view

  def capture_input(self, mod, args: tuple, kwargs: dict):
    """The (tokens, K) input of a supported linear call (with its ``group_sizes`` for stacked experts), else None."""
    site, _ = self.linear_site(mod, args, kwargs)
    if site is not None and site.experts:
      return args[0], group_sizes_of(args, kwargs)
    return None if site is None else flatten_input(args[0], site.x_axes)

  def experts_of(self, path: str) -> int:
    """The number of stacked experts of a linear (block-relative or full path); 0 for a plain linear."""
    full = path if path in self.sites else f"{join(self.block_paths[0])}/{path}" if self.block_paths else path
    site = self.sites.get(full)
    return site.experts if site is not None else 0

  def outside_groups(self) -> list[list[str]]:
    """Linears outside the blocks (full paths), grouped by shared input, in call order."""
    return self._grouped(self.outside)

  def block_fn(self, i):
    """fn(block_params, hidden, ctx); the "rest" pseudo-block is the whole model on the batch."""
    if i == "rest":
      return lambda p, batch, ctx: self.forward_params(p, batch)
    return lambda bp, h, ctx: self.apply_block(0, bp, h, ctx)
