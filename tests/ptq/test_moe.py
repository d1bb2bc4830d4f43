"""Mixture-of-experts: the grouped quantized matmul, per-expert statistics, the stacked solve with starved experts,
and quantize_model / runtime_model on a small Mixtral-style Linen model (tests/ptq/moe_models.py)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.core.views import stack_qarrays
from jquant.ptq.capture import InputStats, _reduce_experts
from jquant.ptq.moe import solve_experts
from tests.ptq.moe_models import TinyMixtral, starve

SPEC = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=16), symmetric=False)


def _ref_ragged(x, w, gs):
  """float64 reference: rows of expert e times w[e]; rows past sum(gs) give 0."""
  out = np.zeros((x.shape[0], w.shape[2]))
  start = 0
  for e, n in enumerate(gs):
    out[start:start + n] = x[start:start + n].astype(np.float64) @ w[e].astype(np.float64)
    start += n
  return out


@pytest.mark.parametrize("spec", [SPEC, jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))])
def test_ragged_qdot_matches_float64_reference(spec, rng):
  e, k, n, m = 4, 32, 24, 40
  w = rng.normal(size=(e, k, n)).astype(np.float32)
  x = rng.normal(size=(m, k)).astype(np.float32)
  gs = np.array([9, 0, 17, 10], np.int32)                          # one empty expert, 4 rows past the groups
  qa = stack_qarrays([jq.quantize(jnp.asarray(w[i]), spec) for i in range(e)])     # as quantize_model stores experts
  wd = np.asarray(jq.dequantize(qa), np.float64)
  got = np.asarray(jq.ops.ragged_qdot(jnp.asarray(x), qa, jnp.asarray(gs)))
  ref = _ref_ragged(x, wd, gs)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)))
  assert np.all(got[36:] == 0)


def test_ragged_qdot_rejects_bad_shapes():
  x = jnp.ones((6, 8))
  with pytest.raises(ValueError, match=r"\(E, K, N\)"):
    jq.ops.ragged_qdot(x, jnp.ones((8, 4)), jnp.array([6], jnp.int32))
  with pytest.raises(ValueError, match="group_sizes"):
    jq.ops.ragged_qdot(x, jnp.ones((2, 8, 4)), jnp.array([3.0, 3.0]))


def test_per_expert_statistics_match_float64(rng):
  e, k, m = 3, 8, 20
  x = rng.normal(size=(m, k)).astype(np.float32)
  gs = np.array([7, 0, 11], np.int32)                               # 2 rows past the groups: not counted
  r = _reduce_experts(jnp.asarray(x), jnp.asarray(gs), 1)
  start = 0
  for i, n in enumerate(gs):
    xe = x[start:start + n].astype(np.float64)
    np.testing.assert_allclose(np.asarray(r["gram"][i]), xe.T @ xe, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r["abs_sum"][i]), np.abs(xe).sum(0), rtol=1e-5, atol=1e-6)
    start += n
  assert np.asarray(r["expert_count"]).tolist() == [7, 0, 11]
  assert np.asarray(r["sample_expert"])[np.asarray(r["sample_mask"])].tolist() == [0] * 7 + [2] * 11


def _stats(x, gs):
  r = _reduce_experts(jnp.asarray(x), jnp.asarray(gs), 1)
  return InputStats(gram=r["gram"], abs_sum=r["abs_sum"], abs_max=r["abs_max"], count=float(r["count"]),
                    expert_counts=np.asarray(r["expert_count"]))


def test_stacked_gptq_solve_with_starved_experts(rng):
  e, k, n = 4, 32, 16
  w = jnp.asarray(rng.normal(size=(e, k, n)), jnp.float32)
  gs = np.array([60, 3, 70, 0], np.int32)
  x = rng.normal(size=(int(gs.sum()), k)).astype(np.float32)
  method = jq.ptq.GPTQ(SPEC, block_size=16)
  with pytest.warns(RuntimeWarning, match=r"experts \[1, 3\] received fewer than 16 .*\[3, 0\]"):
    qa, loss, extra = solve_experts(method, w, _stats(x, gs), "moe/gate", 16, "rtn")
  assert qa.shape == (e, k, n) and np.isfinite(loss)
  assert [d["tokens"] for d in extra["experts"]] == gs.tolist()
  assert [d["done"] for d in extra["experts"]] == ["solved", "rtn (starved)", "solved", "rtn (starved)"]
  wd = np.asarray(jq.dequantize(qa))
  assert np.all(np.isfinite(wd))
  for i in (1, 3):                                               # starved: exactly RTN of the expert's weight
    np.testing.assert_array_equal(wd[i], np.asarray(jq.dequantize(jq.quantize(w[i], SPEC))))
  start = 0
  for i, cnt in enumerate(gs):                                   # solved ones: the expert's own GPTQ solve
    if i in (0, 2):
      xe = x[start:start + cnt]
      q1, _ = jq.solvers.gptq(w[i], jnp.asarray(xe.T @ xe), SPEC, block_size=16)
      d1 = np.asarray(jq.dequantize(q1))
      step = float(np.max(np.asarray(q1.scale)))
      assert np.mean(np.abs(d1 - wd[i]) > 1e-5) < 0.01 and np.max(np.abs(d1 - wd[i])) <= step * 1.001
    start += cnt


def _moe_setup(seed):
  rng = np.random.default_rng(seed)
  model = TinyMixtral()
  ids = [jnp.asarray(rng.integers(0, 64, size=(4, 16)), jnp.int32) for _ in range(2)]
  params = starve(model.init(jax.random.key(seed), ids[0])["params"], experts=(6, 7))
  params = starve(params, experts=(5,), bias=-2.5)               # 5: a few tokens; 6 and 7: none
  return model, params, ids


@pytest.mark.slow
@pytest.mark.parametrize("fallback", ["rtn", "all_tokens"])
def test_mixtral_gptq_starved_experts(fallback, rng):
  model, params, ids = _moe_setup(int(rng.integers(1 << 30)))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    q, rep = jq.ptq.quantize_model(model, params, ids, jq.ptq.GPTQ(SPEC, act_order=True), progress=False,
                                   moe_min_tokens=16, moe_fallback=fallback)
  starved_msgs = [str(c.message) for c in caught if "calibration tokens" in str(c.message)]
  assert len(starved_msgs) == 6                                  # gate, up, down of both layers
  for name in ("layers_0", "layers_1"):
    for p in ("gate", "up", "down"):
      qa = q[name][p]["kernel"]
      assert isinstance(qa, jq.QArray) and qa.shape[0] == 8      # every expert quantized, one stacked QArray
      assert np.all(np.isfinite(np.asarray(jq.dequantize(qa))))
      entry = rep[f"{name}/{p}"]
      toks = [d["tokens"] for d in entry.extra["experts"]]
      assert toks[6] == 0 and toks[7] == 0 and min(toks[:5]) >= 16
      assert all(d["done"] != "solved" for d in entry.extra["experts"] if d["tokens"] < 16)
      assert np.isfinite(entry.sqnr_db)
  assert "6:0" in str(rep) and "starved" in str(rep)
  run = jq.ptq.runtime_model(model)
  out = jax.jit(run.apply)({"params": q}, ids[0])
  ref = model.apply({"params": jq.dequantize_params(q)}, ids[0])
  assert np.all(np.isfinite(np.asarray(out)))
  assert float(jnp.max(jnp.abs(out - ref))) <= 1e-3 * max(1.0, float(jnp.max(jnp.abs(ref))))


@pytest.mark.slow
def test_moe_option_and_method_errors(rng):
  model, params, ids = _moe_setup(int(rng.integers(1 << 30)))
  with pytest.raises(ValueError, match="moe_fallback"):
    jq.ptq.quantize_model(model, params, ids, jq.ptq.GPTQ(SPEC), progress=False, moe_fallback="skip")
  with pytest.raises(NotImplementedError, match="experts"):
    jq.ptq.quantize_model(model, params, ids, jq.ptq.AWQ(SPEC), progress=False)
