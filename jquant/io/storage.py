"""The on-disk layout of a (partly) quantized parameter tree, shared by the safetensors and orbax formats.

A tree of nested dicts/lists is flattened to '/'-joined paths. A float leaf at path ``P`` is stored as tensor ``P``.
A `QArray` leaf at ``P`` becomes tensors
  ``P.qvalue``     int8/uint8 bytes: 4-bit and 2-bit values packed along the last axis (core/packing.py order, the
                   last axis zero-padded to a whole byte), int8/uint8/int3 as is, float8 as its raw uint8 bits
  ``P.scale``      float32, or bfloat16/float16 stored as raw uint16 bits
  ``P.zero_point`` (asymmetric) packed like qvalue
  ``P.g_idx``      (act-order) int32
  ``P.scale.qvalue``/``P.scale.scale``/``P.scale.offset`` when the scale is double-quantized
  ``P.scale.block``/``P.scale.tensor`` for NVFP4 (E4M3 block scales as raw bits, float32 tensor scales)
float4_e2m1fn values (MXFP4/NVFP4) are packed two per byte like int4 (their 4-bit codes, `core/mx.py`), E8M0 and
E4M3 scales are stored as their raw uint8 bits.
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
from jquant.core.granularity import PerTensor, group_axis
from jquant.core.mx import NVFP4Scale, fp4_from_codes
from jquant.core.paths import set_in
from jquant.core.granularity import scale_shape as _scale_shape
from jquant.core.qarray import QArray
from jquant.core.spec_io import spec_from_dict, spec_to_dict

FORMAT = "jquant.storage/1"
_RAW_VIEW = {"bfloat16": np.uint16, "float16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8,
             "float8_e8m0fnu": np.uint8}
_PACKED = ("int4", "uint4", "int2", "uint2", "float4_e2m1fn")


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
  if dt in _PACKED:
    bits = 4 if "4" in dt else 2
    per = 8 // bits
    v = jnp.asarray(a.view(np.uint8) if dt == "float4_e2m1fn" else a.astype(np.int8))
    if v.ndim == 0:
      v = v[None]
    v = packing.pad_to_multiple(v, per, axis=-1)
    return np.asarray(packing.pack(v, bits=bits, axis=-1)), {**meta, "packed_bits": bits}
  if dt in _RAW_VIEW:
    return a.view(_RAW_VIEW[dt]), {**meta, "raw": True}
  if a.dtype.kind not in "fiub":
    raise TypeError(f"cannot store {name!r} of dtype {dt}; only numeric arrays are supported.")
  return np.ascontiguousarray(a), meta


class _LeafError(ValueError):
  """An inconsistency inside one leaf (re-raised by `from_storage` with the file and leaf names)."""


def _meta_shape(meta: dict, name: str) -> tuple[int, ...]:
  shape = meta.get("shape") if isinstance(meta, dict) else None
  if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                           for n in shape):
    raise _LeafError(f"tensor {name!r}: metadata shape {shape!r} is not a list of non-negative ints")
  return tuple(shape)


def _decode(buf: np.ndarray, meta: dict, name: str = "tensor") -> jax.Array:
  """Decodes one stored tensor, checking the buffer against its metadata (dtype, packed bits, shape)."""
  if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str):
    raise _LeafError(f"tensor {name!r}: metadata {meta!r} has no dtype string")
  dt, shape = meta["dtype"], _meta_shape(meta, name)
  if buf is None:
    raise _LeafError(f"tensor {name!r} is listed in the metadata but missing from the file")
  buf = np.asarray(buf)
  if "packed_bits" in meta:
    bits = meta["packed_bits"]
    if dt not in _PACKED or bits != (4 if "4" in dt else 2):
      raise _LeafError(f"tensor {name!r}: packed_bits={bits!r} does not match dtype {dt!r} (int4/uint4 pack 4 "
                       "bits, int2/uint2 pack 2)")
    per = 8 // bits
    n = shape[-1] if shape else 1
    want = (shape[:-1] if shape else ()) + (-(-n // per),)
    if buf.dtype not in (np.uint8, np.int8) or tuple(buf.shape) != want:
      raise _LeafError(f"tensor {name!r}: packed buffer {buf.dtype}{tuple(buf.shape)} does not hold {dt}{shape} "
                       f"(expected uint8/int8 of shape {want})")
    v = packing.unpack(jnp.asarray(buf), bits=bits, axis=-1, signed=dt.startswith("int"))[..., :n].reshape(shape)
    return fp4_from_codes(v) if dt == "float4_e2m1fn" else v.astype(jnp.dtype(dt))
  if dt in _PACKED:
    raise _LeafError(f"tensor {name!r}: dtype {dt} must be stored packed (packed_bits missing)")
  if meta.get("raw"):
    if dt not in _RAW_VIEW or buf.dtype != np.dtype(_RAW_VIEW[dt]) or tuple(buf.shape) != shape:
      raise _LeafError(f"tensor {name!r}: raw buffer {buf.dtype}{tuple(buf.shape)} does not hold {dt}{shape}")
    return jnp.asarray(buf.view(jnp.dtype(dt)).reshape(shape))
  try:
    want_dt = np.dtype(dt)
  except TypeError as e:
    raise _LeafError(f"tensor {name!r}: unknown dtype {dt!r}") from e
  if dt in _RAW_VIEW or buf.dtype != want_dt or tuple(buf.shape) != shape:
    raise _LeafError(f"tensor {name!r}: stored {buf.dtype}{tuple(buf.shape)} but the metadata says {dt}{shape}")
  return jnp.asarray(buf)


def _check_codes(q: jax.Array, qt, name: str) -> None:
  """Codes within the qtype's range where the storage dtype is wider (int3/uint3 in int8/uint8, NF4 in uint8),
  and float8 codes without NaN/inf."""
  if qt.is_float:
    bad = int(np.sum(~np.isfinite(np.asarray(q, np.float32))))
    if bad:
      raise _LeafError(f"{name}: {bad} {qt.name} codes are NaN/inf; a quantized value is always finite")
    return
  hi = len(qt.levels) - 1 if qt.is_lut else qt.qmax
  lo = 0 if qt.is_lut else qt.qmin
  info = jnp.iinfo(q.dtype)
  if (lo, hi) == (info.min, info.max) or q.size == 0:
    return
  a = np.asarray(q)
  if a.min() < lo or a.max() > hi:
    raise _LeafError(f"{name}: codes span [{int(a.min())}, {int(a.max())}], outside {qt.name}'s range "
                     f"[{int(lo)}, {int(hi)}] (a file relabelled to another qtype?)")


def _check_qarray(qa: QArray, entry: dict) -> None:
  """Every QArray invariant a loader can check: qtype vs storage and codes, scale/zero point/g_idx shapes, and
  finite positive scales."""
  spec, qt = qa.spec, qa.qtype
  if qa.qvalue.dtype != qt.storage_dtype:
    raise _LeafError(f"qvalue is stored as {qa.qvalue.dtype} but the spec's qtype {qt.name} is stored as "
                     f"{qt.storage_dtype} (a relabelled file?)")
  _check_codes(qa.qvalue, qt, "qvalue")
  try:
    if not jnp.issubdtype(jnp.dtype(qa.dtype), jnp.floating):
      raise TypeError
  except TypeError:
    raise _LeafError(f"dtype {qa.dtype!r} is not a floating dtype name") from None
  try:
    expected = _scale_shape(spec.granularity, qa.shape)
  except ValueError as e:
    raise _LeafError(f"spec {spec.granularity} does not fit qvalue of shape {qa.shape}: {e}") from None
  is_dq = isinstance(qa.scale, DoubleQuantScale)
  if is_dq != bool(spec.double_quant):
    raise _LeafError(f"spec.double_quant={spec.double_quant} but the stored scale is "
                     f"{'double-quantized' if is_dq else 'a plain array'}")
  if is_dq:
    d = qa.scale
    if d.kind not in ("log2", "linear"):
      raise _LeafError(f"double-quantized scale kind {d.kind!r} is unknown (expected 'log2' or 'linear')")
    nblk = d.scale.shape[0] if d.scale.ndim == 1 else -1
    n = int(np.prod(d.shape))
    off_ok = d.offset.shape == (() if d.kind == "linear" else (nblk,))
    if (d.qvalue.dtype != jnp.int8 or d.qvalue.ndim != 1 or nblk < 1 or d.qvalue.shape[0] % nblk
        or d.qvalue.shape[0] < n or not off_ok):
      raise _LeafError(f"double-quantized scale parts are inconsistent: qvalue {d.qvalue.dtype}"
                       f"{tuple(d.qvalue.shape)}, scale {tuple(d.scale.shape)}, offset {tuple(d.offset.shape)}")
    sshape, svals = tuple(d.shape), np.asarray(d.dequantize(), np.float64)
  elif isinstance(qa.scale, NVFP4Scale) or qt.scale_format == "float8_e4m3fn":
    sshape, svals = _check_nvfp4_scale(qa)
  else:
    if qa.scale.dtype != spec.scale_jnp_dtype:
      raise _LeafError(f"scale is stored as {qa.scale.dtype} but the spec says scale_dtype={spec.scale_dtype!r}")
    sshape, svals = tuple(qa.scale.shape), np.asarray(qa.scale.astype(jnp.float32), np.float64)
  if sshape != expected:
    raise _LeafError(f"scale has shape {sshape}, expected {expected} for {spec.granularity} on qvalue {qa.shape}")
  bad = ~(np.isfinite(svals) & (svals > 0))
  if bad.any():
    raise _LeafError(f"{int(bad.sum())} scales are not finite and positive (e.g. {float(svals[bad][0])!r}); "
                     "scales are always > 0")
  if (qa.zero_point is None) != bool(spec.symmetric):
    raise _LeafError(f"symmetric={spec.symmetric} spec but the zero point is "
                     f"{'missing' if qa.zero_point is None else 'present'}")
  if qa.zero_point is not None:
    if qa.zero_point.dtype != qt.storage_dtype or tuple(qa.zero_point.shape) != expected:
      raise _LeafError(f"zero_point {qa.zero_point.dtype}{tuple(qa.zero_point.shape)} does not match "
                       f"{qt.storage_dtype}{expected}")
    _check_codes(qa.zero_point, qt, "zero_point")
  if qa.g_idx is not None:
    ax = group_axis(spec.granularity, qa.ndim)
    if ax is None:
      raise _LeafError(f"g_idx is present but the granularity {spec.granularity} has no groups")
    g = np.asarray(qa.g_idx)
    if qa.g_idx.dtype != jnp.int32 or g.shape != (qa.shape[ax],) or (g.size and (g.min() < 0
                                                                                 or g.max() >= expected[ax])):
      raise _LeafError(f"g_idx {qa.g_idx.dtype}{g.shape} must be int32 of shape ({qa.shape[ax]},) with values in "
                       f"[0, {expected[ax]})")


def _check_nvfp4_scale(qa: QArray):
  """(block-scale shape, float64 values that must be > 0) of an NVFP4 scale; block scales may be 0 (a block far
  below the tensor's range encodes as zeros), the tensor scales may not."""
  d = qa.scale
  if not isinstance(d, NVFP4Scale) or qa.qtype.scale_format != "float8_e4m3fn":
    raise _LeafError(f"a {qa.qtype.name} QArray needs an NVFP4 two-level scale, got {type(d).__name__}")
  want_t = _scale_shape(PerTensor(batch_axes=qa.spec.granularity.batch_axes), qa.shape)
  if d.block.dtype != jnp.float8_e4m3fn or d.tensor.dtype != jnp.float32 or tuple(d.tensor.shape) != want_t:
    raise _LeafError(f"NVFP4 scale parts {d.block.dtype}{tuple(d.block.shape)} / {d.tensor.dtype}"
                     f"{tuple(d.tensor.shape)} must be float8_e4m3fn block scales and float32 tensor scales {want_t}")
  b = np.asarray(d.block.astype(jnp.float32), np.float64)
  if not (np.isfinite(b) & (b >= 0)).all():
    raise _LeafError("NVFP4 block scales must be finite and >= 0")
  return tuple(d.block.shape), np.asarray(d.tensor, np.float64)


def to_storage(tree) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(tensors by name, JSON-able metadata) for a tree of dicts/lists with array and QArray leaves."""
  tensors: dict[str, np.ndarray] = {}
  leaves: dict[str, Any] = {}

  def put(name, arr):
    tensors[name], m = _encode(arr, name)
    return m

  for path, leaf in _flatten(tree):
    if isinstance(leaf, QArray):
      try:   # never write a checkpoint that the loader would refuse (e.g. NaN scales from a jit-time NaN input)
        _check_qarray(leaf, {})
      except _LeafError as err:
        raise ValueError(f"cannot save leaf {path!r}: {err}.") from None
      entry = {"kind": "qarray", "spec": spec_to_dict(leaf.spec), "dtype": leaf.dtype,
               "qvalue": put(f"{path}.qvalue", leaf.qvalue)}
      if isinstance(leaf.scale, DoubleQuantScale):
        entry["scale"] = {"double_quant": True, "shape": list(leaf.scale.shape), "kind": leaf.scale.kind,
                          "qvalue": put(f"{path}.scale.qvalue", leaf.scale.qvalue),
                          "scale": put(f"{path}.scale.scale", leaf.scale.scale),
                          "offset": put(f"{path}.scale.offset", leaf.scale.offset)}
      elif isinstance(leaf.scale, NVFP4Scale):
        entry["scale"] = {"nvfp4": True, "block": put(f"{path}.scale.block", leaf.scale.block),
                          "tensor": put(f"{path}.scale.tensor", leaf.scale.tensor)}
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


def from_storage(tensors: dict[str, np.ndarray], meta: dict[str, Any], source: str = "checkpoint"):
  """Inverse of `to_storage`: a nested dict tree (sequences come back as dicts keyed '0', '1', ...).

  Every leaf is validated against its metadata (`_check_qarray`); a relabelled, truncated or inconsistent file, or
  malformed metadata, raises ValueError naming ``source`` (the file) and the leaf.
  """
  if not isinstance(meta, dict):
    raise ValueError(f"{source}: the jquant metadata is a {type(meta).__name__}, not a JSON object; the file is "
                     "damaged or was not written by jquant.")
  if meta.get("format") != FORMAT:
    raise ValueError(f"{source}: not a jquant checkpoint (format {meta.get('format')!r}, expected {FORMAT!r}).")
  leaves = meta.get("leaves")
  if not isinstance(leaves, dict):
    raise ValueError(f"{source}: malformed metadata: 'leaves' is {type(leaves).__name__}, expected an object of "
                     "leaf path -> entry; the file is damaged.")
  used: set[str] = set()
  root: dict = {}
  for path, e in leaves.items():
    try:
      val = _load_leaf(tensors, path, e, used)
    except _LeafError as err:
      raise ValueError(f"{source}: leaf {path!r}: {err}. The file is inconsistent; re-export it.") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as err:
      raise ValueError(f"{source}: malformed metadata for leaf {path!r} ({type(err).__name__}: {err}); the file "
                       "is damaged or was not written by this jquant version.") from None
    set_in(root, path, val, create=True)
  extra = sorted(set(tensors) - used)
  if extra:
    raise ValueError(f"{source}: {len(extra)} tensors are not described by the metadata (e.g. {extra[0]!r}); the "
                     "file is inconsistent.")
  return root


def _load_leaf(tensors, path: str, e: dict, used: set):
  if not isinstance(e, dict) or e.get("kind") not in ("none", "array", "qarray"):
    raise _LeafError(f"entry {e!r} has no kind 'array', 'qarray' or 'none'")

  def get(name, m):
    used.add(name)
    return _decode(tensors.get(name), m, name)

  if e["kind"] == "none":
    return None
  if e["kind"] == "array":
    return get(path, e)
  try:
    spec = spec_from_dict(e["spec"])
  except (KeyError, TypeError, ValueError) as err:
    raise _LeafError(f"its QuantSpec metadata {e.get('spec')!r} is invalid: {err}") from None
  s = e["scale"]
  if isinstance(s, dict) and s.get("double_quant"):
    scale = DoubleQuantScale(qvalue=get(f"{path}.scale.qvalue", s["qvalue"]),
                             scale=get(f"{path}.scale.scale", s["scale"]),
                             offset=get(f"{path}.scale.offset", s["offset"]),
                             shape=tuple(_meta_shape(s, f"{path}.scale")), kind=s.get("kind", "linear"))
  elif isinstance(s, dict) and s.get("nvfp4"):
    scale = NVFP4Scale(block=get(f"{path}.scale.block", s["block"]), tensor=get(f"{path}.scale.tensor", s["tensor"]))
  else:
    scale = get(f"{path}.scale", s)
  zp = get(f"{path}.zero_point", e["zero_point"]) if "zero_point" in e else None
  g_idx = get(f"{path}.g_idx", e["g_idx"]) if "g_idx" in e else None
  qa = QArray(qvalue=get(f"{path}.qvalue", e["qvalue"]), scale=scale, zero_point=zp, g_idx=g_idx,
              qtype=spec.qtype, spec=spec, dtype=e["dtype"])
  _check_qarray(qa, e)
  return qa


def dumps_meta(meta: dict[str, Any]) -> str:
  return json.dumps(meta, sort_keys=True)
