"""CLI: ``--model PATH`` (an HF folder) in quantize/eval, ``export``, and ``eval`` of an exported HF folder."""

from __future__ import annotations

import json
import math

import pytest

from jquant.cli import main
from jquant.models import export_pretrained
from tests.interop.helpers import tiny_llama

pytestmark = pytest.mark.randomized


def _ppl(capsys, *argv) -> float:
  assert main(list(argv)) == 0
  out = capsys.readouterr().out
  return float(out.split("ppl ")[1].split()[0])


def test_quantize_export_eval_an_hf_folder(rng, tmp_path, capsys):
  m, p = tiny_llama(rng)
  export_pretrained(m, p, tmp_path / "float", "float", bos_eos_ids=(None, None))
  text = tmp_path / "t.txt"
  text.write_text(" ".join(f"word{i % 37} and {i}" for i in range(600)), encoding="utf-8")
  ppl_float = _ppl(capsys, "eval", "--model", str(tmp_path / "float"), "--text", str(text), "--windows", "1")
  assert _ppl(capsys, "eval", str(tmp_path / "float"), "--text", str(text), "--windows", "1") == ppl_float
  ck = tmp_path / "ck"
  assert main(["quantize", "--model", str(tmp_path / "float"), "--method", "rtn", "--bits", "4", "--group-size", "16",
               "--calib-text", str(text), "--calib-samples", "2", "--out", str(ck)]) == 0
  assert json.loads((ck / "meta.json").read_text())["model"] == str((tmp_path / "float").resolve())
  capsys.readouterr()
  ppl_ck = _ppl(capsys, "eval", str(ck), "--text", str(text), "--windows", "1")
  assert ppl_ck != ppl_float
  for fmt in ("gptq", "compressed-tensors", "awq"):
    assert main(["export", str(ck), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    assert "linear layers" in capsys.readouterr().out
    assert _ppl(capsys, "eval", str(tmp_path / fmt), "--text", str(text), "--windows", "1") == ppl_ck


def test_export_errors(rng, tmp_path, capsys):
  m, p = tiny_llama(rng)
  export_pretrained(m, p, tmp_path / "float", "float", bos_eos_ids=(None, None))
  assert main(["export", "--model", str(tmp_path / "float"), "--format", "gptq", "--out", str(tmp_path / "x")]) == 1
  assert "no linear kernel is quantized" in capsys.readouterr().err
  assert main(["export", str(tmp_path / "nothing"), "--format", "gptq", "--out", str(tmp_path / "y")]) == 1
  assert "error:" in capsys.readouterr().err
  assert main(["eval", "--model", str(tmp_path / "missing")]) == 1
  assert "Hugging Face model folder" in capsys.readouterr().err


def test_kv_cache_eval_of_biases_and_untied_heads(rng, tmp_path, capsys):
  """The cached runtime is the model's own LlamaLM: a model with q/k/v biases and an untied head evaluates through
  a KV cache (it was refused while inference kept its own Llama)."""
  m, p = tiny_llama(rng, tie_embeddings=False, qkv_bias=True)
  export_pretrained(m, p, tmp_path / "hf", "float", bos_eos_ids=(None, None))
  text = tmp_path / "t.txt"
  text.write_text(" ".join(f"word{i % 37} and {i}" for i in range(600)), encoding="utf-8")
  args = ["eval", str(tmp_path / "hf"), "--text", str(text), "--windows", "1"]
  base = _ppl(capsys, *args, "--kv-cache", "bfloat16")
  ppl = _ppl(capsys, *args, "--kv-cache", "int8")
  assert ppl != base and abs(math.log(ppl / base)) < 0.05, (ppl, base)


def test_kv_cache_eval_refuses_an_encoder(capsys, monkeypatch):
  from jquant.cli import common  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(common, "load_model", lambda *a, **k: pytest.fail("loaded the model before the check"))
  assert main(["eval", "--model", "minilm", "--kv-cache", "int8"]) == 1
  err = capsys.readouterr().err
  assert "--kv-cache applies to causal LMs" in err and "minilm is not one" in err, err


def test_kv_cache_eval_4bit(rng, tmp_path, capsys):
  """``eval --kv-cache int4|nvfp4`` runs the exported model through that cache: its numbers are the library's
  ``cached_perplexity`` with ``cache_config(kind)`` on the same params, to the printed digit. (How close a 4-bit
  cache stays to the float one is held where it is meaningful: tests/inference/test_kv_cache_4bit.py and the
  SmolLM2 test. On this random model (ppl ~1e6, confidently wrong) the nll moves by up to 0.5 nat / token over 200
  seeds, so a bound here would say little.)"""
  from jquant import inference  # pylint: disable=import-outside-toplevel
  m, p = tiny_llama(rng, hidden=64)           # head_dim 16: one NVFP4 block, a Hadamard size
  export_pretrained(m, p, tmp_path / "hf", "float", bos_eos_ids=(None, None))
  text = tmp_path / "t.txt"
  text.write_text(" ".join(f"word{i % 37} and {i}" for i in range(600)), encoding="utf-8")
  args = ["eval", str(tmp_path / "hf"), "--text", str(text), "--windows", "1", "--kv-cache"]
  base = _ppl(capsys, *args, "bfloat16")
  for kind in ("int4", "nvfp4"):
    assert main(args + [kind]) == 0
    out = capsys.readouterr().out
    r = inference.cached_perplexity(m, p, inference.cache_config(kind), text=text.read_text(encoding="utf-8"),
                                    windows=1, seq_len=512)
    assert out.startswith(f"ppl {r.ppl:.2f}\nnll_per_token {r.nll / r.n_predictions:.4f}\n"), (kind, out, r)
    assert f"kv_cache {kind}" in out and r.ppl != base, (kind, out, base)
