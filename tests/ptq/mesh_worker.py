"""Worker for tests/ptq/test_mesh.py: run in a subprocess with 8 virtual CPU devices (the test session already
initialised jax with one). ``python -m tests.ptq.mesh_worker CASE SEED`` prints one JSON line of results."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402

import jquant as jq  # noqa: E402
from jquant.core.qarray import QArray  # noqa: E402


class Block(nn.Module):
  d: int
  f: int

  @nn.compact
  def __call__(self, h):
    x = nn.RMSNorm(name="norm")(h)
    g = nn.Dense(self.f, use_bias=False, name="gate")(x)
    u = nn.Dense(self.f, use_bias=False, name="up")(x)
    return h + nn.Dense(self.d, use_bias=False, name="down")(nn.silu(g) * u)


class Tiny(nn.Module):
  vocab: int = 64
  d: int = 32
  f: int = 64
  n: int = 2

  @nn.compact
  def __call__(self, ids):
    h = nn.Embed(self.vocab, self.d, name="embed")(ids)
    for i in range(self.n):
      h = Block(self.d, self.f, name=f"layers_{i}")(h)
    return h


def mesh_2x4() -> Mesh:
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def tiny_setup(seed: int):
  rng = np.random.default_rng(seed)
  model = Tiny()
  ids = jnp.asarray(rng.integers(0, 64, size=(4, 16)), jnp.int32)
  params = model.init(jax.random.key(seed), ids)["params"]
  # outlier input channels, so AWQ / SmoothQuant scales are not flat
  params = jax.tree.map(lambda a: a, params)
  params["embed"]["embedding"] = params["embed"]["embedding"] * jnp.asarray(rng.uniform(0.2, 4.0, size=32),
                                                                            jnp.float32)
  batches = [jnp.asarray(rng.integers(0, 64, size=(4, 16)), jnp.int32) for _ in range(2)]
  return model, params, batches


def method_for(name: str):
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=16), symmetric=False)
  return {"gptq": jq.ptq.GPTQ(spec), "gptq_act": jq.ptq.GPTQ(spec, act_order=True),
          "awq": jq.ptq.AWQ(spec, grid=10), "smoothquant": jq.ptq.SmoothQuant(alpha=0.5)}[name]


def _leaves(tree):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda a: isinstance(a, QArray))[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if isinstance(leaf, QArray):
      for f in ("qvalue", "scale", "zero_point", "g_idx"):
        if getattr(leaf, f) is not None:
          out[f"{name}.{f}"] = getattr(leaf, f)
    else:
      out[name] = leaf
  return out


def compare(case: str, seed: int) -> dict:
  model, params, batches = tiny_setup(seed)
  method = method_for(case)
  q1, _ = jq.ptq.quantize_model(model, params, batches, method, progress=False)
  mesh = mesh_2x4()
  q8, _ = jq.ptq.quantize_model(model, params, batches, method, progress=False, mesh=mesh)
  a, b = _leaves(q1), _leaves(q8)
  res = {"keys_equal": sorted(a) == sorted(b), "exact": [], "max_rel": 0.0, "shardings": {}, "shard_bytes_ok": True}
  for k in a:
    x, y = np.asarray(a[k]), np.asarray(b[k])
    if np.array_equal(x, y):
      res["exact"].append(k)
    else:
      xf, yf = x.astype(np.float64), y.astype(np.float64)
      res["max_rel"] = max(res["max_rel"], float(np.max(np.abs(xf - yf)) / max(np.max(np.abs(xf)), 1e-30)))
    s = getattr(b[k], "sharding", None)
    if k.endswith(".qvalue") or k.endswith(".scale"):
      spec = tuple(s.spec) if isinstance(s, NamedSharding) else None
      res["shardings"][k] = str(spec)
      n_model = mesh.shape["model"]
      for sh in b[k].addressable_shards:            # each device: its N-slice only
        if sh.data.nbytes * n_model != b[k].nbytes:
          res["shard_bytes_ok"] = False
  res["n"] = len(a)
  return res


def capture_memory(seed: int, shape=(2, 4)) -> dict:
  """Per-device bytes of one block's statistics, kernels and inputs while calibrating on a (data, model) mesh."""
  from jquant.ptq.capture import capture_block  # pylint: disable=import-outside-toplevel
  from jquant.ptq.distributed import shard_batches, shard_params  # pylint: disable=import-outside-toplevel
  from jquant.ptq.linen_model import LinenModel  # pylint: disable=import-outside-toplevel
  model, params, batches = tiny_setup(seed)
  mesh = Mesh(np.array(jax.devices()[:shape[0] * shape[1]]).reshape(shape), ("data", "model"))
  batches = shard_batches(batches, mesh)
  lm = LinenModel(model, params, batches[0])
  sp = shard_params(params, mesh)
  lm.bind_params(sp)
  h, ctx = lm.embed(sp, batches[0])
  bp = lm.get_block(sp, lm.block_names()[0])
  _, stats = capture_block(lm, 0, bp, [h], [ctx], ["gate", "down"])
  dev = {}
  for arr in (stats["gate"].gram, stats["down"].gram, *jax.tree.leaves(bp), h):
    for sh in arr.addressable_shards:
      dev[str(sh.device)] = dev.get(str(sh.device), 0) + int(sh.data.nbytes)
  return {"max_device_bytes": max(dev.values()), "total_bytes": sum(int(a.nbytes) for a in
          (stats["gate"].gram, stats["down"].gram, *jax.tree.leaves(bp), h)),"gram_gate": [int(s.data.nbytes) for s in stats["gate"].gram.addressable_shards],
          "kernel_gate": [int(s.data.nbytes) for s in bp["gate"]["kernel"].addressable_shards],
          "hidden": [int(s.data.nbytes) for s in h.addressable_shards],
          "hidden_total": int(h.nbytes), "kernel_total": int(bp["gate"]["kernel"].nbytes),
          "gram_total": int(stats["gate"].gram.nbytes), "n_devices": len(dev)}


