"""Calibration over a device mesh: where the PTQ pipeline's params, batches and statistics live.

`quantize_model(..., mesh=mesh)` lays its inputs out over a `jax.sharding.Mesh` with a data axis and a model axis:

* batches (`shard_batches`): every array leaf of a batch is split over ``data_axis`` along its first (batch) axis.
  Each process passes only *its own* batches (``jax.make_array_from_process_local_data``): under
  ``jax.distributed`` with P processes the global batch is the P local ones side by side;
* params (`shard_params`): leaves already laid out on the mesh (``NamedSharding``) keep their sharding; any other
  ``kernel`` (and its ``bias``) is split over ``model_axis`` along its last (output) axis when that divides, every
  other leaf is replicated;
* statistics: the capture program (one jit per block) runs SPMD on these arrays, so each device reduces its own
  tokens to a partial Gram matrix / moments and XLA all-reduces them over the data axis; the reduced statistics are
  replicated (each column shard of a GPTQ solve needs the whole (K, K) Gram matrix, nothing else);
* solves: an N-sharded kernel is solved shard-locally (`jquant.solvers.sharded`); AWQ / SmoothQuant searches are
  jit-compiled over the sharded kernels (their sums / maxima over N become all-reduces), and the quantized kernels
  keep the kernel's sharding.

Only the small strided token sample kept for the report's SQNR is brought to the host (`host_array`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any

__all__ = ["check_mesh", "host_array", "shard_batches", "shard_params"]


def check_mesh(mesh: Any, data_axis: str, model_axis: str) -> None:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"quantize_model: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((2, 4), ('data', "
                    f"'model'))), got {type(mesh).__name__}.")
  for what, ax in (("data_axis", data_axis), ("model_axis", model_axis)):
    if ax not in mesh.axis_names:
      raise ValueError(f"quantize_model: {what}={ax!r} is not an axis of the mesh {dict(mesh.shape)}; name the mesh "
                       f"axes ('data', 'model') or pass {what}= one of {list(mesh.axis_names)}.")


def _on_mesh(a: Any, mesh: Mesh) -> bool:
  s = getattr(a, "sharding", None)
  return isinstance(s, NamedSharding) and s.mesh.shape_tuple == mesh.shape_tuple and \
      tuple(s.mesh.devices.flat) == tuple(mesh.devices.flat)


def _place(a: Any, sharding: NamedSharding) -> jax.Array:
  if isinstance(a, jax.Array) and a.is_fully_addressable and jax.process_count() == 1:
    return jax.device_put(a, sharding)
  host = np.asarray(a)           # every process holds the whole leaf: each device takes its slice
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_params(params: PyTree, mesh: Mesh, model_axis: str = "model") -> PyTree:
  """``params`` laid out on ``mesh`` (see the module docstring); nested dicts of arrays."""
  size = mesh.shape[model_axis]

  def walk(node, kernel_n):
    if hasattr(node, "keys") and not hasattr(node, "shape"):
      k = node.get("kernel") if "kernel" in node else None
      n = k.shape[-1] if k is not None and hasattr(k, "shape") and len(k.shape) >= 2 else None
      return {key: walk(v, n if key in ("kernel", "bias") else None) for key, v in node.items()}
    if not hasattr(node, "shape") or _on_mesh(node, mesh):
      return node
    nd = len(node.shape)
    split = kernel_n is not None and nd >= 1 and node.shape[-1] == kernel_n and kernel_n % size == 0
    return _place(node, NamedSharding(mesh, P(*([None] * (nd - 1) + [model_axis])) if split else P()))

  return walk(params, None)


def shard_batches(batches: list, mesh: Mesh, data_axis: str = "data") -> list:
  """Each process's batches as global arrays split over ``data_axis`` along their first axis."""
  n_data = mesh.shape[data_axis]
  local = max(1, n_data // jax.process_count())
  out = []
  for b, batch in enumerate(batches):
    def put(a, b=b):
      if not hasattr(a, "shape") or len(a.shape) == 0 or _on_mesh(a, mesh):
        return a
      if a.shape[0] % local:
        raise ValueError(f"quantize_model: calibration batch {b} has {a.shape[0]} rows on this process, not a "
                         f"multiple of the {local} data-parallel devices it feeds (mesh axis {data_axis!r} of size "
                         f"{n_data} over {jax.process_count()} processes); use batches of a multiple of {local} rows.")
      spec = P(data_axis, *([None] * (len(a.shape) - 1)))
      return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(a))
    out.append(jax.tree.map(put, batch))
  return out


def host_array(x: Any) -> np.ndarray:
  """``x`` on the host (all processes' shards gathered when it spans several processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
