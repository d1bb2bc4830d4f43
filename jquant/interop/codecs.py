"""Integer weight codecs: GPTQ v1/v2, AWQ GEMM and compressed-tensors pack-quantized, in NumPy.

Every format is an offset/transpose/packing of one neutral record (`IntRecord`, Flax orientation):

* ``codes`` uint8 (K, N) in [0, 2^b - 1]; ``scale`` (nG, N) float; ``zero`` uint8 (nG, N), or None = symmetric
  (implicit zero 2^(b-1)); ``g_idx`` int32 (K,) or None (= k // G); ``group_size`` G (-1 = one group).
  Dequantized weight: ``scale[g] * (codes - zero[g])`` with ``g = g_idx[k]``.

Byte layouts (see ../shared/research/interop.md):

* GPTQ: ``qweight`` int32 (K*b/32, N) packed along K, element ``pf*r + j`` at bits ``b*j`` (low first);
  ``qzeros`` int32 (nG, N*b/32) packed along N; v1 stores ``zero - 1`` (only sound for symmetric layers), v2
  stores ``zero``; ``scales`` (nG, N); ``g_idx`` int32 (K,).
* AWQ GEMM (4-bit): ``qweight`` int32 (K, N/8) packed along N, nibble slot ``i`` of word ``c`` holds column
  ``8c + [0,2,4,6,1,3,5,7][i]``; ``qzeros`` (nG, N/8) likewise, true zero; ``scales`` (nG, N); no g_idx.
* compressed-tensors pack-quantized: ``weight_packed`` int32 (N, K*b/32) = GPTQ ``qweight`` transposed;
  ``weight_scale`` (N, nG); ``weight_zero_point`` int32 (N*b/32, nG) packed along N (asymmetric only);
  ``weight_g_idx`` (K,) (act-order only); ``weight_shape`` int64 [N, K]. Stored codes are signed + 2^(b-1),
  i.e. the unsigned codes above.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["IntRecord", "pack_int32", "unpack_int32", "AWQ_ORDER", "gptq_encode", "gptq_decode", "awq_encode",
           "awq_decode", "ct_pack_encode", "ct_pack_decode"]

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


@dataclasses.dataclass
class IntRecord:
  codes: np.ndarray            # uint8 (K, N)
  scale: np.ndarray            # (nG, N), float16/bfloat16/float32
  zero: np.ndarray | None      # uint8 (nG, N), None = symmetric (zero 2^(b-1))
  g_idx: np.ndarray | None     # int32 (K,), None = k // group_size
  bits: int
  group_size: int              # -1: one group over K

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.codes.shape)

  def zero_or_mid(self) -> np.ndarray:
    if self.zero is not None:
      return self.zero
    return np.full(self.scale.shape, 2 ** (self.bits - 1), np.uint8)

  def groups(self) -> np.ndarray:
    """int32 (K,): the scale row of each input row."""
    k = self.codes.shape[0]
    if self.g_idx is not None:
      return self.g_idx.astype(np.int32)
    return (np.arange(k) // (k if self.group_size == -1 else self.group_size)).astype(np.int32)

  def dequantize(self) -> np.ndarray:
    g = self.groups()
    return self.scale.astype(np.float32)[g] * (self.codes.astype(np.float32) - self.zero_or_mid().astype(np.float32)[g])


def trivial_g_idx(g_idx: np.ndarray, group_size: int) -> bool:
  k = g_idx.shape[0]
  return bool(np.array_equal(g_idx, np.arange(k) // (k if group_size == -1 else group_size)))


def pack_int32(u: np.ndarray, bits: int, axis: int) -> np.ndarray:
  """Packs unsigned codes along ``axis``, 32/bits per int32 word, lowest index in the lowest bits (zero-padded)."""
  if bits not in (2, 4, 8):
    raise ValueError(f"pack_int32: bits must be 2, 4 or 8, got {bits}.")
  pf = 32 // bits
  u = np.moveaxis(np.asarray(u, np.uint32), axis, -1)
  pad = -u.shape[-1] % pf
  if pad:
    u = np.concatenate([u, np.zeros(u.shape[:-1] + (pad,), np.uint32)], axis=-1)
  u = u.reshape(u.shape[:-1] + (u.shape[-1] // pf, pf))
  words = np.zeros(u.shape[:-1], np.uint32)
  for j in range(pf):
    words |= (u[..., j] & np.uint32(2 ** bits - 1)) << np.uint32(bits * j)
  return np.moveaxis(words.view(np.int32), -1, axis)


def unpack_int32(words: np.ndarray, bits: int, axis: int, n: int) -> np.ndarray:
  """Inverse of `pack_int32`: uint8 codes with ``n`` entries along ``axis``."""
  if bits not in (2, 4, 8):
    raise ValueError(f"unpack_int32: bits must be 2, 4 or 8, got {bits}.")
  pf = 32 // bits
  w = np.moveaxis(np.asarray(words).view(np.uint32), axis, -1)
  parts = [(w >> np.uint32(bits * j)) & np.uint32(2 ** bits - 1) for j in range(pf)]
  u = np.stack(parts, axis=-1).reshape(w.shape[:-1] + (w.shape[-1] * pf,))[..., :n]
  return np.moveaxis(u.astype(np.uint8), -1, axis)


def _expect(tensors: dict, name: str, dtype: str, shape: tuple, where: str) -> np.ndarray:
  """Fetches tensor ``name`` and checks its dtype and shape against what the config implies."""
  if name not in tensors:
    raise ValueError(f"{where}: tensor {name!r} is missing (the quantization_config says this layer is quantized).")
  a = tensors[name]
  a = a() if callable(a) else a
  if str(a.dtype) not in dtype.split("|") or tuple(a.shape) != tuple(shape):
    raise ValueError(f"{where}: tensor {name!r} is {a.dtype} {tuple(a.shape)}, but the quantization_config implies "
                     f"{dtype} {tuple(shape)}; the file does not match config.json.")
  return a


_SCALE_DTYPES = "float16|bfloat16|float32"


def gptq_encode(r: IntRecord, v2: bool) -> dict[str, np.ndarray]:
  """GPTQ tensors (without the layer prefix). v1 needs a symmetric record (its zero-1 corrupts zero 0)."""
  if not v2 and r.zero is not None and np.any(r.zero == 0):
    raise ValueError("GPTQ v1 stores zero-1 and cannot hold an asymmetric zero point of 0; write checkpoint_format "
                     "'gptq_v2' or compressed-tensors instead.")
  z = r.zero_or_mid().astype(np.int64) - (0 if v2 else 1)
  k = r.shape[0]
  return {"qweight": pack_int32(r.codes, r.bits, 0),
          "qzeros": pack_int32((z & (2 ** r.bits - 1)).astype(np.uint32), r.bits, 1),
          "scales": r.scale, "g_idx": r.groups()}


def gptq_decode(tensors: dict, k: int, n: int, bits: int, group_size: int, sym: bool, v2: bool,
                where: str) -> IntRecord:
  pf = 32 // bits
  ng = 1 if group_size == -1 else -(-k // group_size)
  qw = _expect(tensors, "qweight", "int32", (-(-k // pf), n), where)
  qz = _expect(tensors, "qzeros", "int32", (ng, -(-n // pf)), where)
  sc = _expect(tensors, "scales", _SCALE_DTYPES, (ng, n), where)
  g_idx = None
  if "g_idx" in tensors:
    g_idx = _expect(tensors, "g_idx", "int32|int64", (k,), where).astype(np.int32)
    if g_idx.min() < 0 or g_idx.max() >= ng:
      raise ValueError(f"{where}: tensor 'g_idx' has entries outside [0, {ng}); the file is corrupt.")
    if trivial_g_idx(g_idx, group_size):
      g_idx = None
  codes = unpack_int32(qw, bits, 0, k)
  znib = unpack_int32(qz, bits, 1, n).astype(np.int64)
  if not v2:
    if sym and np.all(znib == 2 ** (bits - 1)):   # mislabelled v2 (interop.md 1.4): all-8 zeros in a "v1" file
      zero = znib
    else:
      zero = znib + 1
  else:
    zero = znib
  mid = 2 ** (bits - 1)
  if sym:
    if not np.all(zero == mid):
      raise ValueError(f"{where}: the config says sym=true but 'qzeros' holds zero points other than {mid}.")
    zero_arr = None
  else:
    if np.any(zero > 2 ** bits - 1):
      raise ValueError(f"{where}: GPTQ v1 asymmetric zero points overflow (stored nibble 2^{bits}-1 means zero "
                       f"{2 ** bits}); this file cannot be decoded exactly. Re-export it as gptq_v2 or compressed-tensors.")
    zero_arr = zero.astype(np.uint8)
  return IntRecord(codes=codes, scale=np.asarray(sc), zero=zero_arr, g_idx=g_idx, bits=bits, group_size=group_size)


def awq_encode(r: IntRecord) -> dict[str, np.ndarray]:
  if r.bits != 4:
    raise ValueError(f"AWQ GEMM stores 4-bit weights only, got {r.bits}-bit; export as 'gptq' or 'compressed-tensors'.")
  if r.g_idx is not None:
    raise ValueError("AWQ has no act-order (g_idx); export act-order checkpoints as 'gptq' or 'compressed-tensors'.")
  n = r.shape[1]
  if n % 8:
    raise ValueError(f"AWQ GEMM needs out_features % 8 == 0, got {n}; export as 'compressed-tensors'.")
  perm = (np.arange(n).reshape(-1, 8)[:, AWQ_ORDER]).reshape(-1)
  return {"qweight": pack_int32(r.codes[:, perm], 4, 1), "qzeros": pack_int32(r.zero_or_mid()[:, perm], 4, 1),
          "scales": r.scale}


def awq_decode(tensors: dict, k: int, n: int, group_size: int, where: str) -> IntRecord:
  if n % 8:
    raise ValueError(f"{where}: AWQ GEMM needs out_features % 8 == 0, got {n}.")
  ng = 1 if group_size == -1 else -(-k // group_size)
  qw = _expect(tensors, "qweight", "int32", (k, n // 8), where)
  qz = _expect(tensors, "qzeros", "int32", (ng, n // 8), where)
  sc = _expect(tensors, "scales", _SCALE_DTYPES, (ng, n), where)
  inv = np.argsort((np.arange(n).reshape(-1, 8)[:, AWQ_ORDER]).reshape(-1))
  codes = unpack_int32(qw, 4, 1, n)[:, inv]
  zero = unpack_int32(qz, 4, 1, n)[:, inv]
  return IntRecord(codes=codes, scale=np.asarray(sc), zero=zero, g_idx=None, bits=4, group_size=group_size)


def ct_pack_encode(r: IntRecord, with_g_idx: bool) -> dict[str, np.ndarray]:
  if r.bits not in (4, 8):
    raise ValueError(f"compressed-tensors pack-quantized is read by vLLM for 4 and 8 bits only, got {r.bits}-bit; "
                     f"export as 'gptq'.")
  k, n = r.shape
  out = {"weight_packed": pack_int32(r.codes.T, r.bits, 1), "weight_shape": np.array([n, k], np.int64),
         "weight_scale": np.ascontiguousarray(r.scale.T)}
  if r.zero is not None:
    out["weight_zero_point"] = pack_int32(r.zero.T, r.bits, 0)
  if with_g_idx:
    out["weight_g_idx"] = r.groups()
  return out


def ct_pack_decode(tensors: dict, k: int, n: int, bits: int, group_size: int, sym: bool, where: str) -> IntRecord:
  if bits not in (2, 4, 8):
    raise ValueError(f"{where}: pack-quantized with {bits} bits is not supported (use 2, 4 or 8).")
  pf = 32 // bits
  ng = 1 if group_size == -1 else -(-k // group_size)
  wp = _expect(tensors, "weight_packed", "int32", (n, -(-k // pf)), where)
  if "weight_shape" in tensors:
    ws = _expect(tensors, "weight_shape", "int64|int32", (2,), where)
    if [int(v) for v in ws] != [n, k]:
      raise ValueError(f"{where}: tensor 'weight_shape' is {list(ws)}, but config.json implies [{n}, {k}].")
  sc = _expect(tensors, "weight_scale", _SCALE_DTYPES, (n, ng), where)
  zero = None
  if not sym:
    zp = _expect(tensors, "weight_zero_point", "int32", (-(-n // pf), ng), where)
    zero = np.ascontiguousarray(unpack_int32(zp, bits, 0, n).T)
  g_idx = None
  if "weight_g_idx" in tensors:
    g_idx = _expect(tensors, "weight_g_idx", "int32|int64", (k,), where).astype(np.int32)
    if g_idx.min() < 0 or g_idx.max() >= ng:
      raise ValueError(f"{where}: tensor 'weight_g_idx' has entries outside [0, {ng}); the file is corrupt.")
    if trivial_g_idx(g_idx, group_size):
      g_idx = None
  codes = np.ascontiguousarray(unpack_int32(wp, bits, 1, k).T)
  return IntRecord(codes=codes, scale=np.ascontiguousarray(np.asarray(sc).T), zero=zero, g_idx=g_idx, bits=bits,
                   group_size=group_size)
