"""The README's quick start runs as written; the QAT and QLoRA examples run shortened (slow)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "layers_0/kernel" in r.stdout and "quantized" in r.stdout
  sqnr = float(r.stdout.split("output SQNR:")[1].split("dB")[0])
  assert sqnr > 15.0


def _losses(stdout: str) -> dict[str, float]:
  out = {}
  for line in stdout.splitlines():
    parts = line.split()
    if len(parts) >= 2 and parts[0].endswith("_loss"):
      out[parts[0]] = float(parts[1])
  return out


def _run_example(name, *args):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], cwd=ROOT, capture_output=True,
                     text=True, timeout=1200)
  if r.returncode != 0 and "AssetError" in r.stderr:
    pytest.skip(f"real-text asset unavailable (run `python -m jquant fetch-assets`): {r.stderr[-300:]}")
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout



@pytest.mark.slow
@pytest.mark.assets
def test_train_qat_lm_example_runs_shortened():
  # The README's QAT example, shortened (60 + 30 steps, a 64-wide model, 32 eval windows; ~1 min of CPU).
  # Measured (seed 0): fp 2.6957, RTN 2.7008, QAT 2.7020 nats/byte, QAT before/after convert equal to 4 digits.
  out = _run_example("train_qat_lm.py", "--steps", "60", "--qat-steps", "30", "--eval-windows", "32",
                     "--d-model", "64", "--batch", "16")
  loss = _losses(out)
  assert set(loss) == {"fp_loss", "rtn_loss", "qat_loss", "qat_fake_quant_loss"}, out
  assert loss["fp_loss"] < 3.0, loss                   # it learned (uniform over bytes: ln 256 = 5.55)
  assert abs(loss["qat_loss"] - loss["qat_fake_quant_loss"]) < 1e-3, loss    # convert keeps the trained function
  assert abs(loss["rtn_loss"] - loss["fp_loss"]) < 0.1 and abs(loss["qat_loss"] - loss["fp_loss"]) < 0.1, loss
  assert "12 quantized kernels" in out


@pytest.mark.slow
@pytest.mark.assets
def test_qlora_finetune_example_runs_shortened():
  # The README's QLoRA example, shortened (60 pre-training + 40 adapter steps, 64-wide, 32 eval windows).
  # Measured (seed 0): fp 2.7928, NF4 base 2.7956, after QLoRA 2.7187 nats/byte on held-out Hamlet.
  out = _run_example("qlora_finetune.py", "--pretrain-steps", "60", "--steps", "40", "--eval-windows", "32",
                     "--d-model", "64", "--batch", "16")
  loss = _losses(out)
  assert set(loss) == {"fp_loss", "nf4_base_loss", "qlora_loss"}, out
  assert abs(loss["nf4_base_loss"] - loss["fp_loss"]) < 0.05, loss          # NF4 base close to the float one
  assert loss["qlora_loss"] < loss["nf4_base_loss"] - 0.03, loss            # the adapters learned Hamlet
  assert "base unchanged: True" in out
