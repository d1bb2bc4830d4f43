"""Save/load quantized parameter trees as one safetensors file (layout: `jquant/io/storage.py`)."""

from __future__ import annotations

import json
import os

from jquant.io.storage import dumps_meta, from_storage, to_storage


def save_safetensors(path: str | os.PathLike, tree) -> None:
  """Writes ``tree`` (nested dicts/lists of arrays and QArrays) to ``path``; metadata goes in the header."""
  from safetensors.numpy import save_file
  tensors, meta = to_storage(tree)
  save_file(tensors, os.fspath(path), metadata={"jquant": dumps_meta(meta)})


def load_safetensors(path: str | os.PathLike):
  """Reads a tree written by `save_safetensors`, bit-exact."""
  from safetensors import safe_open
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"load_safetensors: {path!r} does not exist; give the file written by save_safetensors.")
  with safe_open(path, framework="numpy") as f:
    header = f.metadata() or {}
    if "jquant" not in header:
      raise ValueError(f"load_safetensors: {path!r} has no jquant metadata; it was not written by save_safetensors.")
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  return from_storage(tensors, json.loads(header["jquant"]))
