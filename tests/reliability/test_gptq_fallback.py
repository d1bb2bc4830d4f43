"""Issue 11, item 5: GPTQ never zeroes a layer silently.

An all-zero Hessian (a layer that saw no tokens, e.g. an unused MoE expert) or one below float32's smallest normal
falls back to RTN with a RuntimeWarning saying so (the PTQ pipeline records it in the layer report); a tiny but
normal Hessian is solved exactly as the same Hessian at scale 1 (GPTQ is scale invariant).
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import solvers

pytestmark = pytest.mark.randomized

SPEC = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=16))


def _layer(rng, k=64, n=24):
  w = rng.normal(size=(k, n)).astype(np.float32)
  x = rng.normal(size=(4 * k, k)).astype(np.float32)
  return w, (x.T.astype(np.float64) @ x).astype(np.float32)


@pytest.mark.parametrize("hscale,why", [(0.0, "all zero"), (1e-45, "all zero|near zero"), (-1.0, "all zero|near zero")])
@pytest.mark.parametrize("act_order", [False, True])
def test_degenerate_hessian_falls_back_to_rtn(rng, hscale, why, act_order):
  w, h = _layer(rng)
  if hscale >= 0:
    hb = (h * np.float32(hscale)).astype(np.float32)
  else:   # a subnormal diagonal: below float32's smallest normal (the device may flush it to 0: "all zero")
    hb = np.diag(np.full(h.shape[0], 1e-39, np.float32))
  with pytest.warns(RuntimeWarning, match=rf"fell back to RTN for w of shape \(64, 24\): its Hessian is ({why})"):
    qa, losses = solvers.gptq(jnp.asarray(w), jnp.asarray(hb), SPEC, act_order=act_order)
  ref = jq.quantize(jnp.asarray(w), SPEC)
  np.testing.assert_array_equal(np.asarray(qa.qvalue), np.asarray(ref.qvalue))
  np.testing.assert_array_equal(np.asarray(jq.dequantize(qa)), np.asarray(jq.dequantize(ref)))
  assert np.count_nonzero(np.asarray(jq.dequantize(qa))) > 0.8 * w.size
  assert losses.shape == w.shape and float(jnp.sum(losses)) == 0.0


@pytest.mark.parametrize("exp", [-100, -120, 40])
def test_tiny_hessian_is_solved_like_the_unscaled_one(rng, exp):
  w, h = _layer(rng)
  qa1, l1 = solvers.gptq(jnp.asarray(w), jnp.asarray(h), SPEC, act_order=True)
  hs = np.ldexp(h, exp).astype(np.float32)      # exact power-of-two scaling; diag stays a normal float32
  qa2, l2 = solvers.gptq(jnp.asarray(w), jnp.asarray(hs), SPEC, act_order=True)
  np.testing.assert_array_equal(np.asarray(qa2.qvalue), np.asarray(qa1.qvalue))
  np.testing.assert_array_equal(np.asarray(qa2.scale), np.asarray(qa1.scale))
  np.testing.assert_allclose(np.asarray(l2, np.float64), np.ldexp(np.asarray(l1, np.float64), exp), rtol=1e-6,
                             atol=float(np.finfo(np.float32).tiny))   # results below it flush to 0


def test_partly_dead_inputs_keep_the_reference_behaviour(rng):
  """Dead inputs (diag 0) of an otherwise live layer are zeroed as in the reference; no fallback, no warning."""
  w, h = _layer(rng)
  h[3, :] = 0.0
  h[:, 3] = 0.0
  qa, _ = solvers.gptq(jnp.asarray(w), jnp.asarray(h), SPEC)
  wq = np.asarray(jq.dequantize(qa))
  assert np.all(wq[3] == 0.0) and np.count_nonzero(np.delete(wq, 3, 0)) > 0.8 * (w.size - w.shape[1])
