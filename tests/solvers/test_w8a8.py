"""SmoothQuant scales + W8A8, LLM.int8() and ZeroQuant matmuls against NumPy oracles; quality on outlier inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import solvers

from .oracles import rng_for


def _outlier_inputs(rng, t, k, n_out=4, mag=60.0):
  x = rng.normal(size=(t, k))
  cols = rng.choice(k, size=n_out, replace=False)
  x[:, cols] *= mag
  return x.astype(np.float32), cols


def _int8_rows(a):
  """symmetric absmax / 127 per row, float64 oracle: (codes, scales)."""
  s = np.abs(a).max(axis=-1, keepdims=True) / 127.0
  s = np.where(s > 0, s, 1.0)
  return np.clip(np.round(a / s), -127, 127), s


def test_smoothquant_scales_formula_and_weight_absmax():
  rng = rng_for("sq-scales")
  ws = [rng.normal(size=(32, 8)).astype(np.float32), rng.normal(size=(32, 5)).astype(np.float32)]
  ws[1][3] = 0.0
  ws[0][3] = 0.0                                     # an all-zero input row: w_absmax clamps to 1e-5
  act = np.abs(rng.normal(size=32)) * 10
  act[7] = 0.0                                       # s clamps to 1e-5
  wmax = np.asarray(solvers.weight_absmax([jnp.asarray(w) for w in ws]))
  np.testing.assert_allclose(wmax, np.maximum(np.abs(ws[0]).max(1), np.abs(ws[1]).max(1)))
  for alpha in (0.0, 0.5, 0.85):
    s = np.asarray(solvers.smoothquant_scales(jnp.asarray(act, jnp.float32), jnp.asarray(wmax), alpha))
    ref = np.maximum(act ** alpha / np.maximum(wmax.astype(np.float64), 1e-5) ** (1 - alpha), 1e-5)
    np.testing.assert_allclose(s, ref, rtol=2e-5)


def test_w8a8_matmul_matches_integer_oracle():
  rng = rng_for("w8a8-oracle")
  x = rng.normal(size=(2, 5, 24)).astype(np.float32)
  w = rng.normal(size=(24, 12)).astype(np.float32)
  qw = solvers.w8a8_quantize_weight(jnp.asarray(w))
  wq, sw = _int8_rows(w.T.astype(np.float64))
  x2 = x.reshape(-1, 24).astype(np.float64)
  xq, sx = _int8_rows(x2)
  ref = (xq @ wq.T) * sx * sw.T
  got = solvers.w8a8_matmul(jnp.asarray(x), qw)
  assert got.shape == (2, 5, 12)
  np.testing.assert_allclose(np.asarray(got).reshape(-1, 12), ref, rtol=1e-5, atol=1e-5)
  xt, st = _int8_rows(x2.reshape(1, -1))
  ref_t = (xt.reshape(-1, 24) @ wq.T) * st * sw.T
  np.testing.assert_allclose(np.asarray(solvers.w8a8_matmul(jnp.asarray(x), qw, act="per_tensor")).reshape(-1, 12),
                             ref_t, rtol=1e-5, atol=1e-5)
  static = np.abs(x2).max() / 127.0 / 2                # half the range: values beyond are clipped to +-127
  ref_s = (np.clip(np.round(x2 / static), -127, 127) @ wq.T) * static * sw.T
  np.testing.assert_allclose(np.asarray(solvers.w8a8_matmul(jnp.asarray(x), qw, act_scale=static)).reshape(-1, 12),
                             ref_s, rtol=1e-5, atol=1e-4)


def test_smoothquant_beats_naive_w8a8_on_outlier_channels():
  rng = rng_for("sq-quality")
  x, _ = _outlier_inputs(rng, 256, 128)
  w = (rng.normal(size=(128, 64)) / np.sqrt(128)).astype(np.float32)
  ref = x.astype(np.float64) @ w
  naive = solvers.w8a8_matmul(jnp.asarray(x), solvers.w8a8_quantize_weight(jnp.asarray(w), per_channel=False),
                              act="per_tensor")
  s = solvers.smoothquant_scales(jnp.max(jnp.abs(jnp.asarray(x)), 0), solvers.weight_absmax(jnp.asarray(w)), 0.5)
  xs = jnp.asarray(x) / s
  smooth = solvers.w8a8_matmul(xs, solvers.w8a8_quantize_weight(solvers.scale_weight_rows(jnp.asarray(w), s),
                                                                per_channel=False), act="per_tensor")
  err_naive = np.mean((np.asarray(naive) - ref) ** 2)
  err_smooth = np.mean((np.asarray(smooth) - ref) ** 2)
  assert err_smooth < 0.25 * err_naive, (err_smooth, err_naive)


def _llm_int8_oracle(x, w, threshold, fp_outliers=False):
  """bitsandbytes MatMul8bitLt (threshold > 0) in float64."""
  x = x.astype(np.float64)
  wq, sw = _int8_rows(w.T.astype(np.float64))       # per output column over all inputs
  outl = np.abs(x) >= threshold
  cols = np.where(outl.any(0))[0]
  xm = np.where(outl, 0.0, x)
  xq, sx = _int8_rows(xm)
  xq[:, cols] = 0
  y = (xq @ wq.T) * sx * sw.T
  w_out = w.astype(np.float64) if fp_outliers else (wq * sw).T
  return y + x[:, cols] @ w_out[cols]


def test_llm_int8_matches_oracle_and_fp_where_naive_int8_fails():
  rng = rng_for("llm-int8")
  x, cols = _outlier_inputs(rng, 64, 96, n_out=3, mag=60.0)
  w = (rng.normal(size=(96, 32)) / np.sqrt(96)).astype(np.float32)
  qw = solvers.llm_int8_prepare(jnp.asarray(w))
  got = np.asarray(solvers.llm_int8_matmul(jnp.asarray(x), qw, threshold=6.0))
  np.testing.assert_allclose(got, _llm_int8_oracle(x, w, 6.0), rtol=1e-4, atol=1e-4)
  got_fp = np.asarray(solvers.llm_int8(jnp.asarray(x), jnp.asarray(w), outlier_weights="fp"))
  np.testing.assert_allclose(got_fp, _llm_int8_oracle(x, w, 6.0, fp_outliers=True), rtol=1e-4, atol=1e-4)
  ref = x.astype(np.float64) @ w
  naive = np.asarray(solvers.llm_int8_matmul(jnp.asarray(x), qw, threshold=0.0))   # vector-wise int8 only
  rel = lambda y: np.linalg.norm(y - ref) / np.linalg.norm(ref)
  assert rel(got) < 0.01 and rel(got_fp) < 0.01       # within LLM.int8's int8 rounding bound ...
  assert rel(naive) > 0.01 and rel(naive) > 3 * rel(got), (rel(naive), rel(got))   # ... which plain int8 misses
  assert got.dtype == np.float32


def test_zeroquant_matmul_matches_group_oracle():
  rng = rng_for("zeroquant")
  x = rng.normal(size=(10, 64)).astype(np.float32)
  w = rng.normal(size=(64, 16)).astype(np.float32)
  for qt in (jq.INT8, jq.INT4):
    qw = solvers.zeroquant_quantize_weight(jnp.asarray(w), qtype=qt, group_size=32)
    assert qw.scale.shape == (2, 16)
    wd = np.asarray(jq.dequantize(qw), np.float64)
    xq, sx = _int8_rows(x.astype(np.float64))
    ref = (xq * sx) @ wd
    np.testing.assert_allclose(np.asarray(solvers.zeroquant_matmul(jnp.asarray(x), qw)), ref, rtol=1e-4, atol=1e-4)
  err8 = np.linalg.norm(np.asarray(solvers.zeroquant_matmul(
      jnp.asarray(x), solvers.zeroquant_quantize_weight(jnp.asarray(w)[:, :], group_size=32))) - x @ w)
  assert err8 / np.linalg.norm(x @ w) < 0.02


def test_bad_inputs():
  qw = solvers.w8a8_quantize_weight(jnp.ones((16, 4)))
  with pytest.raises(ValueError, match="alpha"):
    solvers.smoothquant_scales(jnp.ones(8), jnp.ones(8), 1.5)
  with pytest.raises(ValueError, match="both be"):
    solvers.smoothquant_scales(jnp.ones(8), jnp.ones(4))
  with pytest.raises(ValueError, match=">= 0"):
    solvers.smoothquant_scales(-jnp.ones(8), jnp.ones(8))
  with pytest.raises(ValueError, match="NaN"):
    solvers.smoothquant_scales(jnp.full(8, jnp.nan), jnp.ones(8))
  with pytest.raises(ValueError, match="one K"):
    solvers.weight_absmax([jnp.ones((8, 2)), jnp.ones((4, 2))])
  with pytest.raises(ValueError, match="K=8"):
    solvers.w8a8_matmul(jnp.ones((3, 8)), qw)
  with pytest.raises(ValueError, match="act must be"):
    solvers.w8a8_matmul(jnp.ones((3, 16)), qw, act="per_channel")
  with pytest.raises(ValueError, match="scalar"):
    solvers.w8a8_matmul(jnp.ones((3, 16)), qw, act_scale=jnp.ones(3))
  with pytest.raises(ValueError, match="INT8 QArray"):
    solvers.llm_int8_matmul(jnp.ones((3, 16)), jq.quantize(jnp.ones((16, 4)), jq.QuantSpec(qtype=jq.INT4)))
  with pytest.raises(ValueError, match="threshold"):
    solvers.llm_int8_matmul(jnp.ones((3, 16)), qw, threshold=-1.0)
  with pytest.raises(ValueError, match="w_fp has shape"):
    solvers.llm_int8_matmul(jnp.ones((3, 16)), qw, w_fp=jnp.ones((16, 3)))
  with pytest.raises(ValueError, match="outlier_weights"):
    solvers.llm_int8(jnp.ones((3, 16)), jnp.ones((16, 4)), outlier_weights="fp16")
  with pytest.raises(ValueError, match="multiple of 48"):
    solvers.zeroquant_quantize_weight(jnp.ones((64, 4)), group_size=48)
  with pytest.raises(ValueError, match="qtype"):
    solvers.zeroquant_spec(jq.UINT4)
  with pytest.raises(ValueError, match="group-wise"):
    solvers.zeroquant_matmul(jnp.ones((3, 16)), qw)
  with pytest.raises(ValueError, match="expected"):
    solvers.zeroquant_matmul(jnp.ones((3, 8)), solvers.zeroquant_quantize_weight(jnp.ones((64, 4)), group_size=32))
