"""`python -m jquant report` internals: the layer table against NumPy float64, the 8-bit suggestion's greedy rule."""

import jax.numpy as jnp
import numpy as np

import jquant as jq
from jquant.cli import report


def _np_dequant(qa):
  """NumPy dequantization from the stored fields (8-bit storage only: no packing), float64."""
  q = np.asarray(qa.qvalue, np.float64)
  s = np.asarray(qa.scale, np.float64)
  z = np.zeros_like(s) if qa.zero_point is None else np.asarray(qa.zero_point, np.float64)
  rep = q.shape[0] // s.shape[0]                     # groups along the input axis (1 row of scales = per channel)
  return (q - np.repeat(z, rep, axis=0)) * np.repeat(s, rep, axis=0)


def _sqnr(a, b):
  return 10 * np.log10(np.sum(a ** 2) / np.sum((a - b) ** 2))


def test_layer_table_matches_numpy(rng):
  params = {"blk": {"a": {"kernel": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)},
                    "b": {"kernel": jnp.asarray(rng.standard_t(3, (32, 48)), jnp.float32)},
                    "c": {"kernel": jnp.asarray(rng.standard_normal((48, 16)) * 3, jnp.float32)}}}
  cfg = jq.QuantConfig(rules=[
      jq.QuantRule(r"blk/a/kernel", jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerGroup(axis=0, size=16),
                                                 symmetric=False)),
      jq.QuantRule(r"blk/b/kernel", jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))),
      jq.QuantRule(r"blk/c/kernel", jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor()))])
  qparams = jq.quantize_params(params, cfg)
  inputs = {"blk/a": rng.standard_normal((20, 64)).astype(np.float32),
            "blk/b": (rng.standard_normal((20, 32)) * np.exp(rng.normal(0, 1, 32))).astype(np.float32)}
  rows = report.layer_table(params, qparams, inputs)
  assert sorted(r["layer"] for r in rows) == ["blk/a", "blk/b", "blk/c"]
  for r in rows:
    name = r["layer"].split("/")[1]
    w = np.asarray(params["blk"][name]["kernel"], np.float64)
    qa = qparams["blk"][name]["kernel"]
    wq = _np_dequant(qa)
    assert r["qtype"] == qa.qtype.name and r["bytes"] == qa.nbytes and r["bytes_fp32"] == 4 * w.size
    # float32 SQNR of a ~40 dB signal: relative error of the noise energy ~1e-5 -> well under 1e-3 dB
    assert abs(r["weight_sqnr_db"] - _sqnr(w, wq)) < 1e-3, (r, _sqnr(w, wq))
    if r["layer"] in inputs:
      x = inputs[r["layer"]].astype(np.float64)
      assert abs(r["output_sqnr_db"] - _sqnr(x @ w, x @ wq)) < 1e-2, (r, _sqnr(x @ w, x @ wq))
    else:
      assert "output_sqnr_db" not in r
  keys = [r.get("output_sqnr_db", r["weight_sqnr_db"]) for r in rows]
  assert keys == sorted(keys)                                 # worst first


def _rows(rng, n):
  rows = []
  for i in range(n):
    numel = int(rng.integers(1, 64)) * 1024
    rows.append({"layer": f"l{i}", "bytes": numel // 2 + numel // 32, "bytes_fp32": 4 * numel,
                 "output_sqnr_db": float(rng.uniform(5, 40)), "weight_sqnr_db": 0.0})
  return sorted(rows, key=lambda r: r["output_sqnr_db"])


def test_suggest_8bit_upgrades_worst_first_and_never_exceeds_the_budget(rng):
  for _ in range(200):
    rows = _rows(rng, int(rng.integers(1, 12)))
    total = sum(r["bytes"] for r in rows)
    int8 = {r["layer"]: r["bytes_fp32"] // 4 for r in rows}     # ~1 byte per weight at 8 bit
    budget = total + float(rng.uniform(-0.1, 1.0)) * sum(int8[r["layer"]] - r["bytes"] for r in rows)
    keep = report.suggest_8bit(rows, budget)
    after = total + sum(int8[k] - next(r["bytes"] for r in rows if r["layer"] == k) for k in keep)
    if total > budget:                                            # already over: nothing to upgrade
      assert keep == []
      continue
    assert after <= budget                                        # never over the budget
    order = [r["layer"] for r in rows]
    assert keep == sorted(keep, key=order.index)                  # in worst-first order
    # greedy: every layer left out did not fit when its turn came (worse layers had already been upgraded)
    used = total
    for r in rows:
      extra = int8[r["layer"]] - r["bytes"]
      if r["layer"] in keep:
        used += extra
      else:
        assert used + extra > budget, (r, used, budget)
    if rows and total + int8[rows[0]["layer"]] - rows[0]["bytes"] <= budget:
      assert keep[0] == rows[0]["layer"]                          # the worst layer first whenever it fits
  assert report.suggest_8bit(_rows(rng, 3), 0.0) == []
