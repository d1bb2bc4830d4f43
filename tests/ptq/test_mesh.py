"""Calibration and solvers over a 2 (data) x 4 (model) mesh of 8 virtual CPU devices, in a subprocess (this session
already initialised jax with one device): the sharded runs give the unsharded qparams, the quantized kernels keep
their N-sharding and no device holds more than its slice of a kernel plus the (K, K) statistics it needs."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cases: str, seed: int) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "tests.ptq.mesh_worker", cases, str(seed)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_sharded_gptq_solver_equals_unsharded(rng):
  res = _run("solver", int(rng.integers(1 << 30)))["solver"]
  r = res["act1"]
  assert r["exact"] == ["qvalue", "scale", "zero_point", "g_idx"], r    # bit-identical
  assert r["loss_rel"] <= 1e-5, r                        # the per-weight losses (diagnostics) to float32 rounding
  assert r["sharding"] == "(None, 'model')", r
  assert r["shard_shapes"] == [[64, 32]], r              # each device: K x N/4 codes only


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gptq", "gptq_act", "awq", "smoothquant"])
def test_sharded_pipeline_equals_unsharded(case, rng):
  r = _run(case, int(rng.integers(1 << 30)))[case]
  assert r["keys_equal"] and r["n"] >= 15, r
  codes = [k for k in r["exact"] if k.endswith(".qvalue")]
  assert len(codes) == 6, r                              # every kernel's codes bit-identical
  assert r["max_rel"] <= 1e-6, r                        # anything else (AWQ scales: loss sums reordered) <= 1e-6
  assert set(r["shardings"].values()) == {"(None, 'model')"}, r
  assert r["shard_bytes_ok"], r


@pytest.mark.slow
def test_sharded_capture_memory_per_device(rng):
  r = _run("memory", int(rng.integers(1 << 30)))["memory"]
  assert r["n_devices"] == 8
  assert r["kernel_gate"] == [r["kernel_total"] // 4] * 8      # a quarter of the kernel (4 model shards)
  assert r["hidden"] == [r["hidden_total"] // 2] * 8           # half the batch (2 data shards)
  assert r["gram_gate"] == [r["gram_total"]] * 8               # the reduced (K, K) statistics, once per device
