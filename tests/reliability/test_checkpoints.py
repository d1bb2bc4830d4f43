"""Issue 11, item 6: loaders validate every QArray against its metadata and refuse relabelled, inconsistent or
malformed files with an error naming the file and the leaf; writes are atomic with consistent file modes."""

import copy
import json
import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import jquant as jq
from jquant import solvers
from jquant.io import from_storage, to_storage

pytestmark = pytest.mark.randomized

ROUND_TRIP_SPECS = [
    jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)),
    jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerTensor(), symmetric=False),
    jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=8)),
    jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False),
    jq.QuantSpec(qtype=jq.INT3, granularity=jq.PerChannel(axis=-1)),
    jq.QuantSpec(qtype=jq.UINT3, granularity=jq.PerGroup(axis=0, size=8), symmetric=False),
    jq.QuantSpec(qtype=jq.INT2, granularity=jq.PerBlock((8, 4))),
    jq.QuantSpec(qtype=jq.UINT2, granularity=jq.PerChannel(axis=-1), symmetric=False),
    jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=jq.PerChannel(axis=-1), scale_dtype="bfloat16"),
    jq.QuantSpec(qtype=jq.FP8_E5M2, granularity=jq.PerTensor(), scale_dtype="float16"),
    jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=8), double_quant=True, double_quant_block=4),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=lambda s: f"{s.qtype.name}-{type(s.granularity).__name__}")
def test_valid_files_still_load_bit_exact(rng, tmp_path, spec):
  w = jnp.asarray(rng.normal(size=(32, 12)).astype(np.float32))
  tree = {"layer": {"kernel": jq.quantize(w, spec), "bias": w[0]}}
  jq.io.save_safetensors(tmp_path / "p.safetensors", tree)
  back = jq.io.load_safetensors(tmp_path / "p.safetensors")
  np.testing.assert_array_equal(np.asarray(jq.dequantize(back["layer"]["kernel"])),
                                np.asarray(jq.dequantize(tree["layer"]["kernel"])))


def _gptq_act_order(rng):
  w = rng.normal(size=(32, 8)).astype(np.float32)
  x = rng.normal(size=(128, 32)).astype(np.float32)
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
  return solvers.gptq(jnp.asarray(w), jnp.asarray(x.T @ x), spec, act_order=True)[0]


def _stored(rng, spec=None):
  if spec is None:
    qa = _gptq_act_order(rng)
  else:
    qa = jq.quantize(jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32)), spec)
  return to_storage({"blk": {"kernel": qa}})


def _with(meta_fn=None, tensor_fn=None, spec=None):
  def make(rng):
    t, m = _stored(rng, spec)
    t, m = {k: np.array(v) for k, v in t.items()}, copy.deepcopy(m)
    if meta_fn:
      meta_fn(m["leaves"]["blk/kernel"] if "leaves" in m else m, m)
    if tensor_fn:
      tensor_fn(t)
    return t, m
  return make


def _set(d, key, value):
  d[key] = value


INT8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
UINT8 = jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerChannel(axis=-1), symmetric=False)

