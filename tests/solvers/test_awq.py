"""AWQ: alpha search and clip search against exhaustive float64 oracles, quality vs RTN, folding, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import solvers

from .oracles import (awq_clip_oracle, awq_duo_weight_mean, awq_scale_oracle, fake_quant_groups, rng_for,
                      structured_layer)

SPEC = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=32), symmetric=False)


def test_scale_search_picks_the_oracle_alpha_for_shared_input():
  rng = rng_for("awq-alpha")
  x, w1 = structured_layer(rng, 128, 24, 256, outliers=6, outlier_scale=10.0)
  w2 = (rng.normal(size=(128, 16)) / np.sqrt(128)).astype(np.float32)
  act = np.mean(np.abs(x), axis=0)
  res = solvers.awq_scales([jnp.asarray(w1), jnp.asarray(w2)], jnp.asarray(act), SPEC, x=jnp.asarray(x))
  alpha, errs = awq_scale_oracle([w1, w2], act, x, g=32, qmin=0, qmax=15, symmetric=False)
  np.testing.assert_allclose(np.asarray(res.errors), errs, rtol=2e-3)
  top2 = np.sort(errs)[:2]
  assert top2[1] - top2[0] > 1e-3 * top2[0]           # this layer has a clear winner (no float32 near-tie) ...
  assert float(res.alpha) == pytest.approx(alpha)     # ... and the search finds it
  s_ref = np.maximum(act.astype(np.float64) ** float(res.alpha), 1e-4)
  np.testing.assert_allclose(np.asarray(res.scales), s_ref / np.sqrt(s_ref.max() * s_ref.min()), rtol=1e-5)
  assert res.errors.shape == (20,) and float(res.errors[int(round(float(res.alpha) * 20))]) == float(res.errors.min())


def test_scales_then_clip_beat_rtn_and_fold_exactly():
  rng = rng_for("awq-quality")
  for qt in (jq.UINT4, jq.UINT3):
    spec = jq.QuantSpec(qtype=qt, granularity=jq.PerGroup(axis=0, size=128), symmetric=False)
    x, w = structured_layer(rng, 256, 64, 1024, outliers=6, outlier_scale=12.0)
    res = solvers.awq_scales(jnp.asarray(w), solvers.act_mean_abs(jnp.asarray(x)), spec, x=jnp.asarray(x),
                             batch_size=5)
    ws = solvers.scale_weight_rows(jnp.asarray(w), res.scales)
    xs = jnp.asarray(x) / res.scales
    clip = solvers.awq_clip(ws, xs, spec)
    wq = jq.dequantize(jq.quantize(solvers.apply_clip(ws, clip.max_val), spec))
    out = np.asarray(xs @ wq)
    ref = x @ w
    err_awq = np.mean((out - ref) ** 2)
    err_rtn = np.mean((x @ np.asarray(jq.dequantize(solvers.rtn(jnp.asarray(w), spec))) - ref) ** 2)
    assert err_awq < 0.9 * err_rtn, (qt.name, err_awq, err_rtn)
    assert float(res.errors[int(round(float(res.alpha) * 20))]) <= float(res.errors[0])   # never worse than RTN


def test_clip_matches_oracle_with_few_tokens():
  rng = rng_for("awq-clip")
  x, w = structured_layer(rng, 64, 48, 100)          # < 512 tokens: the reference would crash (stride 0)
  res = solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC)
  ref = awq_clip_oracle(w, x, g=32, qmin=0, qmax=15, symmetric=False)
  assert res.max_val.shape == (2, 48)
  agree = np.isclose(np.asarray(res.max_val), ref, rtol=1e-5)
  assert agree.mean() >= 0.95    # the grid is emulated in float32 (clamped ranges put the zero point on .5 ties)
  x2 = np.concatenate([x] * 11)                      # 1100 tokens -> stride 2
  res2 = solvers.awq_clip(jnp.asarray(w), jnp.asarray(x2), SPEC)
  ref2 = awq_clip_oracle(w, x2, g=32, qmin=0, qmax=15, symmetric=False)
  assert np.isclose(np.asarray(res2.max_val), ref2, rtol=1e-5).mean() >= 0.95


def _relu_mlp(kernels, x):
  """A stand-in for the reference's module2inspect: relu(x @ w1) concatenated with x @ w2."""
  return jnp.concatenate([jnp.maximum(x @ kernels[0], 0.0), x @ kernels[1]], axis=-1)


