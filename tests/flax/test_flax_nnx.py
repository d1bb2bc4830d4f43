"""NNX: QuantLinear / QuantEinsum / QuantConv numerics, static ranges train vs eval, LSQ, convert_model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jquant as jq
from jquant import qat
from jquant.flax import nnx as jqx

W4 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=-1))
W4_ASYM = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
A8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())
A8_FEAT = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))


def _x(rng, shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def test_linear_matches_fake_quant_reference(rng):
  layer = jqx.QuantLinear(16, 8, weight_spec=W4_ASYM, act_spec=A8, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  x = _x(rng, (2, 3, 16))
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  k = layer.kernel[...]
  want = qat.fake_quant(x, A8) @ qat.fake_quant(k, W4_ASYM) + layer.bias[...]
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  plain = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
  paths = lambda m: {qat.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(m, nnx.Param))[0]}
  assert paths(plain) == paths(layer)


def test_static_range_updates_in_train_and_freezes_in_eval(rng):
  layer = jqx.QuantLinear(16, 8, weight_spec=W4, act_spec=A8_FEAT, act_mode="static", ema_decay=0.5,
                          rngs=nnx.Rngs(0))
  x1, x2 = _x(rng, (4, 16)), 2.0 * _x(rng, (4, 16))
  call = nnx.jit(lambda m, x: m(x))
  call(layer, x1)
  call(layer, x2)
  want_hi = 0.5 * np.abs(np.asarray(x1)).max(0) + 0.5 * np.abs(np.asarray(x2)).max(0)
  np.testing.assert_allclose(np.asarray(layer.act_hi[...]), want_hi, rtol=1e-6)
  assert int(layer.act_count[...]) == 2
  layer.eval()
  x3 = _x(rng, (4, 16))
  y = call(layer, x3)
  assert int(layer.act_count[...]) == 2
  hi = layer.act_hi[...].reshape(1, 16)
  want = qat.fake_quant_with_range(x3, -hi, hi, A8_FEAT) @ qat.fake_quant(layer.kernel[...], W4) + layer.bias[...]
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)


def _train_steps(model, x, steps=3):
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x):
    loss = lambda m: jnp.mean(jnp.square(m(x).astype(jnp.float32)))
    l, grads = nnx.value_and_grad(loss)(model)
    opt.update(model, grads)
    return l, grads

  for _ in range(steps):
    _, grads = step(model, opt, x)
  return grads


LAYERS = {
    "linear": (lambda **q: jqx.QuantLinear(16, 8, **q), (2, 3, 16)),
    "einsum": (lambda **q: jqx.QuantEinsum("btk,kn->btn", (16, 8), (8,), **q), (2, 3, 16)),
    "conv": (lambda **q: jqx.QuantConv(16, 8, (3,), **q), (2, 5, 16)),
}


@pytest.mark.parametrize("layer, mode, spec", [("linear", "lsq", W4_ASYM), ("einsum", "dynamic", W4),
                                               ("conv", "lsq", W4), ("linear", "dynamic", W4)])
def test_train_then_convert_model_is_bit_exact(rng, layer, mode, spec):
  make, shape = LAYERS[layer]
  if layer == "conv" and not spec.symmetric:
    spec = spec.replace(granularity=jq.PerGroup(axis=1, size=8))
  m = make(weight_spec=spec, weight_mode=mode, act_spec=A8, act_mode="static", dtype=jnp.bfloat16,
           rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  x = _x(rng, shape)
  grads = _train_steps(m, x)
  if mode == "lsq":
    assert float(jnp.abs(grads["kernel_scale"][...]).sum()) > 0
  m.eval()
  call = nnx.jit(lambda m, x: m(x))
  y_fq = call(m, x)
  jqx.convert_model(m)
  assert isinstance(m.kernel.get_value(), jq.QArray)
  assert not hasattr(m, "kernel_scale")
  np.testing.assert_array_equal(np.asarray(call(m, x), np.float32), np.asarray(y_fq, np.float32))


@pytest.mark.parametrize("kwargs, exc", [
    (dict(weight_mode="learned"), ValueError),
    (dict(act_spec=jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()), act_mode="static"), ValueError),
    (dict(weight_spec=jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=8)), weight_mode="lsq"),
     ValueError),
    (dict(act_spec="int8"), TypeError),
])
def test_bad_input(kwargs, exc):
  with pytest.raises(exc):
    jqx.QuantLinear(16, 8, rngs=nnx.Rngs(0), **kwargs)


def test_bad_input_einsum_static_per_channel_and_convert():
  with pytest.raises(ValueError, match="PerTensor"):
    jqx.QuantEinsum("bk,kn->bn", (16, 8), act_spec=A8_FEAT, act_mode="static", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="nnx.Module"):
    jqx.convert_model({"kernel": jnp.ones((2, 2))})