CORRUPT = {
    "relabel-int8-as-int4": (_with(lambda e, m: _set(e["spec"], "qtype", "int4"), spec=INT8),
                             r"leaf 'blk/kernel': qvalue is stored as int8 but the spec's qtype int4"),
    "relabel-uint8-as-uint3": (_with(lambda e, m: _set(e["spec"], "qtype", "uint3"), spec=UINT8),
                               r"leaf 'blk/kernel': .*outside uint3's range \[0, 7\]"),
    "relabel-int8-as-int3": (_with(lambda e, m: _set(e["spec"], "qtype", "int3"), spec=INT8),
                             r"codes span .*outside int3's range \[-4, 3\]"),
    "relabel-sym-as-asym": (_with(lambda e, m: _set(e["spec"], "symmetric", False) or
                                  _set(e["spec"]["calibration"], "type", "MinMax"), spec=INT8),
                            r"symmetric=False spec but the zero point is missing"),
    "relabel-granularity": (_with(lambda e, m: _set(e["spec"], "granularity",
                                                    {"type": "PerTensor", "batch_axes": []}), spec=INT8),
                            r"scale has shape \(1, 8\), expected \(1, 1\)"),
    "scale-dtype-relabel": (_with(lambda e, m: _set(e["spec"], "scale_dtype", "float16"), spec=INT8),
                            r"scale is stored as float32 but the spec says scale_dtype='float16'"),
    "zero-scale": (_with(tensor_fn=lambda t: t["blk/kernel.scale"].__setitem__((0, 2), 0.0), spec=INT8),
                   r"1 scales are not finite and positive \(e.g. 0.0\)"),
    "negative-scale": (_with(tensor_fn=lambda t: t["blk/kernel.scale"].__setitem__((0, 1), -1.0), spec=INT8),
                       r"not finite and positive \(e.g. -1.0\)"),
    "nan-scale": (_with(tensor_fn=lambda t: t["blk/kernel.scale"].__setitem__((0, 1), np.nan), spec=INT8),
                  r"not finite and positive \(e.g. nan\)"),
    "scale-shape": (_with(lambda e, m: _set(e["scale"], "shape", [1, 4]),
                          lambda t: t.__setitem__("blk/kernel.scale", t["blk/kernel.scale"][:, :4].copy()),
                          spec=INT8), r"scale has shape \(1, 4\), expected \(1, 8\)"),
    "buffer-vs-meta-shape": (_with(lambda e, m: _set(e["qvalue"], "shape", [16, 8]), spec=INT8),
                             r"tensor 'blk/kernel.qvalue': stored int8\(32, 8\) but the metadata says int8\(16, 8\)"),
    "g_idx-out-of-range": (_with(tensor_fn=lambda t: t["blk/kernel.g_idx"].__setitem__(0, 9)),
                           r"g_idx int32\(32,\) must be int32 of shape \(32,\) with values in \[0, 4\)"),
    "g_idx-wrong-length": (_with(lambda e, m: _set(e["g_idx"], "shape", [16]),
                                 lambda t: t.__setitem__("blk/kernel.g_idx", t["blk/kernel.g_idx"][:16].copy())),
                           r"g_idx int32\(16,\) must be int32 of shape \(32,\)"),
    "packed-bits": (_with(lambda e, m: _set(e["qvalue"], "packed_bits", 2)),
                    r"packed_bits=2 does not match dtype 'uint4'"),
    "packed-buffer-truncated": (_with(tensor_fn=lambda t: t.__setitem__("blk/kernel.qvalue",
                                                                         t["blk/kernel.qvalue"][:, :2].copy())),
                                r"packed buffer uint8\(32, 2\) does not hold uint4\(32, 8\)"),
    "zero-point-range": (_with(lambda e, m: _set(e["spec"], "qtype", "uint3"),
                               lambda t: None, spec=jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerTensor(),
                                                                 symmetric=False)),
                         r"outside uint3's range"),
    "missing-tensor": (_with(tensor_fn=lambda t: t.pop("blk/kernel.scale"), spec=INT8),
                       r"tensor 'blk/kernel.scale' is listed in the metadata but missing"),
    "extra-tensor": (_with(tensor_fn=lambda t: t.__setitem__("evil", np.zeros(3, np.float32)), spec=INT8),
                     r"1 tensors are not described by the metadata \(e.g. 'evil'\)"),
    "dtype-not-float": (_with(lambda e, m: _set(e, "dtype", "int32"), spec=INT8),
                        r"dtype 'int32' is not a floating dtype name"),
    "unknown-qtype": (_with(lambda e, m: _set(e["spec"], "qtype", "int5"), spec=INT8),
                      r"leaf 'blk/kernel': its QuantSpec metadata .* is invalid: unknown qtype name 'int5'"),
    "spec-missing-key": (_with(lambda e, m: e["spec"].pop("symmetric"), spec=INT8),
                         r"QuantSpec metadata .* is invalid: 'symmetric'"),
    "entry-missing-scale": (_with(lambda e, m: e.pop("scale"), spec=INT8),
                            r"malformed metadata for leaf 'blk/kernel' \(KeyError: 'scale'\)"),
    "shape-not-list": (_with(lambda e, m: _set(e["qvalue"], "shape", "32x8"), spec=INT8),
                       r"metadata shape '32x8' is not a list of non-negative ints"),
    "bad-kind": (_with(lambda e, m: _set(e, "kind", "pickle"), spec=INT8), r"has no kind 'array', 'qarray'"),
    "leaves-missing": (_with(lambda e, m: m.pop("leaves"), spec=INT8), r"malformed metadata: 'leaves' is NoneType"),
    "format-wrong": (_with(lambda e, m: _set(m, "format", "other/1"), spec=INT8), r"not a jquant checkpoint"),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_inconsistent_file_is_refused_naming_file_and_leaf(rng, tmp_path, name):
  make, msg = CORRUPT[name]
  tensors, meta = make(rng)
  path = tmp_path / "bad.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
            metadata={"jquant": json.dumps(meta)})
  with pytest.raises(ValueError, match=msg) as info:
    jq.io.load_safetensors(path)
  assert str(path) in str(info.value)


