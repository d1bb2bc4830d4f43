"""jquant <-> Hugging Face folders on tiny models: float and quantized round trips (bit-exact), RoPE layout,
refusals, and bad input. The real readers (transformers, compressed-tensors) are in test_real_readers.py."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.interop import load_hf
from jquant.interop.hf_config import qk_perm
from jquant.interop.st import SafetensorsDir, write_safetensors
from jquant.models import export_pretrained, from_pretrained
from jquant.models.llama import apply_rope, rope_tables
from tests.interop.helpers import leaves_equal, quantize_kernels, tiny_bert, tiny_llama

pytestmark = pytest.mark.randomized


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "qkv_bias": True},
                                {"tie_embeddings": False, "qkv_bias": True, "o_bias": True}])
def test_float_llama_round_trip(rng, tmp_path, kw):
  m, p = tiny_llama(rng, **kw)
  export_pretrained(m, p, tmp_path, "float", bos_eos_ids=(None, None))
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["architectures"] == (["Qwen2ForCausalLM"] if kw.get("qkv_bias") and not kw.get("o_bias")
                                  else ["LlamaForCausalLM"])
  m2, p2 = from_pretrained(tmp_path)
  assert m2.config == m.config
  leaves_equal(p, p2)
  ids = jnp.asarray(rng.integers(0, 256, (2, 9)), jnp.int32)
  np.testing.assert_array_equal(np.asarray(m2.apply(p2, ids)), np.asarray(m.apply(p, ids)))
  assert m2.encode("héllo 12") == m.encode("héllo 12")


def test_float_bert_round_trip(rng, tmp_path):
  m, p = tiny_bert(rng)
  export_pretrained(m, p, tmp_path, "float")
  m2, p2 = from_pretrained(tmp_path)
  assert m2.config == m.config
  leaves_equal(p, p2)


def test_rope_permutation_matches_rotate_half(rng):
  """rotate-half RoPE on HF rows == jquant's adjacent-pair RoPE on the permuted rows (one head, D = 8)."""
  d, t = 8, 5
  x_hf = rng.standard_normal((1, t, 1, d)).astype(np.float32)
  cos, sin = rope_tables(jnp.arange(t)[None], d, 10000.0)
  c, s = np.asarray(cos)[:, :, None, :], np.asarray(sin)[:, :, None, :]
  a, b = x_hf[..., :d // 2], x_hf[..., d // 2:]
  hf = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
  p = qk_perm(1, d)
  assert p.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
  np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(x_hf[..., p]), cos, sin)), hf[..., p], atol=1e-6)


def _int4(name):
  return jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=16))


def _uint4(name):
  return jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=16), symmetric=False)


def _int8(name):
  return jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), scale_dtype="float16")


CASES = [("compressed-tensors", _uint4, True), ("compressed-tensors", _int4, False), ("compressed-tensors", _int8, False),
         ("gptq", _int4, True), ("gptq", _uint4, True), ("gptq", _int8, False), ("awq", _uint4, False),
         ("awq", _int4, False)]


@pytest.mark.parametrize("fmt,spec_of,act", CASES)
def test_quantized_round_trip_bit_exact(rng, tmp_path, fmt, spec_of, act):
  m, p = tiny_llama(rng, tie_embeddings=False, qkv_bias=True)
  qp = quantize_kernels(p, rng, spec_of, act)
  if fmt in ("gptq", "awq"):   # their scales are fp16: make the jquant scales fp16-exact so the trip is bit-exact
    qp = quantize_kernels(p, rng, lambda n: spec_of(n).replace(scale_dtype="float16"), act)
  notes = export_pretrained(m, qp, tmp_path, fmt, bos_eos_ids=(None, None))
  assert all(fmt.split("-")[0] in v for v in notes.values() if v != "float")
  qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
  assert qc["quant_method"] == fmt
  m2, p2 = from_pretrained(tmp_path)
  leaves_equal(qp, p2)
  ids = jnp.asarray(rng.integers(0, 256, (1, 7)), jnp.int32)
  np.testing.assert_array_equal(np.asarray(m2.apply(p2, ids)), np.asarray(m.apply(qp, ids)))


def test_gptq_config_and_format_choice(rng, tmp_path):
  m, p = tiny_llama(rng)
  export_pretrained(m, quantize_kernels(p, rng, lambda n: _int4(n).replace(scale_dtype="float16"), True),
                    tmp_path / "sym", "gptq", bos_eos_ids=(None, None))
  qc = json.loads((tmp_path / "sym" / "config.json").read_text())["quantization_config"]
  assert (qc["checkpoint_format"], qc["sym"], qc["desc_act"], qc["bits"], qc["group_size"]) == ("gptq", True, True, 4, 16)
  assert json.loads((tmp_path / "sym" / "quantize_config.json").read_text()) == qc
  st = SafetensorsDir(tmp_path / "sym")
  z = st.get("model.layers.0.mlp.up_proj.qzeros")
  assert np.all(z == 2004318071) and st.info("model.layers.0.mlp.up_proj.scales")[0] == "F16"
  export_pretrained(m, quantize_kernels(p, rng, _uint4), tmp_path / "asym", "gptq", bos_eos_ids=(None, None))
  qc = json.loads((tmp_path / "asym" / "config.json").read_text())["quantization_config"]
  assert (qc["checkpoint_format"], qc["sym"]) == ("gptq_v2", False)


