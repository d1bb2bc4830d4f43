"""quantize_params on a real Flax transformer tree: mixed rules, report, stacked weights, jit, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from tests.params.model import init_params

W4G = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=64), symmetric=False)
W8C = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
CFG = jq.QuantConfig(rules=[jq.QuantRule(r".*/(q|k|v|o)_proj/kernel", W4G), jq.QuantRule(r".*kernel|experts", W8C)],
                     skip=[r"embed/.*", r".*norm.*", r".*bias"])


def _params(rng):
  return init_params(seed=int(rng.integers(0, 2**31 - 1)))


def test_mixed_rules_report(rng):
  model, params = _params(rng)
  qparams, report = jq.quantize_params(params, CFG, return_report=True)
  assert jq.last_report() is report
  q = {e.path: e for e in report.quantized}
  for i in range(2):
    for n in "qkvo":
      assert q[f"layers_{i}/{n}_proj/kernel"].rule == 0
      assert isinstance(qparams[f"layers_{i}"][f"{n}_proj"]["kernel"], jq.QArray)
      assert qparams[f"layers_{i}"][f"{n}_proj"]["kernel"].scale.shape == (2, 128)
    assert q[f"layers_{i}/up_proj/kernel"].rule == 1
  assert q["lm_head/kernel"].rule == 1
  skipped = {e.path for e in report.skipped}
  assert "embed/embedding" in skipped and "final_norm/scale" in skipped and "layers_0/q_proj/bias" in skipped
  assert not report.unmatched and not report.unused_rules
  assert report.bytes_after < report.bytes_before / 2.5
  text = str(report)
  assert "layers_0/q_proj/kernel" in text and "quantized" in text
  # dequantize_params restores every float leaf and approximates the quantized ones
  deq = jq.dequantize_params(qparams)
  chex.assert_trees_all_equal_shapes_and_dtypes(deq, params)
  w, wq = params["layers_1"]["up_proj"]["kernel"], deq["layers_1"]["up_proj"]["kernel"]
  assert float(jq.sqnr(w, wq)) > 35.0
  np.testing.assert_array_equal(np.asarray(deq["embed"]["embedding"]), np.asarray(params["embed"]["embedding"]))


def test_stacked_experts_get_per_expert_scales(rng):
  _, params = _params(rng)
  qparams = jq.quantize_params(params, CFG)
  qa = qparams["experts"]
  assert qa.scale.shape == (4, 1, 128)          # one scale per (expert, output channel)
  w = np.asarray(params["experts"])
  for e in range(4):
    want = jq.quantize(jnp.asarray(w[e]), W8C)
    np.testing.assert_array_equal(np.asarray(qa.qvalue[e]), np.asarray(want.qvalue))
  group_cfg = jq.QuantConfig(rules=[jq.QuantRule("experts", W4G)])
  qg = jq.quantize_params(params, group_cfg)["experts"]
  assert qg.scale.shape == (4, 2, 128)          # groups along each expert's input axis
  assert "batch_axes=(0,)" in jq.last_report().quantized[0].detail


def test_jit_traces_once_and_matches_eager(rng):
  _, params = _params(rng)
  chex.clear_trace_counter()
  f = jax.jit(chex.assert_max_traces(lambda p: jq.quantize_params(p, CFG), n=1))
  a = f(params)
  params2 = jax.tree.map(lambda x: x * 1.5, params)
  f(params2)
  b = jq.quantize_params(params, CFG)
  chex.assert_trees_all_equal(jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype != jnp.float32 else x, a),
                              jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype != jnp.float32 else x, b))


def test_nnx_state(rng):
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.fc1 = nnx.Linear(64, 128, rngs=rngs)
      self.norm = nnx.LayerNorm(128, rngs=rngs)
      self.fc2 = nnx.Linear(128, 32, rngs=rngs)

  net = Net(nnx.Rngs(int(rng.integers(0, 1000))))
  state = nnx.state(net, nnx.Param)
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r"fc\d/kernel", W8C)], skip=[r".*norm.*", r".*bias"])
  qstate, report = jq.quantize_params(state, cfg, return_report=True)
  assert {e.path for e in report.quantized} == {"fc1/kernel", "fc2/kernel"}
  assert isinstance(qstate["fc1"]["kernel"].get_value(), jq.QArray)
  floats = {n: np.asarray(state[n]["kernel"].get_value(), np.float64) for n in ("fc1", "fc2")}
  deq = jq.dequantize_params(qstate)
  x = jnp.asarray(rng.standard_normal((3, 64)), jnp.float32)
  nnx.update(net, deq)
  eps = float(np.finfo(np.float32).eps)
  for name, inp in (("fc1", x), ("fc2", jnp.asarray(rng.standard_normal((3, 128)), jnp.float32))):
    qa = qstate[name]["kernel"].get_value()
    w = floats[name]
    # NumPy oracle of the stored grid: symmetric INT8, one scale per output column = absmax / 127
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    np.testing.assert_allclose(np.asarray(qa.scale, np.float64).reshape(scale.shape), scale, rtol=1e-6)
    codes = np.asarray(qa.qvalue, np.int64)
    assert np.abs(codes - np.round(w / scale)).max() <= 1            # at most a float32 tie apart ...
    assert np.mean(codes != np.round(w / scale)) < 1e-3               # ... and rarely
    w_deq = codes * np.asarray(qa.scale, np.float64).reshape(scale.shape)
    b = np.asarray(state[name]["bias"].get_value(), np.float64)
    y = np.asarray(getattr(net, name)(inp), np.float64)
    xin = np.asarray(inp, np.float64)
    want = xin @ w_deq + b
    # float32 matmul over K terms: |error| <= K eps sum|x||w| (+ the bias add)
    tol = w.shape[0] * eps * (np.abs(xin) @ np.abs(w_deq) + np.abs(b))
    assert y.shape == want.shape and np.all(np.abs(y - want) <= tol), float(np.max(np.abs(y - want) / tol))
    assert np.max(np.abs(y - (xin @ w + b))) > 10 * np.max(tol)       # the net runs the quantized weight


def test_errors_and_unused_rules(rng):
  _, params = _params(rng)
  with pytest.raises(ValueError, match="no rules"):
    jq.QuantConfig(rules=[])
  with pytest.raises(ValueError, match="not a valid regex"):
    jq.QuantRule("(unclosed", W8C)
  with pytest.raises(TypeError, match="QuantConfig"):
    jq.quantize_params(params, [jq.QuantRule(".*", W8C)])
  unused = jq.QuantConfig(rules=[jq.QuantRule(r"nothing/here", W8C), jq.QuantRule(r".*kernel", W8C)])
  with pytest.warns(UserWarning, match="matched no parameter"):
    jq.quantize_params(params, unused)
  with pytest.raises(ValueError, match=r"nothing/here.*matched no parameter"):
    jq.quantize_params(params, unused, strict=True)
  bad_group = jq.QuantConfig(rules=[jq.QuantRule(r".*up_proj/kernel",
                                                 W4G.replace(granularity=jq.PerGroup(axis=0, size=96)))])
  with pytest.raises(ValueError, match=r"up_proj/kernel.*multiple of 96"):
    jq.quantize_params(params, bad_group)
  _, report = jq.quantize_params(params, bad_group, skip_unsupported=True, return_report=True)
  assert len(report.unsupported) == 2 and "multiple of 96" in report.unsupported[0].detail
  nan_params = jax.tree.map(lambda x: x, params)
  nan_params["lm_head"]["kernel"] = nan_params["lm_head"]["kernel"].at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match=r"lm_head/kernel.*NaN/inf"):
    jq.quantize_params(nan_params, CFG)


def test_rule_with_none_spec_keeps_float_and_reports(rng):
  _, params = _params(rng)
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r"lm_head/kernel", None), jq.QuantRule(r".*_proj/kernel", W8C)])
  qparams, report = jq.quantize_params(params, cfg, return_report=True)
  assert [e.path for e in report.kept] == ["lm_head/kernel"]
  assert not isinstance(qparams["lm_head"]["kernel"], jq.QArray)
  assert "embed/embedding" in {e.path for e in report.unmatched}
