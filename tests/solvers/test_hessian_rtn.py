"""Hessian observer (running mean over samples, as the reference add_batch) and the RTN baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import solvers

from .oracles import rng_for


def _reference_hessian(batches):
  """add_batch transcribed: samples = leading dim of a 3-D batch (a 2-D batch is one sample)."""
  k = batches[0].shape[-1]
  h = np.zeros((k, k))
  n = 0
  for inp in batches:
    inp = inp.astype(np.float64)
    if inp.ndim == 2:
      inp = inp[None]
    b = inp.shape[0]
    inp = inp.reshape(-1, k).T
    h *= n / (n + b)
    n += b
    inp = np.sqrt(2 / n) * inp
    h += inp @ inp.T
  return h


def test_streaming_hessian_matches_reference():
  rng = rng_for("hessian")
  batches = [rng.normal(size=(2, 5, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32),
             rng.normal(size=(3, 4, 16)).astype(np.float32)]
  st = solvers.hessian_init(16)
  for b in batches:
    st = solvers.hessian_update(st, jnp.asarray(b))
  assert int(st.n) == 6 and int(st.batches) == 3
  np.testing.assert_allclose(np.asarray(solvers.hessian_finalize(st)), _reference_hessian(batches), rtol=1e-5,
                             atol=1e-6)


def test_update_is_jittable_in_a_scan():
  rng = rng_for("hessian-scan")
  xs = rng.normal(size=(4, 2, 3, 8)).astype(np.float32)
  step = lambda st, x: (solvers.hessian_update(st, x), None)
  st, _ = jax.lax.scan(step, solvers.hessian_init(8), jnp.asarray(xs))
  np.testing.assert_allclose(np.asarray(solvers.hessian_finalize(st)), _reference_hessian(list(xs)), rtol=1e-5,
                             atol=1e-6)


def test_hessian_errors():
  rng = rng_for("hessian-bad")
  with pytest.raises(ValueError, match="no calibration samples"):
    solvers.hessian_finalize(solvers.hessian_init(8))
  st = solvers.hessian_init(8)
  with pytest.raises(ValueError, match=r"expected \(\.\.\., 8\)"):
    solvers.hessian_update(st, jnp.ones((4, 6)))
  with pytest.raises(ValueError, match="no tokens"):
    solvers.hessian_update(st, jnp.ones((0, 8)))
  with pytest.raises(ValueError, match="positive int"):
    solvers.hessian_init(0)
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  st = solvers.hessian_update(solvers.hessian_update(st, x), x.at[1, 2].set(jnp.nan))
  with pytest.raises(ValueError, match="batch 1 .*NaN"):
    solvers.hessian_finalize(st)
  with pytest.raises(TypeError):
    solvers.hessian_update(st, jnp.ones((4, 8), jnp.int32))


def test_rtn_is_quantize_and_validates():
  rng = rng_for("rtn")
  w = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=32))
  qa = solvers.rtn(w, spec)
  ref = np.asarray(w).reshape(2, 32, 16)
  scale = np.abs(ref).max(1, keepdims=True) / 7
  np.testing.assert_allclose(np.asarray(jq.dequantize(qa)).reshape(2, 32, 16),
                             np.clip(np.round(ref / scale), -8, 7) * scale, rtol=1e-5, atol=1e-7)
  with pytest.raises(TypeError):
    solvers.rtn(w, "int4")
  with pytest.raises(ValueError, match="multiple of 48"):
    solvers.rtn(w, spec.replace(granularity=jq.PerGroup(axis=0, size=48)))
  with pytest.raises(ValueError, match="NaN"):
    solvers.rtn(w.at[0, 0].set(jnp.inf), spec)
  with pytest.raises(ValueError, match="scalar"):
    solvers.rtn(jnp.float32(1.0), spec)
