"""Issue 11, item 7: every CLI failure is one `error:` line on stderr with exit code 1; quantize checks its output
folder and arguments before any work."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.cli import common, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _err(capsys, argv):
  code = main(argv)
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if ln.strip()]
  assert code == 1, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def _ckpt(tmp_path, meta=None, params=True):
  d = tmp_path / "ckpt"
  d.mkdir()
  if params:
    jq.io.save_safetensors(d / "params.safetensors", {"w": jnp.ones((2, 2))})
  if meta is not None:
    (d / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
  return d


def _no_model_load(monkeypatch):
  """Fails the test if quantize gets as far as loading a model (the checks must come first)."""
  def boom(*a, **k):
    raise AssertionError("quantize did work before checking its arguments")
  monkeypatch.setattr(common, "load_model", boom)
  monkeypatch.setattr(common, "model_kind", boom)


def test_quantize_refuses_a_non_empty_out_before_any_work(capsys, tmp_path, monkeypatch):
  _no_model_load(monkeypatch)
  out = tmp_path / "q"
  out.mkdir()
  (out / "old.txt").write_text("x")
  line = _err(capsys, ["quantize", "--model", "minilm", "--method", "rtn", "--out", str(out)])
  assert "is not empty; pass --overwrite" in line and str(out) in line
  assert (out / "old.txt").read_text() == "x"


def test_quantize_refuses_a_file_as_out(capsys, tmp_path, monkeypatch):
  _no_model_load(monkeypatch)
  f = tmp_path / "f"
  f.write_text("x")
  assert "exists and is not a directory" in _err(capsys, ["quantize", "--model", "minilm", "--method", "rtn",
                                                           "--out", str(f)])


@pytest.mark.parametrize("n", ["0", "-3"])
def test_quantize_calib_samples_must_be_positive(capsys, tmp_path, monkeypatch, n):
  _no_model_load(monkeypatch)
  line = _err(capsys, ["quantize", "--model", "minilm", "--method", "rtn", "--calib-samples", n,
                       "--out", str(tmp_path / "q")])
  assert f"--calib-samples {n}: calibration needs at least 1 sample" in line


def test_quantize_missing_calib_text(capsys, tmp_path, monkeypatch):
  _no_model_load(monkeypatch)
  line = _err(capsys, ["quantize", "--model", "minilm", "--method", "rtn", "--calib-text", str(tmp_path / "nope.txt"),
                       "--out", str(tmp_path / "q")])
  assert "--calib-text" in line and "is not a file" in line


def test_overwrite_replaces_the_folder_without_stale_files(tmp_path):
  out = tmp_path / "q"
  out.mkdir()
  (out / "stale_layers.png").write_text("old")
  common.save_checkpoint(out, {"w": jnp.ones((2, 2))}, {"model": "minilm", "method": "rtn", "bits": 4},
                         overwrite=True, files={"report.txt": "r"})
  assert sorted(os.listdir(out)) == ["meta.json", "params.safetensors", "report.txt"]
  assert sorted(os.listdir(tmp_path)) == ["q"]


@pytest.mark.parametrize("cmd", ["eval", "report"])
@pytest.mark.parametrize("meta,msg", [
    ('{"method": "rtn", "bits": 4}', r"meta.json: missing key 'model'"),
    ("{not json", r"meta.json: invalid JSON"),
    ('[1, 2]', r"meta.json: expected a JSON object"),
    ('{"model": "minilm", "method": "rtn", "bits": "4"}', r"'bits' must be a int, got '4'"),
    ('{"model": "minilm", "method": "nope", "bits": 4}', r"unknown method 'nope'"),
])
def test_damaged_meta_json_is_one_error_line(capsys, tmp_path, cmd, meta, msg):
  import re
  d = _ckpt(tmp_path, meta)
  line = _err(capsys, [cmd, str(d)])
  assert re.search(msg, line), line


def test_truncated_params_file_is_one_error_line(capsys, tmp_path, monkeypatch):
  d = _ckpt(tmp_path, {"model": "minilm", "method": "rtn", "bits": 4})
  data = (d / "params.safetensors").read_bytes()
  (d / "params.safetensors").write_bytes(data[: len(data) // 2])
  monkeypatch.setattr(common, "load_model", lambda *a, **k: (None, None))
  line = _err(capsys, ["eval", str(d)])
  assert "params.safetensors" in line and "truncated or damaged" in line


def test_unexpected_exception_is_still_one_line(capsys, monkeypatch):
  import jquant.cli.eval as ev

  def boom(args):
    raise KeyError("x\ny")
  monkeypatch.setattr(ev, "run", boom)
  line = _err(capsys, ["eval", "somewhere"])
  assert line.startswith("error: unexpected KeyError")


def test_multiline_messages_are_joined(capsys, monkeypatch):
  import jquant.cli.eval as ev

  def boom(args):
    raise ValueError("first\nsecond")
  monkeypatch.setattr(ev, "run", boom)
  assert _err(capsys, ["eval", "x"]) == "error: first second"


def test_subprocess_exit_code_and_stderr(tmp_path):
  d = _ckpt(tmp_path, '{"method": "rtn", "bits": 4}')
  r = subprocess.run([sys.executable, "-m", "jquant", "eval", str(d)], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 1
  assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == \
      [f"error: {d / 'meta.json'}: missing key 'model' (expected ['bits', 'method', 'model']); the checkpoint folder "
       "is damaged or was not written by `python -m jquant quantize`."]
