"""Save/load quantized parameter trees as one safetensors file (layout: `jquant/io/storage.py`)."""

from __future__ import annotations

import json
import os

from jquant.io.atomic import atomic_file
from jquant.io.storage import dumps_meta, from_storage, to_storage


def save_safetensors(path: str | os.PathLike, tree) -> None:
  """Writes ``tree`` (nested dicts/lists of arrays and QArrays) to ``path``; metadata goes in the header.

  The file is written beside ``path`` and renamed into place: a crash never leaves a partial file at ``path``, and
  the temporary file is removed on failure. The file gets the usual mode (0o666 minus the umask).
  """
  from safetensors.numpy import save_file
  tensors, meta = to_storage(tree)
  with atomic_file(path) as tmp:
    save_file(tensors, tmp, metadata={"jquant": dumps_meta(meta)})


def load_safetensors(path: str | os.PathLike):
  """Reads a tree written by `save_safetensors`, bit-exact, validating every leaf against its metadata.

  Raises:
    ValueError: a missing, truncated or non-safetensors file, missing/invalid jquant metadata, or a leaf that does
      not match its metadata (the message names the file and the leaf).
  """
  from safetensors import safe_open
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"load_safetensors: {path!r} does not exist; give the file written by save_safetensors.")
  try:
    with safe_open(path, framework="numpy") as f:
      header = f.metadata() or {}
      if "jquant" not in header:
        raise ValueError(f"load_safetensors: {path!r} has no jquant metadata; it was not written by "
                         "save_safetensors.")
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except ValueError:
    raise
  except Exception as e:   # safetensors raises its own SafetensorError (truncated or not a safetensors file)
    raise ValueError(f"load_safetensors: {path!r} cannot be read as safetensors ({type(e).__name__}: {e}); the "
                     "file is truncated or damaged.") from None
  try:
    meta = json.loads(header["jquant"])
  except json.JSONDecodeError as e:
    raise ValueError(f"load_safetensors: {path!r} has invalid jquant metadata JSON ({e}); the file is damaged.") \
        from None
  return from_storage(tensors, meta, source=path)
