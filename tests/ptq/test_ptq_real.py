"""End to end on the real models (EVAL.md): MiniLM w4 g128 GPTQ/AWQ beat RTN on Hamlet; SmolLM2 w4 g64 GPTQ ppl <= 48."""

import numpy as np
import pytest

import jquant as jq
from jquant import assets
from jquant import eval as E
from jquant.models import load_minilm

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def _calibration_batches(model, texts, batch_size=32):
  """Length-sorted batches, each padded to the next power of two >= its longest text (few shapes, little padding)."""
  lens = [len(e.ids) for e in model.tokenizer.encode_batch(texts)]
  order = np.argsort(lens, kind="stable")
  out = []
  for s in range(0, len(texts), batch_size):
    idx = order[s:s + batch_size]
    pad = max(16, 1 << int(np.ceil(np.log2(max(lens[i] for i in idx)))))
    out.append(model.encode_batch([texts[i] for i in idx], pad_to=pad))
  return out


@pytest.fixture(scope="module")
def minilm_setup():
  try:
    model, params = load_minilm()
    hamlet = assets.shakespeare_text("hamlet")
    texts = E.encoder_calibration_texts(256, seed=0)
  except assets.AssetError as e:
    pytest.skip(f"real-model asset unavailable (run `python -m jquant fetch-assets`): {e}")
  paras = E.paragraphs(hamlet, n=512, min_words=8)
  ref = E.embed_texts(model, params, paras)
  return model, params, _calibration_batches(model, texts), paras, ref


def test_minilm_w4_g128_gptq_and_awq_beat_rtn(minilm_setup):
  model, params, batches, paras, ref = minilm_setup
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=128), symmetric=False)
  cos = {}
  for name, method in (("rtn", jq.ptq.RTN(spec)), ("gptq", jq.ptq.GPTQ(spec, act_order=True)),
                       ("awq", jq.ptq.AWQ(spec))):
    qparams, report = jq.ptq.quantize_model(model, params, batches, method, progress=False)
    assert len(report.layers) == 36
    cos[name] = E.fidelity_metrics(ref, E.embed_texts(model, qparams, paras)).mean_cos
  print(f"MiniLM w4 g128 mean cos: {cos}")
  # Deterministic (real weights, fixed texts). Measured by this test (2026-12-04): RTN 0.94283, GPTQ act-order
  # 0.98673, AWQ 0.96964 (benchmarks/RESULTS.md's earlier table: 0.98588 / 0.96827). Bounds ~0.004 below; GPTQ
  # without act-order (0.98215 in that table) and RTN in place of a solver fail them.
  assert cos["rtn"] == pytest.approx(0.94283, abs=2e-3), cos       # EVAL.md's RTN baseline
  assert cos["gptq"] >= 0.983, cos
  assert cos["awq"] >= 0.965, cos


def test_smollm2_w4_g64_gptq_act_order_mse_grid_perplexity():
  """The issue's goal (ppl <= 48; RTN 53.37, reference GPTQ act-order 48.62): act-order + MSE-searched group ranges on
  16 calibration windows, as `make demo` runs it (measured 47.12; min/max grid 48.67). ~6 min on a loaded 2-core CPU."""
  from jquant.models import load_smollm2  # pylint: disable=import-outside-toplevel
  try:
    model, params = load_smollm2()
    windows = E.lm_calibration_windows(model, 16, 512, seed=0)
  except assets.AssetError as e:
    pytest.skip(f"real-model asset unavailable (run `python -m jquant fetch-assets`): {e}")
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=64), symmetric=False,
                      calibration=jq.MSE(grid=40, min_ratio=0.6))
  batches = [windows[i:i + 4] for i in range(0, len(windows), 4)]
  qparams, report = jq.ptq.quantize_model(model, params, batches, jq.ptq.GPTQ(spec, act_order=True), progress=False)
  assert len(report.layers) == 30 * 7
  ppl = E.perplexity(model, qparams).ppl
  assert ppl <= 48.0, ppl