def solver(seed: int) -> dict:
  """jq.solvers.gptq on a kernel sharded over N (4 model shards) vs the same solve on one device."""
  rng = np.random.default_rng(seed)
  k, n = 64, 128
  w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
  x = rng.normal(size=(256, k)) * rng.uniform(0.1, 3.0, size=k)
  h = jnp.asarray(x.T @ x, jnp.float32)
  spec = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=16), symmetric=False)
  mesh = mesh_2x4()
  ws = jax.device_put(w, NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model")))
  out = {}
  for act in (True,):                 # act-order: the permutation over K is shared by the shards
    qa, la = jq.solvers.gptq(w, h, spec, act_order=act, block_size=32)
    qs, ls = jq.solvers.gptq(ws, h, spec, act_order=act, block_size=32)
    la, ls = np.asarray(la, np.float64), np.asarray(ls, np.float64)
    out[f"act{int(act)}"] = {
        "exact": [f for f in ("qvalue", "scale", "zero_point", "g_idx") if getattr(qa, f) is not None
                  and np.array_equal(np.asarray(getattr(qa, f)), np.asarray(getattr(qs, f)))],
        "loss_rel": float(np.max(np.abs(la - ls)) / np.max(np.abs(la))),
        "sharding": str(tuple(qs.qvalue.sharding.spec)),
        "shard_shapes": sorted({tuple(sh.data.shape) for sh in qs.qvalue.addressable_shards})}
  return out


CASES = {"memory": capture_memory, "solver": solver}


if __name__ == "__main__":
  seed = int(sys.argv[2])
  out = {c: (CASES[c](seed) if c in CASES else compare(c, seed)) for c in sys.argv[1].split(",")}
  print("RESULT " + json.dumps(out))
