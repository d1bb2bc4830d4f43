"""Minimal safetensors reader/writer on NumPy (+ ml_dtypes for bf16/fp8), with the checks an importer needs.

Why not ``safetensors.numpy``: it cannot hold bfloat16 or float8 (NumPy has neither), and an importer wants the
header (dtype, shape) of every tensor before reading any data, to reject a file whose tensors disagree with
config.json with one clear error. Layout (the safetensors spec): 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw little-endian
bytes. Sharded checkpoints have ``model.safetensors.index.json`` with ``weight_map: {name: file}``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

__all__ = ["SafetensorsDir", "write_safetensors", "DTYPES"]

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


def _read_header(path: Path) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than the 8-byte header length).")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
      raise ValueError(f"{path}: not a safetensors file (header length {n} is implausible).")
    header = json.loads(f.read(n))
  return header, 8 + n


class SafetensorsDir:
  """The tensors of a Hugging Face model folder: ``model.safetensors`` or a sharded index.

  ``info(name)`` gives (dtype name, shape) without reading data; ``get(name)`` reads one tensor (memory-mapped).
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)
    index = self.path / "model.safetensors.index.json"
    single = self.path / "model.safetensors"
    if index.is_file():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    elif single.is_file():
      files = ["model.safetensors"]
    else:
      found = sorted(p.name for p in self.path.glob("*.safetensors"))
      if len(found) != 1:
        raise ValueError(f"{self.path}: no model.safetensors or model.safetensors.index.json (found "
                         f"{found or 'no .safetensors files'}); export the model with safetensors "
                         f"(save_pretrained(..., safe_serialization=True)).")
      files = found
    self._entries: dict[str, tuple[Path, dict, int]] = {}
    self.metadata: dict[str, str] = {}
    for fname in files:
      fpath = self.path / fname
      if not fpath.is_file():
        raise ValueError(f"{self.path}: the index names shard {fname}, which is missing.")
      header, start = _read_header(fpath)
      self.metadata.update(header.pop("__metadata__", None) or {})
      for name, e in header.items():
        if e["dtype"] not in DTYPES:
          raise ValueError(f"{fpath.name}: tensor {name!r} has dtype {e['dtype']}, which jquant cannot read "
                           f"(supported: {sorted(DTYPES)}).")
        self._entries[name] = (fpath, e, start)

  def keys(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def file_of(self, name: str) -> str:
    return self._entries[name][0].name

  def info(self, name: str) -> tuple[str, tuple[int, ...]]:
    if name not in self._entries:
      raise ValueError(f"{self.path}: tensor {name!r} is missing from the safetensors files.")
    e = self._entries[name][1]
    return e["dtype"], tuple(e["shape"])

  def get(self, name: str) -> np.ndarray:
    dt, shape = self.info(name)
    fpath, e, start = self._entries[name]
    b, end = e["data_offsets"]
    dtype = DTYPES[dt]
    count = (end - b) // dtype.itemsize
    if count != int(np.prod(shape, dtype=np.int64)):
      raise ValueError(f"{fpath.name}: tensor {name!r} holds {end - b} bytes, not shape {shape} of {dt}.")
    a = np.memmap(fpath, dtype=dtype.newbyteorder("<"), mode="r", offset=start + b, shape=(count,))
    return np.array(a, dtype=dtype).reshape(shape)


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes ``tensors`` (NumPy arrays; bf16/fp8 as ml_dtypes) to one file, names sorted, 8-byte aligned."""
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise TypeError(f"write_safetensors: tensor {name!r} has dtype {a.dtype}, which safetensors cannot store here.")
    nbytes = a.size * a.dtype.itemsize
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
    arrays.append(a)
    offset += nbytes
  hb = json.dumps(header, separators=(",", ":")).encode()
  hb += b" " * (-len(hb) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for a in arrays:
      f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
