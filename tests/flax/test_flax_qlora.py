"""QLoRA (Linen and NNX): only the adapters train, the NF4 base stays bit-identical, the adapter learns."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jquant as jq
import jquant.qat  # noqa: F401  (jq.qat.path_str)
from jquant.flax import qlora


def _bits(tree):
  return [np.atleast_1d(np.asarray(x)).view(np.uint8).copy() for x in jax.tree.leaves(tree)]


def _assert_bit_identical(a, b):
  for x, y in zip(_bits(a), _bits(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_default_base_spec_is_double_quantized_nf4_g64():
  spec = qlora.NF4_DQ_G64
  assert spec.qtype == jq.NF4 and spec.double_quant
  assert spec.granularity == jq.PerGroup(axis=0, size=64)


def _regression(rng, k=64, n=16, batch=32):
  x = jnp.asarray(rng.standard_normal((batch, k)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((k, n)) / 8, jnp.float32)
  return x, x @ w_true


def test_linen_only_adapters_train_and_base_is_untouched(rng):
  x, y = _regression(rng)
  layer = qlora.QLoRADense(16, rank=4, alpha=8.0)
  v = layer.init(jax.random.key(int(rng.integers(1 << 30))), x)
  assert set(v["params"]) == {"lora_a", "lora_b"}
  assert isinstance(v["qlora_base"]["kernel"], jq.QArray)
  assert v["qlora_base"]["kernel"].spec == qlora.NF4_DQ_G64
  base = v["qlora_base"]
  # Untrained adapter: exactly the quantized base layer.
  want = x.astype(jnp.bfloat16) @ jq.dequantize(base["kernel"], dtype=jnp.bfloat16) + base["bias"].astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(layer.apply(v, x), np.float32), np.asarray(want, np.float32))

  loss = lambda p, b: jnp.mean(jnp.square(layer.apply({"params": p, "qlora_base": b}, x).astype(jnp.float32) - y))
  all_grads = jax.grad(loss, argnums=(0, 1), allow_int=True)(v["params"], base)
  assert float(jnp.abs(all_grads[0]["lora_b"].astype(jnp.float32)).sum()) > 0
  # No gradient reaches the base (stop_gradient), whatever is differentiated.
  for g in jax.tree.leaves(all_grads[1]):
    if jnp.issubdtype(g.dtype, jnp.floating):
      assert float(jnp.abs(g.astype(jnp.float32)).sum()) == 0

  tx = optax.adam(1e-2)
  params, state = v["params"], tx.init(v["params"])

  @jax.jit
  def step(params, state):
    l, g = jax.value_and_grad(loss)(params, base)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state, l

  first = float(loss(params, base))
  for _ in range(40):
    params, state, _ = step(params, state)
  assert float(loss(params, base)) < 0.7 * first
  _assert_bit_identical(base, v["qlora_base"])


class _Tiny(nn.Module):
  use_qlora: bool = False

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(11, 64)(tokens)
    if self.use_qlora:
      return qlora.QLoRADense(64, rank=2, name="proj")(h)
    return nn.Dense(64, name="proj")(h)


def test_load_qlora_base_from_trained_float_model(rng):
  tokens = jnp.asarray(rng.integers(0, 11, (2, 5)))
  trained = _Tiny().init(jax.random.key(0), tokens)["params"]
  qv = _Tiny(use_qlora=True).init(jax.random.key(1), tokens)
  qv = qlora.load_qlora_base(qv, trained)
  np.testing.assert_array_equal(np.asarray(qv["params"]["Embed_0"]["embedding"]),
                                np.asarray(trained["Embed_0"]["embedding"]))
  kq = qv["qlora_base"]["proj"]["kernel"]
  np.testing.assert_array_equal(np.asarray(jq.dequantize(kq)),
                                np.asarray(jq.dequantize(jq.quantize(trained["proj"]["kernel"], qlora.NF4_DQ_G64))))
  y_float = _Tiny().apply({"params": trained}, tokens)
  y_q = _Tiny(use_qlora=True).apply(qv, tokens).astype(jnp.float32)
  assert float(jq.sqnr(y_float, y_q)) > 15.0
  bad = {"Embed_0": trained["Embed_0"], "other": trained["proj"]}
  with pytest.raises(ValueError, match="same names"):
    qlora.load_qlora_base(_Tiny(use_qlora=True).init(jax.random.key(1), tokens), bad)


def test_nnx_only_adapters_train_and_base_is_untouched(rng):
  x, y = _regression(rng)
  kernel = jnp.asarray(rng.standard_normal((64, 16)) / 8, jnp.float32)
  layer = qlora.QLoRALinear(64, 16, rank=4, alpha=8.0, kernel=kernel, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
  base_before = jax.tree.map(jnp.copy, nnx.state(layer, qlora.QLoRABase))
  np.testing.assert_array_equal(np.asarray(jq.dequantize(layer.base_kernel.get_value())),
                                np.asarray(jq.dequantize(jq.quantize(kernel, qlora.NF4_DQ_G64))))
  opt = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
  loss = lambda m: jnp.mean(jnp.square(m(x).astype(jnp.float32) - y))

  @nnx.jit
  def step(m, opt):
    l, grads = nnx.value_and_grad(loss)(m)
    opt.update(m, grads)
    return l, grads

  first = float(loss(layer))
  for _ in range(40):
    _, grads = step(layer, opt)
  paths = {jq.qat.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(grads))[0]}
  assert paths and all(p.split("/")[0] in ("lora_a", "lora_b") for p in paths), paths
  assert float(loss(layer)) < 0.7 * first
  _assert_bit_identical(nnx.state(layer, qlora.QLoRABase), base_before)


@pytest.mark.parametrize("kwargs, exc", [(dict(rank=0), ValueError), (dict(alpha=0.0), ValueError),
                                         (dict(base_spec="nf4"), TypeError)])
def test_bad_input(kwargs, exc):
  with pytest.raises(exc):
    qlora.QLoRADense(16, **kwargs)
  with pytest.raises(exc):
    qlora.QLoRALinear(64, 16, rngs=nnx.Rngs(0), **kwargs)


def test_nnx_bad_kernel_shape():
  with pytest.raises(ValueError, match="kernel has shape"):
    qlora.QLoRALinear(64, 16, kernel=jnp.ones((16, 64)), rngs=nnx.Rngs(0))
