"""The on-disk layout of a (partly) quantized parameter tree, shared by the safetensors and orbax formats.

A tree of nested dicts/lists is flattened to '/'-joined paths. A float leaf at path ``P`` is stored as tensor ``P``.
A `QArray` leaf at ``P`` becomes tensors
  ``P.qvalue``     int8/uint8 bytes: 4-bit and 2-bit values packed along the last axis (core/packing.py order, the
                   last axis zero-padded to a whole byte), int8/uint8/int3 as is, float8 as its raw uint8 bits
  ``P.scale``      float32, or bfloat16/float16 stored as raw uint16 bits
  ``P.zero_point`` (asymmetric) packed like qvalue
  ``P.g_idx``      (act-order) int32
  ``P.scale.qvalue``/``P.scale.scale``/``P.scale.offset`` when the scale is double-quantized
and one JSON metadata document records, per leaf, its kind, logical shape and dtypes, and for QArrays the full
QuantSpec. Loading rebuilds identical arrays: the round trip is bit-exact. No pickle anywhere.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core import packing
from jquant.core.double_quant import DoubleQuantScale
from jquant.core.qarray import QArray
from jquant.core.spec_io import spec_from_dict, spec_to_dict

FORMAT = "jquant.storage/1"
_RAW_VIEW = {"bfloat16": np.uint16, "float16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if "/" in str(k):
        raise ValueError(f"key {k!r} contains '/', which the storage layout uses as separator; rename it.")
      yield from _flatten(v, f"{prefix}{k}/")
  elif isinstance(tree, (list, tuple)) and not isinstance(tree, QArray):
    for i, v in enumerate(tree):
      yield from _flatten(v, f"{prefix}{i}/")
  else:
    yield prefix[:-1], tree


def _encode(a, name: str) -> tuple[np.ndarray, dict]:
  a = np.asarray(jax.device_get(a))
  dt = str(a.dtype)
  meta = {"dtype": dt, "shape": list(a.shape)}
  if dt in ("int4", "uint4", "int2", "uint2"):
    bits = 4 if "4" in dt else 2
    per = 8 // bits
    v = jnp.asarray(a.astype(np.int8))
    if v.ndim == 0:
      v = v[None]
    v = packing.pad_to_multiple(v, per, axis=-1)
    return np.asarray(packing.pack(v, bits=bits, axis=-1)), {**meta, "packed_bits": bits}
  if dt in _RAW_VIEW:
    return a.view(_RAW_VIEW[dt]), {**meta, "raw": True}
  if a.dtype.kind not in "fiub":
    raise TypeError(f"cannot store {name!r} of dtype {dt}; only numeric arrays are supported.")
  return np.ascontiguousarray(a), meta


def _decode(buf: np.ndarray, meta: dict) -> jax.Array:
  dt, shape = meta["dtype"], tuple(meta["shape"])
  if "packed_bits" in meta:
    bits = meta["packed_bits"]
    v = packing.unpack(jnp.asarray(buf), bits=bits, axis=-1, signed=dt.startswith("int"))
    n = shape[-1] if shape else 1
    return v[..., :n].reshape(shape).astype(jnp.dtype(dt))
  if meta.get("raw"):
    return jnp.asarray(np.asarray(buf).view(jnp.dtype(dt)).reshape(shape))
  return jnp.asarray(np.asarray(buf).reshape(shape))


def to_storage(tree) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(tensors by name, JSON-able metadata) for a tree of dicts/lists with array and QArray leaves."""
  tensors: dict[str, np.ndarray] = {}
  leaves: dict[str, Any] = {}

  def put(name, arr):
    tensors[name], m = _encode(arr, name)
    return m

  for path, leaf in _flatten(tree):
    if isinstance(leaf, QArray):
      entry = {"kind": "qarray", "spec": spec_to_dict(leaf.spec), "dtype": leaf.dtype,
               "qvalue": put(f"{path}.qvalue", leaf.qvalue)}
      if isinstance(leaf.scale, DoubleQuantScale):
        entry["scale"] = {"double_quant": True, "shape": list(leaf.scale.shape), "kind": leaf.scale.kind,
                          "qvalue": put(f"{path}.scale.qvalue", leaf.scale.qvalue),
                          "scale": put(f"{path}.scale.scale", leaf.scale.scale),
                          "offset": put(f"{path}.scale.offset", leaf.scale.offset)}
      else:
        entry["scale"] = put(f"{path}.scale", leaf.scale)
      if leaf.zero_point is not None:
        entry["zero_point"] = put(f"{path}.zero_point", leaf.zero_point)
      if leaf.g_idx is not None:
        entry["g_idx"] = put(f"{path}.g_idx", leaf.g_idx)
      leaves[path] = entry
    elif leaf is None:
      leaves[path] = {"kind": "none"}
    else:
      leaves[path] = {"kind": "array", **put(path, leaf)}
  return tensors, {"format": FORMAT, "leaves": leaves}


def _insert(root: dict, path: str, value):
  keys = path.split("/") if path else [""]
  node = root
  for k in keys[:-1]:
    node = node.setdefault(k, {})
  node[keys[-1]] = value


def from_storage(tensors: dict[str, np.ndarray], meta: dict[str, Any]):
  """Inverse of `to_storage`: a nested dict tree (sequences come back as dicts keyed '0', '1', ...)."""
  if meta.get("format") != FORMAT:
    raise ValueError(f"not a jquant checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}).")
  root: dict = {}
  for path, e in meta["leaves"].items():
    if e["kind"] == "none":
      val = None
    elif e["kind"] == "array":
      val = _decode(tensors[path], e)
    else:
      spec = spec_from_dict(e["spec"])
      s = e["scale"]
      if isinstance(s, dict) and s.get("double_quant"):
        scale = DoubleQuantScale(qvalue=_decode(tensors[f"{path}.scale.qvalue"], s["qvalue"]),
                                 scale=_decode(tensors[f"{path}.scale.scale"], s["scale"]),
                                 offset=_decode(tensors[f"{path}.scale.offset"], s["offset"]),
                                 shape=tuple(s["shape"]), kind=s.get("kind", "linear"))
      else:
        scale = _decode(tensors[f"{path}.scale"], s)
      zp = _decode(tensors[f"{path}.zero_point"], e["zero_point"]) if "zero_point" in e else None
      g_idx = _decode(tensors[f"{path}.g_idx"], e["g_idx"]) if "g_idx" in e else None
      val = QArray(qvalue=_decode(tensors[f"{path}.qvalue"], e["qvalue"]), scale=scale, zero_point=zp,
                   g_idx=g_idx, qtype=spec.qtype, spec=spec, dtype=e["dtype"])
    _insert(root, path, val)
  return root


def dumps_meta(meta: dict[str, Any]) -> str:
  return json.dumps(meta, sort_keys=True)
