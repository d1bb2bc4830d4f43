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
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
    ckpt.save(directory, ocp.args.Composite(
        tensors=ocp.args.StandardSave({f"t{i}": jnp.asarray(tensors[n]) for i, n in enumerate(names)}),
        meta=ocp.args.JsonSave(meta)))


def load_orbax(directory: str | os.PathLike):
  """Reads a tree written by `save_orbax`, bit-exact."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise ValueError(f"load_orbax: {directory!r} is not a directory; give the folder written by save_orbax.")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
    restored = ckpt.restore(directory, ocp.args.Composite(tensors=ocp.args.StandardRestore(),
                                                          meta=ocp.args.JsonRestore()))
  meta = dict(restored["meta"])
  names = meta.pop("orbax_names")
  tensors = {n: np.asarray(restored["tensors"][f"t{i}"]) for i, n in enumerate(names)}
  return from_storage(tensors, meta)
