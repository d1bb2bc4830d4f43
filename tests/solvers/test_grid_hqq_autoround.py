"""imatrix / MSE range search, HQQ and AutoRound: float64 NumPy references of their core steps, quality, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import ptq
from jquant.solvers import grid_qparams, grid_quantize
from jquant.ptq.learned_rounding import autoround_learn, autoround_quantize
from jquant.solvers.hqq import hqq, hqq_solve


def _spec(qt=jq.UINT3, g=16):
  return jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=g), symmetric=False)


def _np_grid(w, imp, qmax, g, ratios):
  """float64: per (group, column) the ratio r minimising sum_k imp_k (Q(w) - w)^2 over ranges r * (min, max)."""
  k, n = w.shape
  t = w.reshape(k // g, g, n)
  ii = imp.reshape(k // g, g, 1)
  lo0, hi0 = t.min(1), t.max(1)
  best = np.full((k // g, n), np.inf)
  pick = np.zeros((k // g, n))
  for r in ratios:
    lo, hi = np.minimum(lo0 * r, 0), np.maximum(hi0 * r, 0)
    s = np.where(hi - lo == 0, 1.0, (hi - lo) / qmax)
    z = np.clip(np.round(-lo / s), 0, qmax)
    q = np.clip(np.round(t / s[:, None]) + z[:, None], 0, qmax)
    e = np.sum(ii * ((q - z[:, None]) * s[:, None] - t) ** 2, axis=1)
    better = e < best
    pick = np.where(better, r, pick)
    best = np.where(better, e, best)
  return pick, best


def test_imatrix_grid_matches_float64_reference(rng):
  w = rng.standard_normal((64, 24))
  imp = np.exp(2 * rng.standard_normal(64))
  search = jq.MSE(grid=12, min_ratio=0.5)
  ratios = np.linspace(1.0, 0.5, 12).astype(np.float32).astype(np.float64)
  pick, best = _np_grid(w, imp / imp.mean(), 7, 16, ratios)
  qa = grid_quantize(jnp.asarray(w, jnp.float32), _spec(), "imatrix", jnp.asarray(imp, jnp.float32), search)
  d = np.asarray(jq.dequantize(qa), np.float64).reshape(4, 16, 24) - w.reshape(4, 16, 24)
  err = np.sum((imp / imp.mean()).reshape(4, 16, 1) * d ** 2, axis=1)
  # the chosen ranges reach the reference optimum (up to float32 rounding of near-ties)
  assert np.all(err <= best * (1 + 1e-4) + 1e-6)
  # and the weighting matters: the unweighted search is worse on the weighted error
  qm = grid_quantize(jnp.asarray(w, jnp.float32), _spec(), "mse", None, search)
  dm = np.asarray(jq.dequantize(qm), np.float64) - w
  assert np.sum(imp[:, None] * dm ** 2) > np.sum(imp[:, None] * (np.asarray(jq.dequantize(qa)) - w) ** 2)


@pytest.mark.slow
def test_gptq_imatrix_lowers_output_error(rng):
  x = rng.standard_normal((512, 64)).astype(np.float32) * np.exp(rng.standard_normal(64)).astype(np.float32)
  w = rng.standard_normal((64, 32)).astype(np.float32)
  h = jnp.asarray(x.T @ x)
  err = lambda qa: float(np.sum((x @ (np.asarray(jq.dequantize(qa)) - w)) ** 2))
  plain = ptq.GPTQ(_spec()).solve(jnp.asarray(w), h)[0]
  imx = ptq.GPTQ(_spec(), grid="imatrix").solve(jnp.asarray(w), h)[0]
  rtn_imx = ptq.RTN(_spec(), grid="imatrix").solve(jnp.asarray(w), h)[0]
  assert err(imx) < err(plain)
  assert err(rtn_imx) < err(jq.quantize(w, _spec()))


def _np_hqq(w, qmax, g, iters, p=0.7, beta=10.0, kappa=1.01, fit_scale=True):
  """float64 transcription of jquant's HQQ iteration (integer zero, least-squares step unless not fit_scale)."""
  k, n = w.shape
  t = w.reshape(k // g, g, n).transpose(0, 2, 1)
  lo, hi = np.minimum(t.min(-1, keepdims=True), 0), np.maximum(t.max(-1, keepdims=True), 0)
  s = (hi - lo) / qmax
  z = np.clip(np.round(-lo / s), 0, qmax)
  best = np.inf
  for _ in range(iters):
    q = np.clip(np.round(t / s + z), 0, qmax)
    wr = (q - z) * s
    x = t - wr
    a = np.abs(x)
    target = t - np.sign(x) * np.maximum(a - np.maximum(a, 1e-30) ** (p - 1) / beta, 0)
    z = np.clip(np.round(np.mean(q - target / s, -1, keepdims=True)), 0, qmax)
    c = q - z
    cc = (c * c).sum(-1, keepdims=True)
    s_ls = (target * c).sum(-1, keepdims=True) / np.maximum(cc, 1e-30)
    s = np.where((cc > 0) & (s_ls > 0) & fit_scale, s_ls, s)
    beta *= kappa
    e = np.mean(np.abs(t - wr))
    if not e < best:
      break
    best = e
  return s[..., 0], z[..., 0]


def test_hqq_iteration_matches_float64_reference(rng):
  w = (rng.standard_t(4, (64, 16)) * 0.05)
  s, z, n = hqq_solve(jnp.asarray(w, jnp.float32), spec=_spec(), iters=3)
  s_ref, z_ref = _np_hqq(w, 7, 16, 3)
  assert int(n) == 3
  np.testing.assert_allclose(np.asarray(s), s_ref, rtol=2e-4)
  assert np.mean(np.asarray(z) == z_ref) > 0.97          # rounding ties may differ in float32
  s, z, _ = hqq_solve(jnp.asarray(w, jnp.float32), spec=_spec(), iters=3, fit_scale=False)   # the step stays min/max
  s_ref, z_ref = _np_hqq(w, 7, 16, 3, fit_scale=False)
  np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-6)
  assert np.mean(np.asarray(z) == z_ref) > 0.97


