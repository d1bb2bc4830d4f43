"""qdot / qeinsum / prepare: XLA and Pallas (interpret) paths vs a NumPy float64 reference, lowering, dispatch."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

import jquant as jq
from jquant.ops import PreparedWeight, layout_reasons, pallas_reasons, prepare, qdot, qeinsum

K, N = 256, 96
G64 = jq.PerGroup(axis=0, size=64)
G32 = jq.PerGroup(axis=0, size=32)
PC = jq.PerChannel(axis=-1)
SPECS = {
    "int8_pc": jq.QuantSpec(qtype=jq.INT8, granularity=PC),
    "int8_g64": jq.QuantSpec(qtype=jq.INT8, granularity=G64),
    "int4_pc": jq.QuantSpec(qtype=jq.INT4, granularity=PC),
    "int4_g64": jq.QuantSpec(qtype=jq.INT4, granularity=G64),
    "int4_asym_g32": jq.QuantSpec(qtype=jq.INT4, granularity=G32, symmetric=False),
    "uint4_asym_g64": jq.QuantSpec(qtype=jq.UINT4, granularity=G64, symmetric=False),
    "uint4_asym_pc": jq.QuantSpec(qtype=jq.UINT4, granularity=PC, symmetric=False),
    "int4_g32_bf16scale": jq.QuantSpec(qtype=jq.INT4, granularity=G32, scale_dtype="bfloat16"),
    "fp8_e4m3_pc": jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=PC),
    "fp8_e5m2_g64": jq.QuantSpec(qtype=jq.FP8_E5M2, granularity=G64),
    "nf4_g64": jq.QuantSpec(qtype=jq.NF4, granularity=G64),
}
KERNEL_SPECS = ("int4_pc", "int4_g64", "int4_asym_g32", "uint4_asym_g64", "uint4_asym_pc", "int4_g32_bf16scale")


def numpy_dequant(qa) -> np.ndarray:
  """float64 (K, N) from the QArray's fields, independent of jquant's dequantize."""
  q = np.asarray(qa.qvalue.astype(jnp.float32), np.float64)
  if qa.qtype.is_lut:
    q = np.asarray(qa.qtype.levels, np.float64)[q.astype(np.int64)]
  s = np.asarray(qa.scale.astype(jnp.float32), np.float64)
  z = None if qa.zero_point is None else np.asarray(qa.zero_point.astype(jnp.float32), np.float64)
  k = q.shape[0]
  rows = (np.arange(k) // (k // s.shape[0])) if qa.g_idx is None else np.asarray(qa.g_idx)
  s = s[rows]
  if z is not None:
    q = q - z[rows]
  return q * s


def tol(dtype):
  return {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1.6e-2, jnp.dtype(jnp.float16): 2e-3}[jnp.dtype(dtype)]


def check(got, x, w_deq64, dtype):
  want = np.asarray(jnp.asarray(x, jnp.float32), np.float64).reshape(-1, K) @ w_deq64
  got = np.asarray(got.astype(jnp.float32), np.float64).reshape(-1, N)
  ref = np.abs(want).max()
  assert np.abs(got - want).max() <= tol(dtype) * ref, (np.abs(got - want).max(), ref)


def with_g_idx(qa, rng):
  g = qa.spec.granularity.size
  return dataclasses.replace(qa, g_idx=jnp.asarray(rng.permutation(np.arange(K) // g), jnp.int32))


@pytest.fixture
def weight(rng):
  return jnp.asarray(rng.standard_normal((K, N)), jnp.float32)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_matches_numpy(rng, weight, name, dtype):
  qa = jq.quantize(weight, SPECS[name])
  x = jnp.asarray(rng.standard_normal((2, 3, K)), dtype)
  got = qdot(x, qa, implementation="xla")
  assert got.shape == (2, 3, N) and got.dtype == dtype
  check(got, x, numpy_dequant(qa), dtype)


def test_xla_act_order_g_idx(rng, weight):
  qa = with_g_idx(jq.quantize(weight, SPECS["uint4_asym_g64"]), rng)
  x = jnp.asarray(rng.standard_normal((3, K)), jnp.float32)
  check(qdot(x, qa, implementation="xla"), x, numpy_dequant(qa), jnp.float32)
  check(qdot(x, prepare(qa), implementation="xla"), x, numpy_dequant(qa), jnp.float32)


@pytest.mark.parametrize("name", KERNEL_SPECS)
def test_forced_pallas_interpret_matches_numpy(rng, weight, name):
  qa = jq.quantize(weight, SPECS[name])
  x = jnp.asarray(rng.standard_normal((5, K)), jnp.bfloat16)
  got = qdot(x, qa, implementation="pallas", interpret=True)
  check(got, x, numpy_dequant(qa), jnp.bfloat16)
  if name in ("uint4_asym_g64", "int4_g32_bf16scale"):  # enough to pin is enough to pin prepared == per-call conversion (interpret is slow)
    prepared = qdot(x, prepare(qa), implementation="pallas", interpret=True)
    np.testing.assert_array_equal(np.asarray(prepared, np.float32), np.asarray(got, np.float32))


def test_forced_pallas_act_order_float16(rng, weight):
  qa = with_g_idx(jq.quantize(weight, SPECS["int4_asym_g32"]), rng)
  x = jnp.asarray(rng.standard_normal((1, K)), jnp.float16)
  check(qdot(x, qa, implementation="pallas", interpret=True), x, numpy_dequant(qa), jnp.float16)


@pytest.mark.parametrize("qtype,x_gran", [(jq.INT8, jq.PerToken()), (jq.INT8, jq.PerTensor()),
                                          (jq.FP8_E4M3, jq.PerToken()), (jq.FP8_E5M2, jq.PerTensor())],
                         ids=["int8-token", "int8-tensor", "e4m3-token", "e5m2-tensor"])
def test_quantized_activations_xla_and_pallas(rng, weight, qtype, x_gran):
  qa = jq.quantize(weight, jq.QuantSpec(qtype=qtype, granularity=PC))
  x = jnp.asarray(rng.standard_normal((2, 3, K)), jnp.float32)
  xq = jq.quantize(x, jq.QuantSpec(qtype=qtype, granularity=x_gran))
  x_deq = np.asarray(jq.dequantize(xq, jnp.float32), np.float64)
  for impl, kw in (("xla", {}), ("pallas", dict(interpret=True))):
    got = qdot(xq, qa, implementation=impl, **kw)
    assert got.shape == (2, 3, N) and got.dtype == jnp.float32
    check(got, x_deq, numpy_dequant(qa), jnp.float32)


def test_auto_on_cpu_uses_xla_and_reports_why(rng, weight):
  qa = jq.quantize(weight, SPECS["int4_g64"])
  x = jnp.asarray(rng.standard_normal((4, K)), jnp.bfloat16)
  if jax.default_backend() != "gpu":
    assert any("not a GPU" in r for r in pallas_reasons(x, qa))
    np.testing.assert_array_equal(np.asarray(qdot(x, qa), np.float32),
                                  np.asarray(qdot(x, qa, implementation="xla"), np.float32))
  assert pallas_reasons(x, qa, require_gpu=False) == ()


@pytest.mark.parametrize("case,needle", [
    ("nf4", "no Pallas kernel for nf4"),
    ("int8_float_x", "needs quantized activations"),
    ("int4_f32_x", "bfloat16 or float16"),
    ("int8_group", "per-channel or per-tensor"),
    ("int8_asym", "asymmetric int8"),
    ("perblock", "no kernel layout"),
])
def test_fallback_reasons(rng, weight, case, needle):
  x = jnp.asarray(rng.standard_normal((2, K)), jnp.float32 if case == "int4_f32_x" else jnp.bfloat16)
  spec = {"nf4": SPECS["nf4_g64"], "int8_float_x": SPECS["int8_pc"], "int4_f32_x": SPECS["int4_g64"],
          "int8_group": SPECS["int8_g64"],
          "int8_asym": jq.QuantSpec(qtype=jq.INT8, granularity=PC, symmetric=False),
          "perblock": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerBlock((64, 32)))}[case]
  qa = jq.quantize(weight, spec)
  reasons = pallas_reasons(x, qa, require_gpu=False)
  assert any(needle in r for r in reasons), reasons
  with pytest.raises(NotImplementedError, match=needle):
    qdot(x, qa, implementation="pallas", interpret=True)
  check(qdot(x, qa), x, numpy_dequant_generic(qa), x.dtype)


def numpy_dequant_generic(qa):
  return np.asarray(jq.dequantize(qa, jnp.float32), np.float64) if isinstance(
      qa.spec.granularity, jq.PerBlock) else numpy_dequant(qa)


def test_prepare_rejects_what_has_no_layout(weight):
  qa = jq.quantize(weight, SPECS["nf4_g64"])
  assert layout_reasons(qa)
  with pytest.raises(NotImplementedError, match="nf4"):
    prepare(qa)
  with pytest.raises(TypeError, match="QArray"):
    prepare(weight)


def test_prepared_weight_is_a_jit_friendly_pytree(rng, weight):
  pw = prepare(jq.quantize(weight, SPECS["int4_asym_g32"]))
  assert isinstance(pw, PreparedWeight) and pw.w.shape == (N, K // 2) and pw.w.dtype == jnp.uint8
  x = jnp.asarray(rng.standard_normal((2, K)), jnp.bfloat16)
  f = jax.jit(functools.partial(qdot, implementation="xla"))
  # jit fuses the dequantize into the dot, eager runs op by op: the float32 sums may round differently, which can
  # move a bfloat16 output by one ulp (2^-7 relative at most; seen in 1 of 192 elements on 1 of 20 fresh seeds)
  # (plus the float32 summation error 2^-24 * K * |x| @ |w| for outputs that cancel)
  got, want = np.asarray(f(x, pw), np.float64), np.asarray(qdot(x, pw, implementation="xla"), np.float64)
  deq = np.asarray(jq.dequantize(jq.quantize(weight, SPECS["int4_asym_g32"])), np.float64)
  absdot = np.abs(np.asarray(x, np.float64)) @ np.abs(deq)
  assert (np.abs(got - want) <= 2.0 ** -7 * np.abs(want) + 2.0 ** -24 * K * absdot).all()
  assert jax.tree.structure(jax.jit(lambda p: p)(pw)) == jax.tree.structure(pw)


def _lower_cuda(fn, *args):
  dev = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
  with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=dev)):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


@pytest.mark.parametrize("name", ["int4_g64", "uint4_asym_pc"])
def test_forced_pallas_lowers_for_cuda(weight, name):
  qa = jq.quantize(weight, SPECS[name])
  x = jax.ShapeDtypeStruct((1, K), jnp.bfloat16)
  f = functools.partial(qdot, implementation="pallas")
  assert "int4_matmul" in _lower_cuda(f, x, qa).as_text()
  assert "int4_matmul" in _lower_cuda(f, x, prepare(qa)).as_text()


@pytest.mark.parametrize("qtype,name", [(jq.INT8, "int8_matmul"), (jq.FP8_E4M3, "fp8_matmul")])
def test_forced_pallas_w8a8_lowers_for_cuda(rng, weight, qtype, name):
  qa = prepare(jq.quantize(weight, jq.QuantSpec(qtype=qtype, granularity=PC)))
  xq = jq.quantize(jnp.asarray(rng.standard_normal((16, K)), jnp.float32),
                   jq.QuantSpec(qtype=qtype, granularity=jq.PerToken()))
  assert name in _lower_cuda(functools.partial(qdot, implementation="pallas"), xq, qa).as_text()


def test_qeinsum_simple_and_general(rng, weight):
  qa = jq.quantize(weight, SPECS["int4_g64"])
  x = jnp.asarray(rng.standard_normal((2, 3, K)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(qeinsum("btk,kn->btn", x, qa)), np.asarray(qdot(x, qa)))
  np.testing.assert_array_equal(np.asarray(qeinsum("...k,kn->...n", x, qa)), np.asarray(qdot(x, qa)))
  got = qeinsum("btk,kn->nbt", x, qa)
  want = np.einsum("btk,kn->nbt", np.asarray(x, np.float64), numpy_dequant(qa))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  with pytest.raises(NotImplementedError, match="not a contraction"):
    qeinsum("btk,kn->nbt", x, qa, implementation="pallas")
  with pytest.raises(ValueError, match="subscripts"):
    qeinsum("btk,kn", x, qa)


def test_bad_inputs_raise(rng, weight):
  qa = jq.quantize(weight, SPECS["int4_g64"])
  x = jnp.asarray(rng.standard_normal((2, K)), jnp.bfloat16)
  with pytest.raises(ValueError, match="implementation"):
    qdot(x, qa, implementation="triton")
  with pytest.raises(TypeError, match="QArray"):
    qdot(x, weight)
  with pytest.raises(ValueError, match="K=256"):
    qdot(x[:, :128], qa)
  with pytest.raises(TypeError, match="float"):
    qdot(x.astype(jnp.int32), qa)
  with pytest.raises(ValueError, match="symmetric int8 or fp8"):
    qdot(jq.quantize(x.astype(jnp.float32), jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerToken(),
                                                         symmetric=False)), qa)
  w3 = jq.quantize(jnp.asarray(rng.standard_normal((2, K, N)), jnp.float32), SPECS["int8_pc"])
  with pytest.raises(ValueError, match="qeinsum"):
    qdot(x, w3)


def test_qdot_default_dispatch_under_jit(rng, weight):
  qa = jq.quantize(weight, SPECS["uint4_asym_g64"])
  x = jnp.asarray(rng.standard_normal((3, K)), jnp.bfloat16)
  check(jax.jit(qdot)(x, qa), x, numpy_dequant(qa), jnp.bfloat16)
  check(jax.jit(qdot)(x, prepare(qa)), x, numpy_dequant(qa), jnp.bfloat16)


def test_double_quantized_scales(rng, weight):
  qa = jq.quantize(weight, jq.QuantSpec(qtype=jq.INT4, granularity=G32, double_quant=True, double_quant_block=64))
  x = jnp.asarray(rng.standard_normal((2, K)), jnp.bfloat16)
  deq = np.asarray(jq.dequantize(qa, jnp.float32), np.float64)
  check(qdot(x, qa, implementation="xla"), x, deq, jnp.bfloat16)
  check(qdot(x, qa, implementation="pallas", interpret=True), x, deq, jnp.bfloat16)


def test_empty_batch(weight):
  qa = jq.quantize(weight, SPECS["int4_g64"])
  x = jnp.zeros((0, 3, K), jnp.bfloat16)
  for impl, kw in (("xla", {}), ("pallas", dict(interpret=True))):
    assert qdot(x, qa, implementation=impl, **kw).shape == (0, 3, N)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["int4_g64", "uint4_asym_pc"])
def test_auto_dispatch_on_gpu_runs_the_pallas_kernel_and_matches_numpy(rng, weight, name):
  """On a GPU, ``implementation=None`` picks the Pallas kernel (its custom call is in the compiled program, the
  XLA path's is not) and the result matches the NumPy float64 reference (bf16 activations)."""
  assert jax.default_backend() == "gpu"
  qa = jq.quantize(weight, SPECS[name])
  x = jnp.asarray(rng.standard_normal((8, K)), jnp.bfloat16)
  assert pallas_reasons(x, qa) == ()
  assert "int4_matmul" in jax.jit(qdot).lower(x, qa).as_text()
  assert "int4_matmul" not in jax.jit(functools.partial(qdot, implementation="xla")).lower(x, qa).as_text()
  check(qdot(x, qa), x, numpy_dequant(qa), jnp.bfloat16)
  check(jax.jit(qdot)(x, prepare(qa)), x, numpy_dequant(qa), jnp.bfloat16)


@pytest.mark.gpu
def test_auto_dispatch_on_gpu_runs_the_int8_kernel_for_w8a8(rng, weight):
  qa = prepare(jq.quantize(weight, jq.QuantSpec(qtype=jq.INT8, granularity=PC)))
  xq = jq.quantize(jnp.asarray(rng.standard_normal((16, K)), jnp.float32),
                   jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()))
  assert "int8_matmul" in jax.jit(qdot).lower(xq, qa).as_text()
  x_deq = np.asarray(jq.dequantize(xq), np.float64)
  check(qdot(xq, qa), x_deq, numpy_dequant(jq.quantize(weight, jq.QuantSpec(qtype=jq.INT8, granularity=PC))),
        jnp.float32)
