"""NVFP4 GPTQ when the error feedback grows weights past the tensor's original amax (the default suite; the
other MX GPTQ tests are slow)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq

pytestmark = pytest.mark.randomized


def test_nvfp4_gptq_survives_feedback_past_the_tensor_amax(rng):
  # Weights of near-equal magnitude (most blocks at the tensor amax) and strongly correlated inputs: the feedback
  # pushes later rows past amax(w), so their block scales would exceed E4M3's 448 (10 of 10 draws raised
  # "non-finite scales" before the saturating grid scale).
  k, n = 64, 8
  x = (rng.standard_normal((512, k)) @ (rng.standard_normal((k, k)) + np.eye(k))).astype(np.float32)
  w = (np.sign(rng.standard_normal((k, n))) * rng.uniform(0.8, 1.0, (k, n))).astype(np.float32)
  spec = jq.QuantSpec(qtype=jq.NVFP4, granularity=jq.PerGroup(axis=0, size=16))
  gram = jnp.asarray(x.T.astype(np.float64) @ x, jnp.float32)
  qa, loss, _ = jq.ptq.GPTQ(spec, block_size=32, act_order=True).solve(jnp.asarray(w), gram)
  s = np.asarray(qa.scale.block.astype(jnp.float32))
  assert np.isfinite(s).all() and s.max() <= 448.0 and np.isfinite(loss)
  wq = np.asarray(jq.dequantize(qa), np.float64)
  wr = np.asarray(jq.dequantize(jq.quantize(jnp.asarray(w), spec)), np.float64)
  err = lambda v: float(np.sum((x.astype(np.float64) @ (w - v)) ** 2))
  assert np.isfinite(wq).all() and err(wq) < err(wr)
