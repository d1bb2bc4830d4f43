"""Issue acceptance: on heavy-tailed data (Student-t), Percentile / MSE / KL give lower int8 MSE than AbsMax.

The effect needs a realistically sized tensor: with ~1M values the absmax sits far out in the tail, so the int8
step is coarse for the bulk, and clipping the rare tail costs less than it saves. (On small samples the tail
holds most of the energy and AbsMax wins; tests/calibration covers int4 there.)
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq


@pytest.mark.parametrize("method", [jq.Percentile(99.99), jq.MSE(), jq.KL()], ids=repr)
def test_int8_clipping_beats_absmax_on_student_t(rng, method):
  x = jnp.asarray(rng.standard_t(3.0, (1024, 1024)).astype(np.float32))
  x64 = np.asarray(x, np.float64)

  def mse(calibration):
    spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(), calibration=calibration)
    return float(np.mean((np.asarray(jq.dequantize(jq.quantize(x, spec)), np.float64) - x64) ** 2))

  assert mse(method) < 0.8 * mse(jq.AbsMax())
