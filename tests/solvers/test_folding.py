"""Folding helpers: exact rewrites of x @ w with per-input-channel scales."""

import jax.numpy as jnp
import numpy as np
import pytest

from jquant import solvers

from .oracles import rng_for


def _layer_norm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * scale + (0.0 if bias is None else bias)


@pytest.mark.parametrize("with_bias", [True, False])
def test_norm_fold_is_exact(with_bias):
  rng = rng_for(f"fold-norm-{with_bias}")
  k, n = 48, 20
  x = rng.normal(size=(10, k))
  scale, bias = rng.normal(size=k), (rng.normal(size=k) if with_bias else None)
  w = rng.normal(size=(k, n))
  s = np.exp(rng.normal(size=k))
  ns, nb = solvers.fold_scales_into_norm(jnp.asarray(scale, jnp.float32),
                                         None if bias is None else jnp.asarray(bias, jnp.float32), jnp.asarray(s))
  assert (nb is None) == (bias is None)
  ws = solvers.scale_weight_rows(jnp.asarray(w, jnp.float32), jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(ns), scale / s, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ws), w * s[:, None], rtol=1e-6)
  y_ref = _layer_norm(x, scale, bias) @ w
  y = _layer_norm(x, np.asarray(ns, np.float64), None if nb is None else np.asarray(nb, np.float64)) @ np.asarray(
      ws, np.float64)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_prev_linear_fold_is_exact_through_relu():
  rng = rng_for("fold-prev")
  x = rng.normal(size=(12, 16))
  w1, b1 = rng.normal(size=(16, 32)), rng.normal(size=32)
  w2 = rng.normal(size=(32, 8))
  s = np.exp(rng.normal(size=32))
  w1f, b1f = solvers.fold_scales_into_prev_linear(jnp.asarray(w1, jnp.float32), jnp.asarray(b1, jnp.float32), s)
  w2f = solvers.scale_weight_rows(jnp.asarray(w2, jnp.float32), s)
  ref = np.maximum(x @ w1 + b1, 0) @ w2
  got = np.maximum(x @ np.asarray(w1f, np.float64) + np.asarray(b1f, np.float64), 0) @ np.asarray(w2f, np.float64)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  w1n, none = solvers.fold_scales_into_prev_linear(jnp.asarray(w1, jnp.float32), None, s)
  assert none is None and w1n.dtype == jnp.float32


def test_bad_inputs():
  w = jnp.ones((8, 4))
  with pytest.raises(ValueError, match="expected \\(8,\\)"):
    solvers.scale_weight_rows(w, jnp.ones(4))
  with pytest.raises(ValueError, match="> 0"):
    solvers.scale_weight_rows(w, jnp.zeros(8))
  with pytest.raises(ValueError, match="> 0"):
    solvers.fold_scales_into_norm(jnp.ones(8), None, jnp.full(8, jnp.nan))
  with pytest.raises(ValueError, match="norm_bias shape"):
    solvers.fold_scales_into_norm(jnp.ones(8), jnp.ones(4), jnp.ones(8))
  with pytest.raises(ValueError, match="b_prev"):
    solvers.fold_scales_into_prev_linear(jnp.ones((3, 8)), jnp.ones(3), jnp.ones(8))
  with pytest.raises(ValueError, match="kernel"):
    solvers.scale_weight_rows(jnp.ones(8), jnp.ones(8))
