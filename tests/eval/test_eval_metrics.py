"""Perplexity and embedding fidelity on tiny random models, against direct NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant import eval as jeval
from tests.eval.helpers import random_text, tiny_encoder, tiny_lm


@pytest.fixture(scope="module")
def lm(module_seed):
  return tiny_lm(module_seed)


@pytest.fixture(scope="module")
def encoder(module_seed):
  return tiny_encoder(module_seed + 1)


def _np_nll(logits, ids):
  logits = np.asarray(logits, np.float64)[:, :-1]
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, np.asarray(ids)[:, 1:, None], -1).sum()


def test_perplexity_matches_numpy_with_padded_last_batch(lm, rng):
  model, params = lm
  text = random_text(rng, 70)
  r = jeval.perplexity(model, params, text=text, windows=4, seq_len=16, batch_size=3)
  ids = np.asarray(model.encode(text)[:64]).reshape(4, 16)
  nll = _np_nll(jax.jit(model.apply)(params, jnp.asarray(ids, jnp.int32)), ids)
  assert r.n_predictions == 4 * 15
  np.testing.assert_allclose(r.nll, nll, rtol=1e-5)
  np.testing.assert_allclose(r.ppl, np.exp(nll / 60), rtol=1e-5)


def test_perplexity_bad_input(lm, rng):
  model, params = lm
  with pytest.raises(ValueError, match="too short for 8 windows"):
    jeval.perplexity(model, params, text=random_text(rng, 30), windows=8, seq_len=16)
  with pytest.raises(ValueError, match="non-empty"):
    jeval.perplexity(model, params, text="   ", windows=1, seq_len=4)
  with pytest.raises(ValueError, match="batch_size"):
    jeval.perplexity(model, params, text=random_text(rng, 30), windows=1, seq_len=4, batch_size=0)


def test_fidelity_metrics_vs_numpy(rng):
  ref = rng.standard_normal((6, 5))
  approx = ref + 0.3 * rng.standard_normal((6, 5))
  r = jeval.fidelity_metrics(ref, approx)
  u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  cos = [float(u(ref)[i] @ u(approx)[i]) for i in range(6)]
  np.testing.assert_allclose([r.mean_cos, r.min_cos], [np.mean(cos), np.min(cos)], rtol=1e-12)
  nn = lambda x: [max((j for j in range(6) if j != i), key=lambda j: u(x)[i] @ u(x)[j]) for i in range(6)]
  assert r.top1_agree == np.mean(np.asarray(nn(ref)) == np.asarray(nn(approx)))
  assert jeval.fidelity_metrics(ref, ref).top1_agree == 1.0
  with pytest.raises(ValueError, match="equal shape"):
    jeval.fidelity_metrics(ref, approx[:5])


def test_embed_texts_bucketed_equals_one_by_one(encoder, rng):
  model, params = encoder
  texts = [random_text(rng, int(n)) for n in rng.integers(1, 25, size=7)]
  got = jeval.embed_texts(model, params, texts, batch_size=3, min_pad=4)
  fwd = jax.jit(model.apply)
  # One text per call, padded to one length (padding is masked; see the model tests): one compile.
  want = np.concatenate([np.asarray(fwd(params, model.encode_batch([t], pad_to=32))) for t in texts])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_embedding_fidelity_self_and_perturbed(encoder, rng):
  model, params = encoder
  text = "\n\n".join(random_text(rng, int(n)) for n in rng.integers(8, 20, size=6))
  same = jeval.embedding_fidelity(model, params, text=text)
  assert same.n == 6 and same.mean_cos == pytest.approx(1.0, abs=1e-6) and same.top1_agree == 1.0
  noisy = jax.tree.map(lambda a: a * (1 + 0.3 * jnp.asarray(rng.standard_normal(a.shape), jnp.float32)), params)
  r = jeval.embedding_fidelity(model, noisy, ref_params=params, text=text)
  assert r.min_cos <= r.mean_cos < 0.9999
  with pytest.raises(ValueError, match="need at least 2"):
    jeval.embedding_fidelity(model, params, text="too short")
  with pytest.raises(ValueError, match="ref_embeddings has shape"):
    jeval.embedding_fidelity(model, params, text=text, ref_embeddings=np.zeros((2, 16)))


def test_calibration_helpers(lm, rng):
  model, _ = lm
  docs = [random_text(rng, 60), random_text(rng, 40)]
  w = jeval.lm_calibration_windows(model, num_windows=5, seq_len=8, seed=1, texts=docs)
  assert w.shape == (5, 8) and w.dtype == np.int32
  np.testing.assert_array_equal(w, jeval.lm_calibration_windows(model, num_windows=5, seq_len=8, seed=1, texts=docs))
  paras = "\n\n".join(random_text(rng, 9) for _ in range(5))
  picked = jeval.encoder_calibration_texts(num=3, seed=0, texts=[paras])
  assert len(picked) == 3 and all(p in paras for p in picked)
  with pytest.raises(ValueError, match="fewer than num=9"):
    jeval.encoder_calibration_texts(num=9, texts=[paras])
  with pytest.raises(TypeError, match="wrap a single document"):
    jeval.encoder_calibration_texts(num=1, texts=paras)