def test_hqq_beats_rtn_on_heavy_tailed_weights(rng):
  w = (rng.standard_t(4, (128, 64)) * 0.02).astype(np.float32)
  mse = lambda qa: float(np.mean((np.asarray(jq.dequantize(qa)) - w) ** 2))
  assert mse(hqq(w, _spec(jq.UINT2, 32))) < 0.9 * mse(jq.quantize(w, _spec(jq.UINT2, 32)))


def test_autoround_beats_rtn_on_a_block_and_compiles_once(rng):
  spec = _spec(jq.UINT2, 16)
  x = jnp.asarray(rng.standard_normal((3, 64, 32)), jnp.float32)
  w1 = jnp.asarray(rng.standard_normal((32, 48)) / 6, jnp.float32)
  w2 = jnp.asarray(rng.standard_normal((48, 32)) / 7, jnp.float32)
  block = lambda a, b, h: jax.nn.gelu(h @ a) @ b
  y = block(w1, w2, x)
  traces = []

  @jax.jit
  def learn(ws, x, y):
    traces.append(1)
    loss = lambda wh, t: jnp.mean(jnp.square(block(wh["a"], wh["b"], x[t % 3]) - y[t % 3]))
    return autoround_learn(loss, ws, spec, 60, 1 / 60)

  params, best, first = learn({"a": w1, "b": w2}, x, y)
  learn({"a": w1 * 1.1, "b": w2}, x, y)               # another block of the same shapes: no new trace
  assert len(traces) == 1
  qa, qb = (jq.dequantize(autoround_quantize(w, params[k], spec)) for k, w in (("a", w1), ("b", w2)))
  ra, rb = jq.dequantize(jq.quantize(w1, spec)), jq.dequantize(jq.quantize(w2, spec))
  mse = lambda a, b: float(jnp.mean(jnp.square(block(a, b, x) - y)))
  assert float(first) == pytest.approx(float(jnp.mean(jnp.square(block(ra, rb, x[0]) - y[0]))), rel=1e-3)  # step 0: RTN
  assert mse(qa, qb) < 0.8 * mse(ra, rb)
  assert np.all(np.abs(np.asarray(params["a"]["v"])) <= 0.5)


@pytest.mark.parametrize("make, msg", [
    (lambda s: ptq.RTN(s, grid="l1"), "grid must be one of"),
    (lambda s: ptq.GPTQ(s, grid="imatrix", search=3), "search must be a jq.MSE"),
    (lambda s: ptq.HQQ(s.replace(symmetric=True, qtype=jq.INT4, calibration=jq.AbsMax())), "asymmetric integer spec"),
    (lambda s: ptq.HQQ(s, p=1.5), "p must be a float"),
    (lambda s: ptq.AutoRound(s, steps=0), "steps must be a positive int"),
    (lambda s: ptq.AutoRound(s, lr=-1.0), "lr must be a finite float"),
])
def test_bad_arguments_raise(make, msg):
  with pytest.raises((ValueError, TypeError), match=msg):
    make(_spec())


def test_grid_qparams_bad_importance():
  w = jnp.ones((32, 4), jnp.float32)
  with pytest.raises(ValueError, match="needs importance"):
    grid_qparams(w, _spec(), "imatrix")
  with pytest.raises(ValueError, match=r"shape \(K,\)"):
    grid_qparams(w, _spec(), "imatrix", jnp.ones(5))
  with pytest.raises(ValueError, match="finite"):
    grid_qparams(w, _spec(), "imatrix", jnp.full(32, jnp.nan))
