"""Byte layouts of GPTQ / AWQ GEMM / compressed-tensors: the worked examples of shared/research/interop.md, an
independent per-element NumPy unpacker written from the format descriptions, and bit-exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from jquant.interop import codecs
from jquant.interop.records import qarray_to_record, record_to_qarray

pytestmark = pytest.mark.randomized


def _u32(x) -> int:
  return int(np.asarray(x).view(np.uint32))


# ---------- worked examples (interop.md 1.2, 1.4, 2.2, 3.3, 1.6) ----------

def test_gptq_worked_example_column_1_to_8():
  u = np.arange(1, 9, dtype=np.uint8)[:, None]            # k = 0..7 of one output column
  w = codecs.pack_int32(u, 4, axis=0)
  assert w.shape == (1, 1) and _u32(w[0, 0]) == 0x87654321 and int(w[0, 0]) == -2023406815


def test_gptq_sym_zeros_v1_and_v2():
  r = codecs.IntRecord(codes=np.zeros((32, 8), np.uint8), scale=np.ones((1, 8), np.float16), zero=None, g_idx=None,
                       bits=4, group_size=-1)
  assert int(codecs.gptq_encode(r, v2=False)["qzeros"][0, 0]) == 2004318071        # 0x77777777
  assert int(codecs.gptq_encode(r, v2=True)["qzeros"][0, 0]) == -2004318072        # 0x88888888
  r8 = codecs.IntRecord(codes=np.zeros((32, 4), np.uint8), scale=np.ones((1, 4), np.float16), zero=None, g_idx=None,
                        bits=8, group_size=-1)
  assert _u32(codecs.gptq_encode(r8, v2=False)["qzeros"][0, 0]) == 0x7F7F7F7F


def test_awq_worked_example_row_1_to_8():
  r = codecs.IntRecord(codes=np.arange(1, 9, dtype=np.uint8)[None, :].repeat(2, 0), scale=np.ones((1, 8), np.float16),
                       zero=None, g_idx=None, bits=4, group_size=-1)
  assert _u32(codecs.awq_encode(r)["qweight"][0, 0]) == 0x86427531


def test_ct_worked_examples_signed_rows():
  signed = np.array([[1, 2, 3, 4, 5, 6, 7, 0], [-1, -2, -3, -4, -5, -6, -7, -8]])
  w = codecs.pack_int32((signed + 8).astype(np.uint8), 4, axis=1)
  assert _u32(w[0, 0]) == 0x8FEDCBA9 and _u32(w[1, 0]) == 0x01234567
  # little-endian bytes: byte j holds element 2j low, 2j+1 high
  assert list(w[0].tobytes()) == [0xA9, 0xCB, 0xED, 0x8F]


def test_act_order_example_g_idx():
  perm, g = np.array([2, 0, 3, 1]), 2                     # columns quantized in this order, groups of 2
  g_idx = (np.argsort(perm) // g).astype(np.int32)        # position of k in perm // G
  assert g_idx.tolist() == [0, 1, 0, 1]
  r = codecs.IntRecord(codes=np.array([[1], [2], [3], [4]], np.uint8), scale=np.array([[1.0], [10.0]], np.float16),
                       zero=np.array([[0], [0]], np.uint8), g_idx=g_idx, bits=4, group_size=g)
  t = codecs.gptq_encode(r, v2=True)
  back = codecs.gptq_decode(t, 4, 1, 4, 2, sym=False, v2=True, where="t")
  np.testing.assert_array_equal(back.dequantize()[:, 0], [1.0, 20.0, 3.0, 40.0])


# ---------- an independent reference unpacker (per element, from the format text) ----------

def _nibble(word: int, j: int, bits: int) -> int:
  return (int(word) & 0xFFFFFFFF) >> (bits * j) & ((1 << bits) - 1)


def ref_gptq_dequant(t: dict, k: int, n: int, bits: int, v2: bool) -> np.ndarray:
  """vLLM gptq_gemm semantics: per-field zero (+1 for v1), scales[g_idx[k]] * (code - zero)."""
  pf = 32 // bits
  w = np.zeros((k, n), np.float32)
  for kk in range(k):
    g = int(t["g_idx"][kk])
    for nn in range(n):
      code = _nibble(t["qweight"][kk // pf, nn], kk % pf, bits)
      z = _nibble(t["qzeros"][g, nn // pf], nn % pf, bits) + (0 if v2 else 1)
      w[kk, nn] = np.float32(t["scales"][g, nn]) * (code - z)
  return w


def ref_awq_dequant(t: dict, k: int, n: int, g: int) -> np.ndarray:
  """AutoAWQ dequantize_gemm: column 8c+e sits in nibble slot [0,4,1,5,2,6,3,7][e] of word c."""
  rev = [0, 4, 1, 5, 2, 6, 3, 7]
  w = np.zeros((k, n), np.float32)
  for kk in range(k):
    for nn in range(n):
      code = _nibble(t["qweight"][kk, nn // 8], rev[nn % 8], 4)
      z = _nibble(t["qzeros"][kk // g, nn // 8], rev[nn % 8], 4)
      w[kk, nn] = np.float32(t["scales"][kk // g, nn]) * (code - z)
  return w


def ref_ct_dequant(t: dict, k: int, n: int, bits: int, g: int) -> np.ndarray:
  """compressed-tensors: signed = stored - 2^(b-1); torch (N, K) weight = (q - zp) * scale; returns W.T."""
  pf, off = 32 // bits, 2 ** (bits - 1)
  gi = t.get("weight_g_idx")
  wt = np.zeros((n, k), np.float32)
  for nn in range(n):
    for kk in range(k):
      grp = int(gi[kk]) if gi is not None else (kk // g if g > 0 else 0)
      q = _nibble(t["weight_packed"][nn, kk // pf], kk % pf, bits) - off
      zp = (_nibble(t["weight_zero_point"][nn // pf, grp], nn % pf, bits) - off) if "weight_zero_point" in t else 0
      wt[nn, kk] = np.float32(t["weight_scale"][nn, grp]) * (q - zp)
  return wt.T


def _record(rng, k, n, bits, g, sym, act) -> codecs.IntRecord:
  ng = 1 if g == -1 else k // g
  g_idx = (np.argsort(rng.permutation(k)) // (k if g == -1 else g)).astype(np.int32) if act else None
  return codecs.IntRecord(codes=rng.integers(0, 2 ** bits, (k, n)).astype(np.uint8),
                          scale=(rng.random((ng, n)) + 0.1).astype(np.float16),
                          zero=None if sym else rng.integers(0, 2 ** bits, (ng, n)).astype(np.uint8),
                          g_idx=g_idx, bits=bits, group_size=g)


@pytest.mark.parametrize("bits,g,sym,act", [(4, 16, True, False), (4, 16, False, True), (8, -1, True, False),
                                            (8, 16, False, False), (2, 32, False, True), (4, -1, False, False)])
def test_gptq_encode_matches_reference_and_round_trips(rng, bits, g, sym, act):
  k, n = 64, 48
  r = _record(rng, k, n, bits, g, sym, act)
  v2 = not sym
  t = codecs.gptq_encode(r, v2=v2)
  np.testing.assert_array_equal(ref_gptq_dequant(t, k, n, bits, v2), r.dequantize())
  back = codecs.gptq_decode(t, k, n, bits, g, sym, v2, "t")
  np.testing.assert_array_equal(back.codes, r.codes)
  np.testing.assert_array_equal(back.scale, r.scale)
  assert (back.zero is None) == sym and (sym or np.array_equal(back.zero, r.zero))
  assert (back.g_idx is None) == (not act) and (not act or np.array_equal(back.g_idx, r.g_idx))


def test_gptq_v1_refuses_asymmetric_zero_0_and_reads_mislabelled_v2(rng):
  r = _record(rng, 32, 16, 4, 16, False, False)
  r.zero[0, 0] = 0
  with pytest.raises(ValueError, match="gptq_v2"):
    codecs.gptq_encode(r, v2=False)
  s = _record(rng, 32, 16, 4, 16, True, False)
  t = codecs.gptq_encode(s, v2=True)                     # 0x88888888 zeros in a file labelled v1
  np.testing.assert_array_equal(codecs.gptq_decode(t, 32, 16, 4, 16, True, False, "t").codes, s.codes)


@pytest.mark.parametrize("g,sym", [(16, False), (32, True), (-1, False)])
def test_awq_encode_matches_reference_and_round_trips(rng, g, sym):
  k, n = 64, 40
  r = _record(rng, k, n, 4, g, sym, False)
  t = codecs.awq_encode(r)
  assert t["qweight"].shape == (k, n // 8)
  np.testing.assert_array_equal(ref_awq_dequant(t, k, n, k if g == -1 else g), r.dequantize())
  back = codecs.awq_decode(t, k, n, g, "t")
  np.testing.assert_array_equal(back.codes, r.codes)
  np.testing.assert_array_equal(back.zero, r.zero_or_mid())


@pytest.mark.parametrize("bits,g,sym,act", [(4, 16, True, False), (4, 16, False, True), (8, -1, False, False),
                                            (8, 32, True, True), (4, -1, True, False)])
def test_ct_encode_matches_reference_and_round_trips(rng, bits, g, sym, act):
  k, n = 64, 24
  r = _record(rng, k, n, bits, g, sym, act)
  t = codecs.ct_pack_encode(r, with_g_idx=act)
  assert t["weight_packed"].shape == (n, k * bits // 32) and t["weight_shape"].tolist() == [n, k]
  np.testing.assert_array_equal(ref_ct_dequant(t, k, n, bits, g), r.dequantize())
  back = codecs.ct_pack_decode(t, k, n, bits, g, sym, "t")
  np.testing.assert_array_equal(back.codes, r.codes)
  np.testing.assert_array_equal(back.scale, r.scale)
  assert sym == (back.zero is None) and (sym or np.array_equal(back.zero, r.zero))


def test_cross_format_identities(rng):
  """GPTQ v2 qweight == CT weight_packed.T and qzeros == weight_zero_point.T (interop.md 3.4)."""
  r = _record(rng, 64, 32, 4, 16, False, False)
  gp, ct = codecs.gptq_encode(r, v2=True), codecs.ct_pack_encode(r, with_g_idx=False)
  np.testing.assert_array_equal(gp["qweight"], ct["weight_packed"].T)
  np.testing.assert_array_equal(gp["qzeros"], ct["weight_zero_point"].T)


def test_refusals_name_a_format_that_can(rng):
  with pytest.raises(ValueError, match="gptq"):
    codecs.awq_encode(_record(rng, 32, 16, 8, 16, True, False))           # 8-bit AWQ
  with pytest.raises(ValueError, match="'gptq' or 'compressed-tensors'"):
    codecs.awq_encode(_record(rng, 32, 16, 4, 16, True, True))            # act-order AWQ
  with pytest.raises(ValueError, match="'gptq'"):
    codecs.ct_pack_encode(_record(rng, 32, 16, 2, 16, True, False), False)


def test_decode_rejects_shape_and_dtype_mismatch(rng):
  r = _record(rng, 64, 16, 4, 16, True, False)
  t = codecs.gptq_encode(r, v2=False)
  with pytest.raises(ValueError, match=r"'qweight'.*\(8, 16\).*config.json"):
    codecs.gptq_decode({**t, "qweight": t["qweight"][:, :15]}, 64, 16, 4, 16, True, False, "model.safetensors: x")
  with pytest.raises(ValueError, match=r"'scales' is int32"):
    codecs.gptq_decode({**t, "scales": t["scales"].astype(np.int32)}, 64, 16, 4, 16, True, False, "f")


# ---------- QArray <-> record ----------

def _qa(rng, qtype_name, g, act):
  import dataclasses
  import jax.numpy as jnp
  import jquant as jq
  qt = {"int4": jq.INT4, "uint4": jq.UINT4, "int8": jq.INT8, "uint8": jq.UINT8, "uint2": jq.UINT2}[qtype_name]
  gran = jq.PerChannel(axis=-1) if g == -1 else jq.PerGroup(axis=0, size=g)
  spec = jq.QuantSpec(qtype=qt, granularity=gran, symmetric=qt.signed)
  x = jnp.asarray(rng.standard_normal((64, 24)), jnp.float32)
  qa = jq.quantize(x, spec)
  if act:
    qa = dataclasses.replace(qa, g_idx=jnp.asarray((np.argsort(rng.permutation(64)) // g).astype(np.int32)))
  return qa


@pytest.mark.parametrize("qt,g,act", [("int4", 16, False), ("uint4", 16, True), ("int8", -1, False),
                                      ("uint8", 32, False), ("uint2", 16, True)])
def test_qarray_record_round_trip_bit_exact(rng, qt, g, act):
  qa = _qa(rng, qt, g, act)
  back = record_to_qarray(qarray_to_record(qa, "k"))
  assert back.qtype == qa.qtype and back.spec.granularity == qa.spec.granularity
  assert back.qvalue.dtype == qa.qvalue.dtype
  np.testing.assert_array_equal(np.asarray(back.qvalue).astype(np.int32), np.asarray(qa.qvalue).astype(np.int32))
  np.testing.assert_array_equal(np.asarray(back.scale), np.asarray(qa.scale))
  if qa.zero_point is None:
    assert back.zero_point is None
  else:
    np.testing.assert_array_equal(np.asarray(back.zero_point).astype(np.int32),
                                  np.asarray(qa.zero_point).astype(np.int32))
  assert (back.g_idx is None) == (qa.g_idx is None)
  if act:
    np.testing.assert_array_equal(np.asarray(back.g_idx), np.asarray(qa.g_idx))


def test_qarray_refusals(rng):
  import jax.numpy as jnp
  import jquant as jq
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  with pytest.raises(ValueError, match="bitsandbytes"):
    qarray_to_record(jq.quantize(x, jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=64))), "k")
  with pytest.raises(ValueError, match="GPTQ's format can hold 3-bit"):
    qarray_to_record(jq.quantize(x, jq.QuantSpec(qtype=jq.UINT3, granularity=jq.PerGroup(axis=0, size=16),
                                                 symmetric=False)), "k")
  with pytest.raises(ValueError, match="PerGroup"):
    qarray_to_record(jq.quantize(x, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())), "k")
