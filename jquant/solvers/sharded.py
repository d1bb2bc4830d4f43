"""Column-sharded solves: a (K, N) kernel sharded over N on a device mesh is solved shard-locally with `shard_map`.

GPTQ's output columns are independent given the (shared) Hessian: every device receives its N-slice of the kernel and
the whole (K, K) Hessian (the only statistic a column needs), runs the unchanged single-device solver on it, and keeps
its slice of the codes, scales and zero points; act-order's permutation comes from ``diag(H)``, the same on every
device. Nothing crosses devices during the solve, so the result equals the unsharded solve column for column
(bit-identical where XLA computes a column's arithmetic the same way on an N-slice, which the tests check).

A kernel sharded over K as well is first re-laid-out to whole columns (what the solver needs), then solved per N-shard.
Specs whose parameters couple columns (``PerTensor``) are not column-separable: `column_sharding` returns None and the
caller solves it as one array (XLA's partitioner places the work).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jquant.core.granularity import PerTensor
from jquant.core.spec import QuantSpec

__all__ = ["column_sharding", "solve_by_columns"]


def column_sharding(w: Any, spec: QuantSpec | None = None) -> tuple[Mesh, Any] | None:
  """``(mesh, axis)`` when ``w`` is a jax.Array whose last axis is sharded (``NamedSharding``) over mesh ``axis``
  (a name or a tuple of names) and ``spec`` keeps columns independent; else None."""
  s = getattr(w, "sharding", None)
  if not isinstance(s, NamedSharding) or getattr(w, "ndim", 0) < 2:
    return None
  if spec is not None and isinstance(spec.granularity, PerTensor):
    return None
  entries = tuple(s.spec) + (None,) * (w.ndim - len(s.spec))
  if entries[-1] is None:
    return None
  return s.mesh, entries[-1]


@functools.lru_cache(maxsize=64)
def _program(fn: Callable, mesh: Mesh, axis: Any, n_shared: int, out_kinds: Any):
  col, rep = P(None, axis), P()
  specs = jax.tree.map(lambda k: col if k == "col" else rep, out_kinds)
  # check_vma=False: the replicated outputs (act-order permutation, damping used) depend on the shared Hessian only,
  # which shard_map cannot prove through the solver's loops.
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(col,) + (rep,) * n_shared, out_specs=specs,
                               check_vma=False))


def solve_by_columns(fn: Callable, w: jax.Array, *shared, mesh: Mesh, axis: Any, out_kinds: Any):
  """``fn(w_slice, *shared)`` on every column shard of ``w`` (``shard_map`` over ``axis``; ``shared`` replicated).

  Args:
    fn: a hashable, jittable function of a (K, n) slice and the shared arrays.
    w: the (K, N) kernel; re-laid-out to ``P(None, axis)`` when it is sharded otherwise.
    shared: arrays every shard needs whole (the Hessian, damping).
    mesh, axis: from `column_sharding`.
    out_kinds: a pytree like ``fn``'s outputs with ``"col"`` (concatenated over shards along the last axis) or
      ``"rep"`` (the same on every shard) leaves; None for None outputs.
  """
  target = NamedSharding(mesh, P(None, axis))
  if w.sharding != target:
    w = jax.device_put(w, target)
  return _program(fn, mesh, axis, len(shared), out_kinds)(w, *shared)
