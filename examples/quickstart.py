"""Quick start: quantize a Flax model's params with ordered rules, read the report, measure the damage."""

import flax.linen as nn
import jax
import jax.numpy as jnp

import jquant as jq

model = nn.Sequential([nn.Dense(512), nn.relu, nn.Dense(512), nn.relu, nn.Dense(10)])
params = model.init(jax.random.key(0), jnp.ones((1, 256)))["params"]
w4 = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=128), symmetric=False)
w8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
cfg = jq.QuantConfig(rules=[jq.QuantRule(r"layers_[02]/kernel", w4), jq.QuantRule(r".*/kernel", w8)],
                     skip=[r".*/bias"])
qparams, report = jq.quantize_params(params, cfg, return_report=True)
print(report)
x = jax.random.normal(jax.random.key(1), (64, 256))
y, yq = model.apply({"params": params}, x), model.apply({"params": jq.dequantize_params(qparams)}, x)
print(f"output SQNR: {float(jq.sqnr(y, yq)):.1f} dB")
jq.io.save_safetensors("/tmp/quickstart_q.safetensors", qparams)           # bit-exact, no pickle
