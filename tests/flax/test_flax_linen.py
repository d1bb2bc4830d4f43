"""Linen: dot_general factory, Quant* wrappers (dynamic / LSQ / static EMA), fake_quant_model, convert bit-exactness."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant import qat
from jquant.flax import linen as jql
from jquant.rules import QuantConfig, QuantRule

W4 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=-1))
W4_ASYM_G8 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
A8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())
A8_TOKEN = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())


def _x(rng, shape=(2, 3, 16)):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _fq64(x, spec):
  """float64 reference of fake_quant for symmetric per-channel/-tensor/-token specs."""
  x = np.asarray(x, np.float64)
  block = spec.granularity.block_shape(x.shape)
  axes = tuple(i for i, b in enumerate(block) if b > 1)
  s = np.abs(x).max(axis=axes, keepdims=True) / spec.qtype.qmax
  s = np.where(s > 0, s, 1.0)
  return np.clip(np.round(x / s), spec.qtype.qmin, spec.qtype.qmax) * s


def test_dot_general_factory_matches_reference(rng):
  x = _x(rng)
  dense = nn.Dense(8, dot_general=jql.fake_quant_dot_general(lhs_spec=A8_TOKEN, rhs_spec=W4))
  v = dense.init(jax.random.key(0), x)
  y = jax.jit(dense.apply)(v, x)
  k = v["params"]["kernel"]
  want = _fq64(x, A8_TOKEN) @ _fq64(k, W4) + np.asarray(v["params"]["bias"], np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-4, atol=1e-4)


def test_conv_and_einsum_factories(rng):
  x = _x(rng, (2, 6, 6, 4))
  conv = nn.Conv(5, (3, 3), conv_general_dilated=jql.fake_quant_conv(rhs_spec=W4))
  v = conv.init(jax.random.key(0), x)
  y = jax.jit(conv.apply)(v, x)
  fq_params = {"params": {**v["params"], "kernel": qat.fake_quant(v["params"]["kernel"], W4)}}
  want = jax.jit(nn.Conv(5, (3, 3)).apply)(fq_params, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  ein = jql.fake_quant_einsum(lhs_spec=A8, rhs_spec=W4)
  a, b = _x(rng, (3, 4)), _x(rng, (4, 5))
  got = jax.jit(ein, static_argnums=0)("ij,jk->ik", a, b)
  np.testing.assert_allclose(np.asarray(got), _fq64(a, A8) @ _fq64(b, W4), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quant_dense_same_params_and_numerics_as_dense(rng, dtype):
  x = _x(rng)
  qd = jql.QuantDense(8, weight_spec=W4, act_spec=A8_TOKEN, dtype=dtype)
  v = qd.init(jax.random.key(0), x)
  plain = nn.Dense(8, dtype=dtype)
  assert jax.tree.structure(v) == jax.tree.structure(plain.init(jax.random.key(0), x))
  y = qd.apply(v, x)
  fq_params = {"params": {**v["params"], "kernel": qat.fake_quant(v["params"]["kernel"], W4)}}
  want = nn.Dense(8, dtype=dtype, dot_general=jql.fake_quant_dot_general(lhs_spec=A8_TOKEN)).apply(fq_params, x)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


def test_quant_dense_kernel_gradient_is_clipped_ste(rng):
  x = _x(rng)
  qd = jql.QuantDense(8, weight_spec=W4_ASYM_G8)
  v = qd.init(jax.random.key(0), x)
  g = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(g * qd.apply({"params": p}, x))))(v["params"])
  k = v["params"]["kernel"]
  _, vjp = jax.vjp(lambda k: qat.fake_quant(k, W4_ASYM_G8), k)
  dk_full = jnp.einsum("btk,btn->kn", x, g)
  np.testing.assert_allclose(np.asarray(grads["kernel"]), np.asarray(vjp(dk_full)[0]), rtol=1e-5, atol=1e-5)


def test_static_activation_ema_train_then_eval(rng):
  decay = 0.9
  qd = jql.QuantDense(8, weight_spec=W4, act_spec=A8, act_mode="static", ema_decay=decay)
  x1, x2, x3 = _x(rng), 3.0 * _x(rng), _x(rng)
  v = qd.init(jax.random.key(0), x1)
  assert int(v["quant_stats"]["act_count"]) == 0
  train = jax.jit(lambda v, x: qd.apply(v, x, mutable=["quant_stats"]))
  _, upd = train(v, x1)
  v = {**v, **upd}
  _, upd = train(v, x2)
  v = {**v, **upd}
  m1, m2 = float(jnp.abs(x1).max()), float(jnp.abs(x2).max())
  np.testing.assert_allclose(float(v["quant_stats"]["act_hi"].squeeze()), decay * m1 + (1 - decay) * m2, rtol=1e-6)
  assert int(v["quant_stats"]["act_count"]) == 2
  # Eval: stats are read only, and the range is the tracked one (not x3's own).
  y = qd.apply(v, x3)
  hi = v["quant_stats"]["act_hi"]
  xq = qat.fake_quant_with_range(x3, -hi, hi, A8)
  want = xq @ qat.fake_quant(v["params"]["kernel"], W4) + v["params"]["bias"]
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)


LAYERS = {
    "dense": (lambda **q: jql.QuantDense(8, **q), (2, 3, 16)),
    "dense_general": (lambda **q: jql.QuantDenseGeneral((2, 4), **q), (2, 3, 16)),
    "einsum": (lambda **q: jql.QuantEinsum((16, 8), "btk,kn->btn", **q), (2, 3, 16)),
    "conv": (lambda **q: jql.QuantConv(8, (3,), **q), (2, 5, 16)),
}


@pytest.mark.parametrize("layer, mode, spec", [
    ("dense", "dynamic", W4), ("dense", "lsq", W4_ASYM_G8), ("dense_general", "lsq", W4),
    ("einsum", "lsq", W4_ASYM_G8), ("conv", "dynamic", W4), ("conv", "lsq", W4_ASYM_G8)])
def test_convert_gives_identical_eval_numerics(rng, layer, mode, spec):
  make, shape = LAYERS[layer]
  if layer == "conv":
    spec = spec.replace(granularity=jq.PerChannel(axis=-1)) if spec.symmetric else spec.replace(
        granularity=jq.PerGroup(axis=1, size=8))
  mod = make(weight_spec=spec, weight_mode=mode, act_spec=A8, act_mode="static", dtype=jnp.bfloat16)
  x = _x(rng, shape)
  v = jax.jit(mod.init)(jax.random.key(0), x)
  _, stats = jax.jit(lambda v, x: mod.apply(v, x, mutable=["quant_stats"]))(v, x)
  v = {**v, **stats}
  if mode == "lsq":
    assert "kernel_scale" in v["params"]
    grads = jax.jit(jax.grad(lambda p: jnp.sum(mod.apply({**v, "params": p}, x).astype(jnp.float32) ** 2)))(
        v["params"])
    assert float(jnp.abs(grads["kernel_scale"]).sum()) > 0
  evaluate = jax.jit(mod.apply)
  y_fq = evaluate(v, x)
  specs = {"kernel": spec}
  int_params = qat.convert(v["params"], specs)
  assert isinstance(int_params["kernel"], jq.QArray) and "kernel_scale" not in int_params
  y_int = evaluate({**v, "params": int_params}, x)
  np.testing.assert_array_equal(np.asarray(y_int, np.float32), np.asarray(y_fq, np.float32))


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(16, name="up")(x))
    return nn.Dense(8, name="down")(h)


class _Model(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16, name="embed_proj")(x)
    x = _Block(name="block")(x)
    return nn.Dense(4, name="head")(x)


def test_fake_quant_model_on_unmodified_model(rng):
  cfg = QuantConfig(rules=[QuantRule(r"block/up/kernel", W4_ASYM_G8), QuantRule(r".*/kernel", W4)],
                    skip=[r"embed.*", r"head/.*"])
  model = _Model()
  qmodel = jql.fake_quant_model(model, cfg, act_spec=A8_TOKEN)
  x = _x(rng, (4, 16))
  v = jax.jit(qmodel.init)(jax.random.key(0), x)
  assert jax.tree.structure(v) == jax.tree.structure(model.init(jax.random.key(0), x))
  assert qmodel.weight_specs(v, x) == {"block/up/kernel": W4_ASYM_G8, "block/down/kernel": W4}
  p = v["params"]

  @jax.jit
  def reference(p, x):   # the same model with the matched layers' kernels and inputs fake-quantized by hand
    dense = lambda q, h, k, b: qat.fake_quant(h, A8_TOKEN) @ qat.fake_quant(k, q) + b
    h = x @ p["embed_proj"]["kernel"] + p["embed_proj"]["bias"]
    h = jax.nn.relu(dense(W4_ASYM_G8, h, p["block"]["up"]["kernel"], p["block"]["up"]["bias"]))
    h = dense(W4, h, p["block"]["down"]["kernel"], p["block"]["down"]["bias"])
    return h @ p["head"]["kernel"] + p["head"]["bias"]

  want = reference(p, x)
  y = jax.jit(qmodel.apply)(v, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(qmodel.apply({"params": p}, x) ** 2)))(p)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  int_params = qat.convert(p, cfg)
  assert isinstance(int_params["block"]["up"]["kernel"], jq.QArray)
  assert not isinstance(int_params["head"]["kernel"], jq.QArray)
  np.testing.assert_array_equal(np.asarray(jax.jit(qmodel.apply)({"params": int_params}, x)), np.asarray(y))


def test_fake_quant_model_traces_once(rng):
  cfg = QuantConfig(rules=[QuantRule(r".*/kernel", W4)])
  qmodel = jql.fake_quant_model(_Model(), cfg)
  x = _x(rng, (4, 16))
  v = qmodel.init(jax.random.key(0), x)
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(lambda v, x: qmodel.apply(v, x), n=1))
  for _ in range(3):
    step(v, _x(rng, (4, 16)))


def test_old_name_quantize_model_warns_and_still_works(rng):
  cfg = QuantConfig(rules=[QuantRule(r".*/kernel", W4)])
  with pytest.warns(DeprecationWarning, match=r"jq\.flax\.linen\.fake_quant_model"):
    old = jql.quantize_model(_Model(), cfg, act_spec=A8_TOKEN)
  assert old == jql.fake_quant_model(_Model(), cfg, act_spec=A8_TOKEN)
  x = _x(rng, (4, 16))
  v = old.init(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(old.apply(v, x)),
                                np.asarray(jql.fake_quant_model(_Model(), cfg, act_spec=A8_TOKEN).apply(v, x)))


@pytest.mark.parametrize("kwargs, exc", [
    (dict(weight_mode="learned"), ValueError),
    (dict(act_mode="calibrated"), ValueError),
    (dict(weight_spec=jq.QuantSpec(qtype=jq.FP8_E4M3), weight_mode="lsq"), ValueError),
    (dict(act_spec=A8_TOKEN, act_mode="static"), ValueError),
    (dict(weight_spec="int4"), TypeError),
    (dict(ema_decay=1.5), ValueError),
])
def test_wrapper_bad_input(kwargs, exc):
  with pytest.raises(exc):
    jql.QuantDense(8, **kwargs)


def test_factory_and_fake_quant_model_bad_input():
  with pytest.raises(TypeError):
    jql.fake_quant_dot_general(lhs_spec="int8")
  with pytest.raises(TypeError, match="flax.linen Module"):
    jql.fake_quant_model(lambda x: x, QuantConfig(rules=[QuantRule(r".*", W4)]))
  with pytest.raises(TypeError, match="QuantConfig"):
    jql.fake_quant_model(_Model(), {"a": W4})
  with pytest.raises(TypeError, match="act_spec"):
    jql.fake_quant_model(_Model(), QuantConfig(rules=[QuantRule(r".*", W4)]), act_spec="int8")
