"""The real pretrained models reproduce their reference numbers (EVAL.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant import assets
from jquant.models import load_minilm, load_smollm2

pytestmark = pytest.mark.assets


def _load(fn):
  try:
    return fn()
  except assets.AssetError as e:
    pytest.skip(f"real-model asset unavailable (run `python -m jquant fetch-assets`): {e}")


@pytest.fixture(scope="module")
def minilm():
  return _load(load_minilm)


@pytest.fixture(scope="module")
def smollm2():
  return _load(load_smollm2)


def test_minilm_reference_similarities(minilm):
  model, params = minilm
  s = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
  e = np.asarray(jax.jit(model.apply)(params, model.encode_batch(s)), np.float64)
  assert e.shape == (3, 384)
  sim = e @ e.T
  np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411], atol=5e-5)


def test_minilm_truncates_to_256_tokens(minilm):
  model, _ = minilm
  batch = model.encode_batch(["word " * 400, "short"])
  assert batch["input_ids"].shape == (2, 256) and batch["attention_mask"][1].sum() == 3


def test_smollm2_tokenizer_and_greedy_paris(smollm2):
  model, params = smollm2
  ids = model.encode("The capital of France is")
  assert ids == [504, 3575, 282, 4649, 314]
  assert model.decode(ids) == "The capital of France is"
  assert model.encode("2024") == [34, 32, 34, 36]  # digits split one by one
  with pytest.warns(DeprecationWarning, match="generate_greedy is deprecated"):
    out = model.generate_greedy(params, ids, 2)     # the old name: a thin call into jquant.inference.generate
  assert model.decode(out).startswith(" Paris")
  assert params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (576, 192)
  assert params["embed_tokens"]["embedding"].shape == (49152, 576)