def test_compressed_tensors_mixed_settings_and_float_layers(rng, tmp_path):
  m, p = tiny_llama(rng)
  spec_of = lambda n: None if "down_proj" in n else (_int8(n) if "self_attn" in n else _uint4(n))
  qp = quantize_kernels(p, rng, spec_of)
  export_pretrained(m, qp, tmp_path, "compressed-tensors", bos_eos_ids=(None, None))
  qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
  assert len(qc["config_groups"]) == 2 and "model.layers.0.mlp.down_proj" in qc["ignore"] and "lm_head" in qc["ignore"]
  _, p2 = from_pretrained(tmp_path)
  leaves_equal(qp, p2)
  for fmt in ("gptq", "awq"):
    with pytest.raises(ValueError, match="compressed-tensors"):
      export_pretrained(m, qp, tmp_path / fmt, fmt, bos_eos_ids=(None, None))


def test_export_refusals_name_a_format(rng, tmp_path):
  m, p = tiny_llama(rng)
  with pytest.raises(ValueError, match="'gptq' or 'compressed-tensors'"):
    export_pretrained(m, quantize_kernels(p, rng, _uint4, True), tmp_path / "a", "awq", bos_eos_ids=(None, None))
  with pytest.raises(ValueError, match="export as 'compressed-tensors'"):
    export_pretrained(m, quantize_kernels(p, rng, lambda n: _int4(n) if "mlp" in n else _uint4(n)), tmp_path / "b",
                      "gptq", bos_eos_ids=(None, None))
  with pytest.raises(ValueError, match="format 'float'"):
    export_pretrained(m, p, tmp_path / "c", "gptq", bos_eos_ids=(None, None))
  with pytest.raises(ValueError, match="choose --format compressed-tensors"):
    export_pretrained(m, quantize_kernels(p, rng, _uint4), tmp_path / "d", "float", bos_eos_ids=(None, None))


# ---------- bad input: one clear error naming the file and the tensor ----------

@pytest.fixture
def float_dir(rng, tmp_path):
  m, p = tiny_llama(rng)
  export_pretrained(m, p, tmp_path / "hf", "float", bos_eos_ids=(None, None))
  return tmp_path / "hf"


def _rewrite(d, change):
  st = SafetensorsDir(d)
  tensors = {k: st.get(k) for k in st.keys()}
  change(tensors)
  write_safetensors(d / "model.safetensors", tensors)


def test_bad_dir_without_config(tmp_path):
  with pytest.raises(ValueError, match="has no config.json"):
    from_pretrained(tmp_path)


def test_bad_architecture_and_quant_method(float_dir):
  cfg = json.loads((float_dir / "config.json").read_text())
  (float_dir / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ValueError, match=r"config.json: architectures \['GPT2LMHeadModel'\] is not supported"):
    from_pretrained(float_dir)
  (float_dir / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "bitsandbytes"}}))
  with pytest.raises(ValueError, match="config.json: quant_method 'bitsandbytes' is not supported"):
    from_pretrained(float_dir)


def test_bad_tensor_shape_dtype_extra_missing(float_dir):
  name = "model.layers.1.mlp.up_proj.weight"
  _rewrite(float_dir, lambda t: t.__setitem__(name, t[name][:-1]))
  with pytest.raises(ValueError, match=r"model.safetensors: model.layers.1.mlp.up_proj.weight: tensor is F32 \(63, 32\)"):
    load_hf(float_dir)
  _rewrite(float_dir, lambda t: t.__setitem__(name, np.zeros((64, 32), np.int32)))
  with pytest.raises(ValueError, match=r"up_proj.weight: tensor is I32 \(64, 32\)"):
    load_hf(float_dir)
  _rewrite(float_dir, lambda t: (t.__setitem__(name, np.zeros((64, 32), np.float32)),
                                 t.__setitem__("model.layers.0.mlp.extra.weight", np.zeros(3, np.float32))))
  with pytest.raises(ValueError, match="model.safetensors: unexpected tensor 'model.layers.0.mlp.extra.weight'"):
    load_hf(float_dir)
  _rewrite(float_dir, lambda t: (t.pop("model.layers.0.mlp.extra.weight"), t.pop("model.norm.weight")))
  with pytest.raises(ValueError, match="tensor 'model.norm.weight' is missing"):
    load_hf(float_dir)


