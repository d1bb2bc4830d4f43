"""`ranges.tile_all_finite`: the per-tile NaN/inf detector behind dynamic ranges (a scaled sum, one fused pass)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.core import ranges

F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (1, 3)])
def test_matches_numpy_isfinite_all(axes, rng):
  shape = (8, 64, 3, 16) if 3 in axes else (256, 8)
  # magnitudes over the whole float32 range, clipped at its max (huge but finite must not read as an overflow)
  x = np.clip(rng.normal(size=shape) * np.exp(rng.normal(scale=30, size=shape)), -F32_MAX, F32_MAX).astype(np.float32)
  bad = rng.random(shape) < 0.002
  bad.flat[rng.integers(bad.size)] = True   # at least one bad element: with 2048 elements and p = 0.002 alone, 1.7% of
                                            # draws had none and the "has teeth" assert failed (found by make fuzz)
  x[bad] = rng.choice([np.nan, np.inf, -np.inf], size=int(bad.sum()))
  want = np.all(np.isfinite(x.astype(np.float64)), axis=axes, keepdims=True)
  got = np.asarray(ranges.tile_all_finite(jnp.asarray(x), axes, keepdims=True))
  np.testing.assert_array_equal(got, want)
  assert (~want).any()   # the test has teeth: some tile is bad


def test_all_max_values_do_not_overflow():
  # the worst finite case: every element +-float32 max, same sign (the sum is at its largest)
  for n in (3, 4097):
    x = jnp.full((n, 2), F32_MAX, jnp.float32).at[:, 1].set(-F32_MAX)
    assert bool(np.all(ranges.tile_all_finite(x, 0)))


def test_nan_tile_gets_nan_scale_others_finite(rng):
  w = rng.normal(size=(256, 32)).astype(np.float32)
  w[130, 5] = np.nan
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=128))
  s, _ = jq.compute_qparams(jnp.asarray(w), spec)
  s = np.asarray(s)
  assert np.isnan(s[1, 5]) and np.isfinite(np.delete(s.reshape(-1), 1 * 32 + 5)).all()
  for sym in (True, False):
    spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1), symmetric=sym)
    s = np.asarray(jq.compute_qparams(jnp.asarray(w), spec)[0]).reshape(-1)
    assert np.isnan(s[5]) and np.isfinite(np.delete(s, 5)).all()
