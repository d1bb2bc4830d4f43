"""GPTQ with the MX / NVFP4 grids (through the core grid hook): valid encodings that beat round-to-nearest."""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.core import mx

pytestmark = [pytest.mark.randomized, pytest.mark.slow]   # three GPTQ compiles: ~30 s on the loaded 2-core machine


@pytest.mark.parametrize("qt", [jq.MXFP4, jq.NVFP4, jq.MXFP8_E4M3], ids=lambda q: q.name)
def test_gptq_mx_grid_beats_rtn(rng, qt):
  k, n = 64, 24
  mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)          # correlated inputs (what GPTQ's feedback exploits)
  x = (rng.standard_normal((512, k)) @ mix * np.exp(rng.standard_normal(k))).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32) * 0.1
  spec = jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=qt.block_size))
  gram = jnp.asarray(x.T.astype(np.float64) @ x, jnp.float32)
  qa, loss, _ = jq.ptq.GPTQ(spec, block_size=32).solve(jnp.asarray(w), gram)
  assert qa.qtype is qt and qa.scale.dtype if qt is not jq.NVFP4 else isinstance(qa.scale, mx.NVFP4Scale)
  wq = np.asarray(jq.dequantize(qa), np.float64)
  if qt is not jq.NVFP4:   # every GPTQ weight is on the format's grid: re-encoding it by the format's rule is exact
    np.testing.assert_array_equal(np.asarray(jq.dequantize(jq.quantize(jnp.asarray(wq, jnp.float32), spec))), wq)
  else:
    assert float(qa.scale.tensor.reshape(())) == float(np.abs(w).max() / np.float32(2688.0))
  wr = np.asarray(jq.dequantize(jq.quantize(jnp.asarray(w), spec)), np.float64)
  err = lambda v: float(np.sum((x.astype(np.float64) @ (w - v)) ** 2))
  assert err(wq) < 0.8 * err(wr)
  assert np.isfinite(loss) and loss > 0
