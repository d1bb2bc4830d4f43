"""The README's quick start runs as written."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "layers_0/kernel" in r.stdout and "quantized" in r.stdout
  sqnr = float(r.stdout.split("output SQNR:")[1].split("dB")[0])
  assert sqnr > 15.0
