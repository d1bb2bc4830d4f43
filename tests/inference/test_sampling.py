"""Sampling: top-k / top-p filtering vs a NumPy float64 reference, keyed sampling, bad parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.inference.sampling import SamplingConfig, filter_logits, sample_logits


def _np_filter(logits: np.ndarray, top_k, top_p) -> np.ndarray:
  """Boolean keep-mask per row, float64."""
  out = np.ones(logits.shape, bool)
  for r, row in enumerate(logits.astype(np.float64)):
    keep = np.ones(row.shape, bool)
    if top_k is not None and top_k < row.size:
      keep &= row >= np.sort(row)[::-1][top_k - 1]
    masked = np.where(keep, row, -np.inf)
    if top_p < 1.0:
      order = np.argsort(-masked, kind="stable")
      p = np.exp(masked[order] - masked[order][0])
      p /= p.sum()
      ahead = np.cumsum(p) - p
      n = int(np.sum(ahead < top_p))
      keep &= masked >= masked[order][n - 1]
    out[r] = keep
  return out


@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (5, 1.0), (7, 0.5), (1, 0.3), (None, 1e-6)])
def test_filter_matches_numpy(rng, top_k, top_p):
  logits = (rng.standard_normal((4, 50)) * rng.uniform(0.5, 4.0)).astype(np.float32)
  got = np.isfinite(np.asarray(jax.jit(filter_logits, static_argnums=(1, 2))(jnp.asarray(logits), top_k, top_p)))
  ref = _np_filter(logits, top_k, top_p)
  np.testing.assert_array_equal(got, ref)
  assert got.sum(axis=-1).min() >= 1


def test_greedy_and_sampling(rng):
  logits = jnp.asarray(rng.standard_normal((3, 40)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(sample_logits(logits, SamplingConfig())), np.argmax(logits, -1))
  key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
  top1 = sample_logits(logits, SamplingConfig(temperature=1.0, top_k=1), key)
  np.testing.assert_array_equal(np.asarray(top1), np.argmax(logits, -1))
  cfg = SamplingConfig(temperature=0.7, top_k=6, top_p=0.8)
  a, b = sample_logits(logits, cfg, key), sample_logits(logits, cfg, key)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))            # keyed: reproducible
  keys = jax.random.split(key, 400)
  draws = np.asarray(jax.vmap(lambda k: sample_logits(logits, cfg, k))(keys))   # (400, 3)
  allowed = _np_filter(np.asarray(logits) / 0.7, 6, 0.8)
  for r in range(3):
    assert allowed[r, draws[:, r]].all()                                 # never outside the top-k / top-p set
  assert len(np.unique(draws[:, 0])) > 1 or allowed[0].sum() == 1        # actually random


def test_bad_sampling_params():
  for kw, msg in [(dict(top_p=0.0), "top_p must be in"), (dict(top_p=1.5), "top_p must be in"),
                  (dict(top_k=0), "top_k must be None or an int >= 1"), (dict(top_k=2.5), "top_k"),
                  (dict(temperature=-1.0), "temperature must be"), (dict(temperature=float("nan")), "temperature")]:
    with pytest.raises(ValueError, match=msg):
      SamplingConfig(**kw)
  with pytest.raises(ValueError, match=r"needs key="):
    sample_logits(jnp.zeros((1, 4)), SamplingConfig(temperature=1.0))
  with pytest.raises(TypeError, match=r"SamplingConfig"):
    sample_logits(jnp.zeros((1, 4)), {"temperature": 1.0})
