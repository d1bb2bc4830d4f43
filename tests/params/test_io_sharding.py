"""Checkpoints (safetensors, orbax) round-trip bit-exactly; sharded weights stay sharded."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from tests.params.model import init_params

SPECS = [
    jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=32), symmetric=False),
    jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=32), scale_dtype="bfloat16"),
    jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)),
    jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=jq.PerChannel(axis=-1)),
    jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=64), double_quant=True),
    jq.QuantSpec(qtype=jq.INT2, granularity=jq.PerGroup(axis=0, size=32), symmetric=False),
    jq.QuantSpec(qtype=jq.INT3, granularity=jq.PerTensor(), calibration=jq.MSE(grid=10)),
]


def _tree(rng):
  _, params = init_params(seed=int(rng.integers(0, 2**31 - 1)), d=64, layers=1)
  rules = [jq.QuantRule(rf"layers_0/{n}/kernel", s) for n, s in
           zip(["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"], SPECS)]
  rules[-1] = jq.QuantRule(r"lm_head/kernel", SPECS[-1])
  cfg = jq.QuantConfig(rules=rules + [jq.QuantRule("experts", SPECS[0])])
  q = jq.quantize_params(params, cfg)
  # an act-order style QArray with g_idx
  w = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  qa = jq.quantize(w, SPECS[0])
  q["act_order"] = jq.QArray(qa.qvalue, qa.scale, qa.zero_point, jnp.asarray(rng.permutation(64) // 32, jnp.int32),
                             qa.qtype, qa.spec, qa.dtype)
  q["bf16"] = jnp.asarray(rng.standard_normal((5, 3)), jnp.bfloat16)
  return q


def _assert_bit_exact(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, f"{ta} != {tb}"
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8), np.atleast_1d(np.asarray(y)).view(np.uint8))


def test_safetensors_round_trip_bit_exact(rng, tmp_path):
  q = _tree(rng)
  jq.io.save_safetensors(tmp_path / "q.safetensors", q)
  back = jq.io.load_safetensors(tmp_path / "q.safetensors")
  _assert_bit_exact(q, back)
  np.testing.assert_array_equal(np.asarray(jq.dequantize(back["act_order"])), np.asarray(jq.dequantize(q["act_order"])))


def test_orbax_round_trip_bit_exact(rng, tmp_path):
  q = _tree(rng)
  jq.io.save_orbax(tmp_path / "ckpt", q)
  back = jq.io.load_orbax(tmp_path / "ckpt")
  _assert_bit_exact(q, back)


def test_load_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    jq.io.load_safetensors(tmp_path / "missing.safetensors")
  with pytest.raises(ValueError, match="not a directory"):
    jq.io.load_orbax(tmp_path / "missing")


_SHARD_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jquant as jq
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    w = jax.device_put(jax.random.normal(jax.random.key(0), (256, 512)), NamedSharding(mesh, P("data", "model")))
    spec = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=64), symmetric=False)
    cfg = jq.QuantConfig(rules=[jq.QuantRule("w", spec), jq.QuantRule("c", jq.QuantSpec(qtype=jq.INT8))])
    c = jax.device_put(jax.random.normal(jax.random.key(1), (256, 512)), NamedSharding(mesh, P(None, "model")))
    q = jq.quantize_params({"w": w, "c": c}, cfg)
    assert q["w"].qvalue.sharding.spec == P("data", "model"), q["w"].qvalue.sharding
    assert q["w"].scale.sharding.spec == P("data", "model"), q["w"].scale.sharding   # scale (4, 512)
    assert q["w"].zero_point.sharding.spec == P("data", "model")
    assert q["c"].scale.sharding.spec == P(None, "model"), q["c"].scale.sharding     # scale (1, 512)
    assert len(q["w"].qvalue.addressable_shards) == 4
    want = jq.dequantize(jq.quantize(jax.device_get(w), spec))
    np.testing.assert_array_equal(np.asarray(jq.dequantize(q["w"])), np.asarray(want))
    print("SHARDING_OK")
""")


def test_sharding_is_kept():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                     timeout=300)
  assert "SHARDING_OK" in r.stdout, r.stdout + r.stderr