@pytest.mark.parametrize("header,msg", [("{not json", r"invalid jquant metadata JSON"),
                                        ("[1, 2]", r"metadata is a list, not a JSON object")])
def test_malformed_metadata_names_the_file(tmp_path, header, msg):
  path = tmp_path / "m.safetensors"
  save_file({"a": np.zeros(2, np.float32)}, str(path), metadata={"jquant": header})
  with pytest.raises(ValueError, match=msg) as info:
    jq.io.load_safetensors(path)
  assert str(path) in str(info.value)


def test_truncated_file_is_a_value_error_naming_it(rng, tmp_path):
  path = tmp_path / "t.safetensors"
  jq.io.save_safetensors(path, {"k": jq.quantize(jnp.asarray(rng.normal(size=(64, 64)).astype(np.float32)), INT8)})
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"cannot be read as safetensors.*truncated or damaged") as info:
    jq.io.load_safetensors(path)
  assert str(path) in str(info.value)


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_file(rng, tmp_path, monkeypatch):
  path = tmp_path / "p.safetensors"
  jq.io.save_safetensors(path, {"a": jnp.ones(3)})
  before = path.read_bytes()
  import safetensors.numpy as stn

  def boom(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")
  monkeypatch.setattr(stn, "save_file", boom)
  with pytest.raises(OSError, match="disk full"):
    jq.io.save_safetensors(path, {"a": jnp.zeros(3)})
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["p.safetensors"]


def test_written_file_mode_matches_a_plain_file(tmp_path):
  jq.io.save_safetensors(tmp_path / "p.safetensors", {"a": jnp.ones(3)})
  (tmp_path / "plain").write_text("x")
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  assert mode(tmp_path / "p.safetensors") == mode(tmp_path / "plain")


def test_atomic_directory_overwrite_leaves_no_stale_files(tmp_path):
  from jquant.io.atomic import atomic_directory
  out = tmp_path / "ckpt"
  out.mkdir()
  (out / "stale.bin").write_text("old")
  with pytest.raises(ValueError, match=r"is not empty; pass --overwrite"):
    with atomic_directory(out):
      pass
  with atomic_directory(out, overwrite=True) as d:
    (d / "new.txt").write_text("new")
  assert sorted(os.listdir(out)) == ["new.txt"]
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  with pytest.raises(RuntimeError):
    with atomic_directory(out, overwrite=True) as d:
      (d / "half.txt").write_text("x")
      raise RuntimeError("crash")
  assert sorted(os.listdir(out)) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_orbax_refuses_inconsistent_checkpoint(rng, tmp_path):
  qa = jq.quantize(jnp.asarray(rng.normal(size=(16, 8)).astype(np.float32)), INT8)
  jq.io.save_orbax(tmp_path / "o", {"k": qa})
  with pytest.raises(ValueError, match=r"already exists"):
    jq.io.save_orbax(tmp_path / "o", {"k": qa})
  t, m = to_storage({"k": qa})
  m["leaves"]["k"]["spec"]["qtype"] = "int4"
  with pytest.raises(ValueError, match=r"src.orbax: leaf 'k': qvalue is stored as int8"):
    from_storage(t, m, source="src.orbax")
