"""The command line: argument errors (fast) and quantize -> eval DIR -> report DIR on MiniLM (slow, real assets)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import jquant as jq
from jquant.cli import common, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_errors_exit_nonzero_with_a_message(capsys):
  assert main(["eval"]) == 1
  assert "give either a checkpoint DIR or --model" in capsys.readouterr().err
  assert main(["eval", "/nonexistent_dir_for_jquant"]) == 1
  assert "not a jquant checkpoint folder" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["quantize", "--model", "minilm", "--method", "nope", "--out", "x"])


def test_method_and_spec_validation():
  with pytest.raises(ValueError, match="W8A8"):
    common.build_method("smoothquant", 4, 64)
  with pytest.raises(ValueError, match="--bits 5"):
    common.weight_spec(5, 64)
  spec = common.weight_spec(4, 64)
  assert spec.qtype.name == "uint4" and not spec.symmetric and spec.granularity.size == 64
  assert common.weight_spec(3, -1).granularity.__class__.__name__ == "PerChannel"
  assert spec.calibration == jq.MinMax()
  assert common.weight_spec(4, 64, "mse").calibration == jq.MSE(grid=40, min_ratio=0.6)
  with pytest.raises(ValueError, match="grid 'l2'"):
    common.weight_spec(4, 64, "l2")
  sq = common.build_method("smoothquant", 8, None)
  assert sq.smooth == "all" and sq.gptq is not None and sq.gptq.spec == sq.weight_spec()
  assert common.build_method("gptq", 3, 64, True, "mse").spec.calibration is not None


@pytest.mark.slow
@pytest.mark.assets
def test_rotated_minilm_checkpoint_is_compared_to_its_fp32_function(tmp_path, capsys):
  """eval of a --rotate MiniLM checkpoint compares it to the rotated fp32 encoder (the same function), not to the
  unrotated params run through the rotated model (which gave mean cos ~0)."""
  out = tmp_path / "q"
  assert main(["quantize", "--model", "minilm", "--method", "rtn", "--bits", "8", "--rotate", "--out", str(out)]) == 0
  assert json.loads((out / "meta.json").read_text())["rotate"] is True
  capsys.readouterr()
  assert main(["eval", str(out), "--paragraphs", "32"]) == 0
  cos = float(capsys.readouterr().out.split("mean_cos")[1].split()[0])
  assert cos > 0.999          # int8 per-channel weights of the rotated encoder


@pytest.mark.slow
@pytest.mark.assets
def test_quantize_eval_report_minilm(tmp_path):
  out = tmp_path / "q"
  run = lambda *a: subprocess.run([sys.executable, "-m", "jquant", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=1800)
  r = run("quantize", "--model", "minilm", "--method", "rtn", "--bits", "4", "--group-size", "128",
          "--calib-samples", "32", "--out", str(out))
  assert r.returncode == 0, r.stderr
  meta = json.loads((out / "meta.json").read_text())
  assert meta["method"] == "rtn" and meta["bits"] == 4
  r = run("eval", str(out))
  assert r.returncode == 0, r.stderr
  cos = float(r.stdout.split("mean_cos")[1].split()[0])
  assert abs(cos - 0.94283) < 0.005          # EVAL.md's RTN w4 g128 baseline
  r = run("report", str(out), "--samples", "4", "--budget-mb", "60")
  assert r.returncode == 0, r.stderr
  assert "output SQNR" not in r.stderr and "| layer |" in r.stdout and (out / "layers.png").is_file()


@pytest.mark.slow
@pytest.mark.assets
def test_demo_minilm_rtn_writes_table_json_png(tmp_path):
  r = subprocess.run([sys.executable, "-m", "jquant", "demo", "--model", "minilm", "--methods", "rtn",
                      "--calib-samples", "8", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                     timeout=1800)
  assert r.returncode == 0, r.stderr
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert [(x["method"], x["bits"]) for x in rows] == [("fp32 (reference)", 32), ("RTN", 8), ("RTN", 4), ("RTN", 3)]
  assert abs(rows[2]["mean_cos"] - 0.94283) < 0.005 and rows[1]["size_mb"] < rows[0]["size_mb"]
  assert "| RTN | 4 | 128 |" in r.stdout and (tmp_path / "quality_vs_size.png").stat().st_size > 0


def test_format_flag_builds_the_microscaling_grids():
  for fmt, qt in (("mxfp8", jq.MXFP8_E4M3), ("mxfp4", jq.MXFP4), ("nvfp4", jq.NVFP4)):
    for name in ("rtn", "gptq"):
      m = common.build_method(name, 4, 64, fmt=fmt)
      assert m.spec.qtype is qt and m.spec.granularity == jq.PerGroup(axis=0, size=qt.block_size)
  with pytest.raises(ValueError, match="rtn or gptq"):
    common.build_method("awq", 4, 64, fmt="mxfp4")
  with pytest.raises(ValueError, match="not supported"):
    common.build_method("rtn", 4, 64, fmt="fp6")


def test_meta_records_the_runtime_and_loading_rebuilds_it():
  """meta.json's ``runtime`` holds the run-time matmul and rotation; loading builds exactly that matmul from the
  record (never from the quantize flags), for every setting that changes the runtime."""
  cases = [(common.build_method("gptq", 4, 64, True, fmt="nvfp4"), None),
           (common.with_act_bits(common.build_method("gptq", 4, 64, True, "imatrix"), 8), "ActQuantMatmul"),
           (common.with_act_bits(common.build_method("rtn", 4, 64), 4), "ActQuantMatmul"),
           (common.build_method("smoothquant", 8, None), "W8A8Matmul"),
           (common.build_method("llm_int8", 8, None), "LLMInt8Matmul")]
  for method, kind in cases:
    rec = json.loads(json.dumps(common.runtime_record(method, rotate=True)))     # through JSON, as stored
    assert rec["rotate"] is True and (rec["matmul"] or {}).get("type") == kind
    assert common.runtime_matmul({"method": "gptq", "runtime": rec}) == method.matmul
  with pytest.raises(ValueError, match=r"m.json: runtime.matmul .*'type' is one of"):
    common.runtime_matmul({"runtime": {"matmul": {"type": "Evil"}}}, "m.json")
  with pytest.raises(ValueError, match=r"runtime.matmul .* is invalid"):
    common.runtime_matmul({"runtime": {"matmul": {"type": "ActQuantMatmul", "act_bits": 5}}})


@pytest.mark.parametrize("settings", [{"method": "smoothquant", "bits": 8}, {"method": "llm_int8", "bits": 8},
                                      {"method": "gptq", "bits": 4, "act_bits": 8, "grid": "imatrix"},
                                      {"method": "awq", "bits": 4, "act_bits": None, "rotate": True}])
def test_meta_json_written_before_the_runtime_record_still_loads(tmp_path, monkeypatch, settings):
  """Back-compat: a meta.json as quantize wrote it before ``runtime`` (every key but it) loads with the matmul and
  rotation that checkpoint ran with."""
  meta = {"model": "smollm2", "group_size": 64, "act_order": False, "grid": "minmax", "embedding": "int8",
          "format": "int", "quantize_seconds": 1.0, "rotate": False, "act_bits": None, **settings}
  d = tmp_path / "old"
  d.mkdir()
  (d / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
  jq.io.save_safetensors(d / "params.safetensors", {"w": jq.quantize(jnp.ones((4, 4)), common.weight_spec(8, None))})
  built = []

  class Fake:
    def __init__(self, matmul):
      self.matmul = matmul
  monkeypatch.setattr(common, "load_model", lambda name, matmul=None: built.append((name, matmul)) or (Fake(matmul), {}))
  rotated = []
  import jquant.models.rotation as rotation
  monkeypatch.setattr(rotation, "rotated_model", lambda m: rotated.append(m) or m)
  kind, model, params, _ = common.load_checkpoint(d)
  expected = common.with_act_bits(common.build_method(meta["method"], meta["bits"], 64, False, meta["grid"]),
                                  meta["act_bits"])
  assert kind.name == "smollm2" and built == [("smollm2", expected.matmul)] and model.matmul == expected.matmul
  assert bool(rotated) == bool(meta["rotate"]) and isinstance(params["w"], jq.QArray)


def test_rotate_and_act_bits_flags(tmp_path, capsys):
  """--act-bits wraps weight-only methods only (fails before any loading)."""
  m = common.with_act_bits(common.build_method("gptq", 4, 64), 8)
  assert m.name == "gptq+a8" and common.with_act_bits(m.method, None) is m.method
  assert main(["quantize", "--model", "smollm2", "--method", "smoothquant", "--bits", "8", "--act-bits", "8",
               "--out", str(tmp_path / "a")]) == 1
  assert "already quantizes activations" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["quantize", "--model", "smollm2", "--method", "rtn", "--act-bits", "2", "--out", str(tmp_path / "c")])


def test_act_format_flag_records_a_microscaling_runtime(tmp_path, capsys):
  """--act-format wraps the method in MX activations; meta.json's runtime record rebuilds the same matmul."""
  from jquant.ptq.methods import ActQuantMatmul
  m = common.with_act_bits(common.build_method("rtn", 8, None, fmt="mxfp8"), None, "mxfp8")
  assert m.name == "rtn+amxfp8" and m.matmul == ActQuantMatmul(8, "mxfp8")
  rec = common.runtime_record(m)
  assert rec["matmul"] == {"type": "ActQuantMatmul", "act_bits": 8, "act_format": "mxfp8"}
  assert common.runtime_matmul({"runtime": rec}) == ActQuantMatmul(act_format="mxfp8")
  assert common.runtime_matmul({"method": "rtn", "act_bits": 4}) == ActQuantMatmul(4)    # older meta.json
  assert main(["quantize", "--model", "smollm2", "--method", "rtn", "--format", "nvfp4", "--act-bits", "4",
               "--act-format", "nvfp4", "--out", str(tmp_path / "a")]) == 1
  assert "not both" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["quantize", "--model", "smollm2", "--method", "rtn", "--act-format", "int4", "--out", str(tmp_path / "b")])
