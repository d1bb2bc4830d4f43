"""Issue acceptance: on heavy-tailed data (Student-t), Percentile / MSE / KL give lower int8 MSE than AbsMax.

The effect needs a realistically sized tensor: with ~1M values the absmax sits far out in the tail, so the int8
step is coarse for the bulk, and clipping the rare tail costs less than it saves. (On small samples the tail
holds most of the energy and AbsMax wins; tests/calibration covers int4 there.) Per draw the gain varies with how
far out the absmax landed (measured over 12 draws of t(3), error vs AbsMax: MSE 0.19-0.44x, Percentile(99.99)
0.28-0.88x, KL 0.31-1.16x: KL minimises a divergence, not the MSE), so the errors are pooled over four draws.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq

# pooled error vs AbsMax must be below these (MSE searches the error itself, so it must win by a wide margin)
BOUND = {"Percentile": 1.0, "MSE": 0.8, "KL": 1.0}


@pytest.mark.parametrize("method", [jq.Percentile(99.99), jq.MSE(), jq.KL()], ids=repr)
def test_int8_clipping_beats_absmax_on_student_t(rng, method):
  def sq_err(x, calibration):
    spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor(), calibration=calibration)
    deq = np.asarray(jq.dequantize(jq.quantize(jnp.asarray(x), spec)), np.float64)
    return float(np.sum((deq - x.astype(np.float64)) ** 2))

  draws = [rng.standard_t(3.0, (1024, 1024)).astype(np.float32) for _ in range(4)]
  ours = sum(sq_err(x, method) for x in draws)
  absmax = sum(sq_err(x, jq.AbsMax()) for x in draws)
  assert ours < BOUND[type(method).__name__] * absmax
