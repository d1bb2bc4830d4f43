"""Save/load quantized parameter trees with orbax (layout: `jquant/io/storage.py`; metadata as a JSON item)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from jquant.io.storage import from_storage, to_storage


def save_orbax(directory: str | os.PathLike, tree) -> None:
  """Writes ``tree`` to an orbax checkpoint directory (must not exist yet)."""
  import orbax.checkpoint as ocp
  tensors, meta = to_storage(tree)
  names = sorted(tensors)
  meta = {**meta, "orbax_names": names}     # orbax keys are t0, t1, ... (paths may hold '/' and '.')
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory):
    raise ValueError(f"save_orbax: {directory!r} already exists; orbax checkpoints are written to a new directory "
                     "(remove it or choose another path).")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:   # orbax writes to a temporary dir and renames
    ckpt.save(directory, ocp.args.Composite(
        tensors=ocp.args.StandardSave({f"t{i}": jnp.asarray(tensors[n]) for i, n in enumerate(names)}),
        meta=ocp.args.JsonSave(meta)))


def load_orbax(directory: str | os.PathLike):
  """Reads a tree written by `save_orbax`, bit-exact."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise ValueError(f"load_orbax: {directory!r} is not a directory; give the folder written by save_orbax.")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
      restored = ckpt.restore(directory, ocp.args.Composite(tensors=ocp.args.StandardRestore(),
                                                            meta=ocp.args.JsonRestore()))
  except Exception as e:   # orbax/tensorstore raise many types for a damaged directory
    raise ValueError(f"load_orbax: {directory!r} cannot be restored ({type(e).__name__}: {str(e)[:300]}); the "
                     "checkpoint is damaged or was not written by save_orbax.") from None
  meta = restored["meta"]
  names = meta.get("orbax_names") if isinstance(meta, dict) else None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"load_orbax: {directory!r}: malformed metadata (no list 'orbax_names'); the checkpoint is "
                     "damaged or was not written by save_orbax.")
  meta = {k: v for k, v in meta.items() if k != "orbax_names"}
  stored = restored["tensors"] or {}
  if len(stored) != len(names):
    raise ValueError(f"load_orbax: {directory!r} holds {len(stored)} tensors but its metadata names "
                     f"{len(names)}; the checkpoint is inconsistent.")
  tensors = {n: np.asarray(stored[f"t{i}"]) for i, n in enumerate(names)}
  return from_storage(tensors, meta, source=directory)