def test_inspect_fn_objective():
  rng = rng_for("awq-inspect")
  x, w1 = structured_layer(rng, 64, 16, 128, outliers=4, outlier_scale=10.0)
  w2 = (rng.normal(size=(64, 8)) / 8).astype(np.float32)
  act = solvers.act_mean_abs(jnp.asarray(x))
  ws = [jnp.asarray(w1), jnp.asarray(w2)]
  res = solvers.awq_scales(ws, act, SPEC, x=jnp.asarray(x), inspect_fn=_relu_mlp)
  ref_out = np.asarray(_relu_mlp(ws, jnp.asarray(x)))
  for i in (0, 7, 19):                                  # errors are the MSE of the inspected module's output
    s = np.maximum(np.asarray(act, np.float64) ** (i / 20), 1e-4)
    s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)[:, None]
    wq = [jq.dequantize(jq.quantize(jnp.asarray(w * s), SPEC)) / s for w in (w1, w2)]
    err = np.mean((np.asarray(_relu_mlp(wq, jnp.asarray(x))) - ref_out) ** 2)
    np.testing.assert_allclose(float(res.errors[i]), err, rtol=1e-3)


def test_no_calibration_inputs_uses_diagonal_proxy():
  rng = rng_for("awq-proxy")
  x, w = structured_layer(rng, 64, 16, 128)
  act = np.asarray(solvers.act_mean_abs(jnp.asarray(x)))
  res = solvers.awq_scales(jnp.asarray(w), jnp.asarray(act), SPEC)
  # float64 oracle of the documented proxy: err(alpha) = sum_k mean|x_k|^2 ||dW_k||^2 / N with dW the rounding
  # error of the scaled kernel, s = max(act^alpha, 1e-4) normalised by sqrt(max s * min s)
  errs = []
  for i in range(20):
    s = np.maximum(act.astype(np.float64) ** (i / 20), 1e-4)
    s = (s / np.sqrt(s.max() * s.min()))[:, None]
    dw = fake_quant_groups(w * s, 32, 0, 15, False) / s - w
    errs.append(np.sum(act.astype(np.float64) ** 2 * np.sum(dw ** 2, axis=1)) / w.shape[1])
  errs = np.array(errs)
  np.testing.assert_allclose(np.asarray(res.errors), errs, rtol=2e-3)
  top2 = np.sort(errs)[:2]
  assert top2[1] - top2[0] > 1e-2 * top2[0]           # a clear winner on this layer (no float32 near-tie)
  assert float(res.alpha) == pytest.approx(np.argmin(errs) / 20) and float(res.alpha) > 0
  s_ref = np.maximum(act.astype(np.float64) ** float(res.alpha), 1e-4)
  np.testing.assert_allclose(np.asarray(res.scales), s_ref / np.sqrt(s_ref.max() * s_ref.min()), rtol=1e-5)