def test_bad_quantized_tensor_names_file_and_tensor(rng, tmp_path):
  m, p = tiny_llama(rng)
  export_pretrained(m, quantize_kernels(p, rng, _uint4), tmp_path, "compressed-tensors", bos_eos_ids=(None, None))
  name = "model.layers.0.self_attn.o_proj.weight_scale"
  _rewrite(tmp_path, lambda t: t.__setitem__(name, t[name][:, :1]))
  with pytest.raises(ValueError, match=r"model.safetensors: model.layers.0.self_attn.o_proj: tensor 'weight_scale' "
                                       r"is float32 \(32, 1\).*\(32, 2\)"):
    load_hf(tmp_path)


@pytest.mark.parametrize("kind", ["int8_channel", "fp8_tensor", "fp8_channel"])
def test_ct_int_and_float_quantized_written_by_hand(rng, float_dir, kind):
  """compressed-tensors naive layouts from the format description: ``weight`` int8 / float8_e4m3fn (N, K),
  ``weight_scale`` (N, 1) or (1,); dequantized kernel = (weight * scale).T."""
  import ml_dtypes
  cfg = json.loads((float_dir / "config.json").read_text())
  st = SafetensorsDir(float_dir)
  tensors = {k: st.get(k) for k in st.keys()}
  expect = {}
  for k in list(tensors):
    if ".layers." not in k or not k.endswith("proj.weight"):
      continue
    n, kk = tensors[k].shape
    if kind == "int8_channel":
      w = rng.integers(-127, 128, (n, kk)).astype(np.int8)
      s = (rng.random((n, 1)) + 0.5).astype(np.float32)
    else:
      w = rng.standard_normal((n, kk)).astype(ml_dtypes.float8_e4m3fn)
      s = (rng.random((n, 1) if kind == "fp8_channel" else (1,)) + 0.5).astype(np.float32)
    tensors[k] = w
    tensors[k.replace(".weight", ".weight_scale")] = s
    expect[k] = (w.astype(np.float32) * s.reshape(-1, 1) if s.ndim == 2 else w.astype(np.float32) * s[0]).T
  write_safetensors(float_dir / "model.safetensors", tensors)
  typ, strategy = ("int", "channel") if kind == "int8_channel" else ("float", kind.split("_")[1])
  cfg["quantization_config"] = {
      "quant_method": "compressed-tensors", "format": "int-quantized" if typ == "int" else "float-quantized",
      "quantization_status": "compressed", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": typ, "symmetric": True,
                                                                      "strategy": strategy, "dynamic": False},
                                    "input_activations": {"num_bits": 8, "type": typ, "strategy": "token",
                                                          "dynamic": True, "symmetric": True}}}}
  (float_dir / "config.json").write_text(json.dumps(cfg))
  hf = load_hf(float_dir)
  import jquant as jq
  from jquant.interop.hf_config import qk_perm
  for k, want in expect.items():
    parts = k.split(".")
    qa = hf.params[f"layers_{parts[2]}"][parts[3]][parts[4]]["kernel"]
    assert isinstance(qa, jq.QArray) and qa.qtype == (jq.INT8 if typ == "int" else jq.FP8_E4M3)
    if parts[4] in ("q_proj", "k_proj"):
      want = want[:, qk_perm(4 if parts[4] == "q_proj" else 2, 8)]
    np.testing.assert_array_equal(np.asarray(jq.dequantize(qa, jnp.float32)), want)


def test_sharded_checkpoint_with_index(rng, tmp_path):
  m, p = tiny_llama(rng)
  qp = quantize_kernels(p, rng, _uint4, act_order=True)
  export_pretrained(m, qp, tmp_path, "compressed-tensors", bos_eos_ids=(None, None))
  st = SafetensorsDir(tmp_path)
  names = sorted(st.keys())
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for f, ks in shards.items():
    write_safetensors(tmp_path / f, {k: st.get(k) for k in ks})
  (tmp_path / "model.safetensors").unlink()
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
  _, p2 = from_pretrained(tmp_path)
  leaves_equal(qp, p2)
  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(ValueError, match="names shard model-00002-of-00002.safetensors, which is missing"):
    from_pretrained(tmp_path)


def test_rope_theta_from_rope_parameters_and_refused_rope_types(float_dir):
  """transformers >= 5 writes rope_theta inside rope_parameters; scaled RoPE variants are refused."""
  cfg = json.loads((float_dir / "config.json").read_text())
  cfg.pop("rope_theta")
  (float_dir / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_theta": 123456.0,
                                                                                "rope_type": "default"}}))
  assert load_hf(float_dir).settings["rope_base"] == 123456.0
  (float_dir / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3",
                                                                                "factor": 8.0}}))
  with pytest.raises(ValueError, match="config.json: RoPE type 'llama3' is not supported"):
    load_hf(float_dir)