def test_bad_inputs():
  rng = rng_for("awq-bad")
  w = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(32, 64)), jnp.float32)
  act = jnp.mean(jnp.abs(x), 0)
  with pytest.raises(ValueError, match="act_mean_abs has shape"):
    solvers.awq_scales(w, act[:10], SPEC, x=x)
  with pytest.raises(ValueError, match=">= 0"):
    solvers.awq_scales(w, -act, SPEC, x=x)
  with pytest.raises(ValueError, match="expected \\(T, 64\\)"):
    solvers.awq_scales(w, act, SPEC, x=x[:, :10])
  with pytest.raises(ValueError, match="zero calibration tokens"):
    solvers.awq_scales(w, act, SPEC, x=x[:0])
  with pytest.raises(ValueError, match="NaN"):
    solvers.awq_scales(w, act, SPEC, x=x.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="same K"):
    solvers.awq_scales([w, w[:32]], act, SPEC, x=x)
  with pytest.raises(ValueError, match="multiple of 48"):
    solvers.awq_scales(w, act, SPEC.replace(granularity=jq.PerGroup(axis=0, size=48)), x=x)
  with pytest.raises(ValueError, match="inspect_fn needs"):
    solvers.awq_scales(w, act, SPEC, inspect_fn=_relu_mlp)
  with pytest.raises(ValueError, match="grid"):
    solvers.awq_scales(w, act, SPEC, x=x, grid=0)
  with pytest.raises(ValueError, match="zero calibration tokens"):
    solvers.awq_clip(w, x[:0], SPEC)
  with pytest.raises(ValueError, match="expected \\(T, 64\\)"):
    solvers.awq_clip(w, x.T, SPEC)
  with pytest.raises(ValueError, match="max_shrink"):
    solvers.awq_clip(w, x, SPEC, max_shrink=1.5)
  with pytest.raises(ValueError, match="do not tile"):
    solvers.apply_clip(w, jnp.ones((3, 8)))
  with pytest.raises(ValueError, match="zero tokens"):
    solvers.act_mean_abs(x[:0])
  with pytest.raises(TypeError):
    solvers.awq_scales(w, act, "uint4", x=x)


def test_minmax_clip_matches_oracle_and_clamps_both_ends():
  rng = rng_for("awq-clip-minmax")
  x, w = structured_layer(rng, 64, 48, 700)
  w = w + 0.3 * np.abs(w).mean()                     # lopsided groups: the two ends of the range differ
  res = solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC, mode="minmax")
  lo, hi = awq_clip_oracle(w, x, g=32, qmin=0, qmax=15, symmetric=False, mode="minmax")
  assert res.min_val.shape == res.max_val.shape == (2, 48)
  assert np.isclose(np.asarray(res.max_val), hi, rtol=1e-5).mean() >= 0.95
  assert np.isclose(np.asarray(res.min_val), lo, rtol=1e-5).mean() >= 0.95
  assert np.all(np.asarray(res.min_val) <= 0) and np.all(np.asarray(res.max_val) >= 0)
  clipped = np.asarray(solvers.apply_clip(jnp.asarray(w), res.max_val, res.min_val))
  lo_rows, hi_rows = np.repeat(np.asarray(res.min_val), 32, 0), np.repeat(np.asarray(res.max_val), 32, 0)
  np.testing.assert_array_equal(clipped, np.clip(w, lo_rows, hi_rows))
  ab = solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC)
  np.testing.assert_array_equal(np.asarray(ab.min_val), -np.asarray(ab.max_val))
  with pytest.raises(ValueError, match="mode must be 'absmax'"):
    solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC, mode="percentile")
  with pytest.raises(ValueError, match="clip_range must be"):
    jq.ptq.AWQ(SPEC, clip_range="both")
  assert jq.ptq.AWQ(SPEC).clip_mode == "minmax"
  sym = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=32))
  assert jq.ptq.AWQ(sym).clip_mode == "absmax" and jq.ptq.AWQ(SPEC, clip_range="absmax").clip_mode == "absmax"


def test_gram_objective_equals_token_objective():
  rng = rng_for("awq-gram")
  x, w = structured_layer(rng, 64, 48, 300)
  w2 = rng.standard_normal((64, 16)).astype(np.float32)
  gram = (x.astype(np.float64).T @ x) / x.shape[0]
  act = solvers.act_mean_abs(jnp.asarray(x))
  by_x = solvers.awq_scales([jnp.asarray(w), jnp.asarray(w2)], act, SPEC, x=jnp.asarray(x))
  by_g = solvers.awq_scales([jnp.asarray(w), jnp.asarray(w2)], act, SPEC, gram=jnp.asarray(gram, jnp.float32))
  np.testing.assert_allclose(np.asarray(by_g.errors), np.asarray(by_x.errors), rtol=1e-3)
  assert float(by_g.alpha) == float(by_x.alpha)
  for mode in ("absmax", "minmax"):
    cx = solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC, mode=mode)      # 300 < 512 tokens: no subsample
    cg = solvers.awq_clip(jnp.asarray(w), None, SPEC, mode=mode, gram=jnp.asarray(gram, jnp.float32))
    assert np.isclose(np.asarray(cg.max_val), np.asarray(cx.max_val), rtol=1e-5).mean() >= 0.98
    assert np.isclose(np.asarray(cg.min_val), np.asarray(cx.min_val), rtol=1e-5).mean() >= 0.98
  with pytest.raises(ValueError, match=r"expected \(64, 64\)"):
    solvers.awq_clip(jnp.asarray(w), None, SPEC, gram=jnp.eye(32))
  with pytest.raises(ValueError, match="one"):
    solvers.awq_clip(jnp.asarray(w), jnp.asarray(x), SPEC, gram=jnp.asarray(gram, jnp.float32))
  with pytest.raises(ValueError, match="not both"):
    solvers.awq_scales(jnp.asarray(w), act, SPEC, x=jnp.asarray(x), gram=jnp.asarray(gram, jnp.float32))


def test_duo_scaling_matches_oracle():
  rng = rng_for("awq-duo")
  x, w1 = structured_layer(rng, 128, 24, 256, outliers=6, outlier_scale=10.0)
  w1 = w1 * rng.uniform(0.2, 3.0, (128, 1)).astype(np.float32)      # row magnitudes vary: w_mean matters
  act = np.mean(np.abs(x), axis=0)
  res = solvers.awq_scales(jnp.asarray(w1), jnp.asarray(act), SPEC, x=jnp.asarray(x), duo_scaling=True)
  alpha, errs = awq_scale_oracle([w1], act, x, g=32, qmin=0, qmax=15, symmetric=False, duo=True)
  np.testing.assert_allclose(np.asarray(res.errors), errs, rtol=2e-3)
  if np.sort(errs)[1] - np.sort(errs)[0] > 1e-3 * np.sort(errs)[0]:
    assert float(res.alpha) == pytest.approx(alpha)
  a = float(res.alpha)
  s_ref = np.maximum(act.astype(np.float64) ** a / (awq_duo_weight_mean([w1], 32) ** (1 - a) + 1e-4), 1e-4)
  np.testing.assert_allclose(np.asarray(res.scales), s_ref / np.sqrt(s_ref.max() * s_ref.min()), rtol=1e-4)
  plain = solvers.awq_scales(jnp.asarray(w1), jnp.asarray(act), SPEC, x=jnp.asarray(x))
  assert not np.allclose(np.asarray(plain.errors[1:]), np.asarray(res.errors[1:]))
  with pytest.raises(TypeError, match="duo_scaling must be a bool"):
    jq.ptq.AWQ(SPEC, duo_scaling="yes")


def test_quantize_dequantize_matches_float64_grid_and_old_name_warns():
  rng = rng_for("awq-qdq")
  w = (rng.normal(size=(64, 12)) / 8).astype(np.float32)
  got = np.asarray(solvers.quantize_dequantize(jnp.asarray(w), SPEC), np.float64)
  want = fake_quant_groups(w, 32, 0, 15, False, grid_dtype=np.float32)
  # one float32 rounding of the dequantized value (q - zero) * scale
  np.testing.assert_allclose(got, want, rtol=2e-7, atol=2e-7 * np.abs(want).max())
  with pytest.warns(DeprecationWarning, match="jq.solvers.quantize_dequantize"):
    old = solvers.fake_quant(jnp.asarray(w), SPEC)
  np.testing.assert_array_equal(np.asarray(old), np.asarray(got, np.float32))
  assert "fake_quant" not in solvers.__all__ and jq.solvers.fake_quant is not jq.fake_quant
