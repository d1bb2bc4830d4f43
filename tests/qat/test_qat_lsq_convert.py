"""LSQ / LSQ+ gradients vs float64 references and finite differences; convert == fake-quant numerics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jquant as jq
from jquant import qat
from jquant.rules import QuantConfig, QuantRule
from tests.qat import _qat_reference as ref

LSQ_SPECS = {
    "int4_channel": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=-1)),
    "int8_tensor": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor()),
    "uint4_group_asym": jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=4), symmetric=False),
    "int4_channel_asym": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=-1), symmetric=False),
}


class LsqTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = ref.fresh_rng(self.id())

  def _case(self, spec):
    x = self.rng.standard_normal((8, 6)).astype(np.float32)
    s, z = qat.lsq_init(jnp.asarray(x), spec)
    s = np.asarray(s) * self.rng.uniform(0.5, 1.0, size=s.shape).astype(np.float32)   # some elements clip
    if z is not None:
      z = np.asarray(z) + self.rng.uniform(-1.5, 1.5, size=z.shape).astype(np.float32)
    return x, s.astype(np.float32), z

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LSQ_SPECS.items())
  def test_gradients_match_reference(self, spec):
    x, s, z = self._case(spec)
    g = self.rng.standard_normal(x.shape).astype(np.float32)
    f = self.variant(lambda x, s, z: qat.lsq_fake_quant(x, s, z, spec))
    y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(s), None if z is None else jnp.asarray(z))
    dx, ds, dz = vjp(jnp.asarray(g))
    want_dx, want_ds, want_dz = ref.lsq_grads(x, s, z, spec, g.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(dx), want_dx.astype(np.float32))
    np.testing.assert_allclose(np.asarray(ds, np.float64), want_ds, rtol=1e-4, atol=1e-5)
    if z is None:
      self.assertIsNone(dz)
    else:
      np.testing.assert_allclose(np.asarray(dz, np.float64), want_dz, rtol=1e-4, atol=1e-5)
    # Forward: exactly the integer numerics with the learned scale and the rounded zero point.
    zr = None if z is None else jnp.clip(jnp.round(jnp.asarray(z)), spec.qtype.qmin, spec.qtype.qmax)
    want_y = jq.dequantize(jq.quantize(jnp.asarray(x), spec, scale=jnp.asarray(s), zero_point=zr))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*LSQ_SPECS.items())
  def test_a_negative_scale_steps_by_its_magnitude(self, spec):
    # An optimizer step can carry a learned scale through zero; the step is |s|, its gradient sign(s) * d/d|s|.
    x, s, z = self._case(spec)
    sign = np.where(self.rng.random(s.shape) < 0.5, -1.0, 1.0).astype(np.float32)
    sign.flat[0] = -1.0
    g = jnp.asarray(self.rng.standard_normal(x.shape), jnp.float32)
    f = self.variant(lambda x, s, z: qat.lsq_fake_quant(x, s, z, spec))
    zj = None if z is None else jnp.asarray(z)
    y_neg, vjp_neg = jax.vjp(f, jnp.asarray(x), jnp.asarray(s * sign), zj)
    y_pos, vjp_pos = jax.vjp(f, jnp.asarray(x), jnp.asarray(s), zj)
    np.testing.assert_array_equal(np.asarray(y_neg), np.asarray(y_pos))
    (dx_n, ds_n, dz_n), (dx_p, ds_p, dz_p) = vjp_neg(g), vjp_pos(g)
    np.testing.assert_array_equal(np.asarray(dx_n), np.asarray(dx_p))
    np.testing.assert_array_equal(np.asarray(ds_n), sign * np.asarray(ds_p))
    if z is not None:
      np.testing.assert_array_equal(np.asarray(dz_n), np.asarray(dz_p))

  @parameterized.named_parameters(*LSQ_SPECS.items())
  def test_lsq_quantize_is_the_integer_form_of_the_forward(self, spec):
    x, s, z = self._case(spec)
    s = s * np.where(self.rng.random(s.shape) < 0.5, -1.0, 1.0).astype(np.float32)
    qa = qat.lsq_quantize(jnp.asarray(x), s, z, spec)
    self.assertIsInstance(qa, jq.QArray)
    np.testing.assert_array_equal(np.asarray(qa.scale, np.float32), np.abs(s).astype(qa.scale.dtype))
    if z is not None:        # rounded and clipped to the grid (the draw moves some zero points by up to 1.5)
      want_z = np.clip(np.round(z), spec.qtype.qmin, spec.qtype.qmax)
      np.testing.assert_array_equal(np.asarray(qa.zero_point, np.float64), want_z)
    np.testing.assert_array_equal(np.asarray(jq.dequantize(qa)), np.asarray(qat.lsq_fake_quant(x, s, z, spec)))

  def test_scale_gradient_finite_difference_of_the_ste_surrogate(self):
    # LSQ's dy/ds is the derivative of s * (clip(x/s, qmin, qmax) + c * inside) with the rounding residual
    # c = round(x/s0) - x/s0 and the in-range mask held fixed at s0 (the straight-through surrogate).
    spec = LSQ_SPECS["int4_channel"]
    x, s, _ = self._case(spec)
    g = self.rng.standard_normal(x.shape)
    v0 = x.astype(np.float64) / s
    c = np.round(v0) - v0
    inside = (v0 >= spec.qtype.qmin) & (v0 <= spec.qtype.qmax)
    gs = qat.lsq_grad_scale(spec, x.shape)

    def surrogate(s_):
      return np.sum(g * s_ * (np.clip(x / s_, spec.qtype.qmin, spec.qtype.qmax) + c * inside))

    ds = jax.grad(lambda s_: jnp.sum(jnp.asarray(g, jnp.float32) * qat.lsq_fake_quant(jnp.asarray(x), s_, None,
                                                                                        spec)))(jnp.asarray(s))
    s64 = s.astype(np.float64)
    for j in range(s.shape[1]):
      e = np.zeros_like(s64)
      e[0, j] = 1e-6 * s64[0, j]
      fd = (surrogate(s64 + e) - surrogate(s64 - e)) / (2 * e[0, j])
      np.testing.assert_allclose(float(ds[0, j]), gs * fd, rtol=1e-3, atol=1e-5)

  def test_grad_scale_value(self):
    spec = LSQ_SPECS["uint4_group_asym"]
    self.assertAlmostEqual(qat.lsq_grad_scale(spec, (8, 6)), 1.0 / np.sqrt(4 * 15))

  def test_init_from_data(self):
    x = self.rng.standard_normal((8, 6)).astype(np.float32)
    s, z = qat.lsq_init(jnp.asarray(x), LSQ_SPECS["int4_channel"])
    np.testing.assert_allclose(np.asarray(s)[0], 2 * np.abs(x).mean(0) / np.sqrt(7), rtol=1e-5)
    self.assertIsNone(z)
    spec = LSQ_SPECS["uint4_group_asym"]
    s, z = qat.lsq_init(jnp.asarray(x), spec)
    want_s, want_z = ref.qparams(x, spec)
    np.testing.assert_allclose(np.asarray(s), want_s, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(z), want_z)

  def test_learning_the_step_size_reduces_error(self):
    spec = LSQ_SPECS["int4_channel"]
    w = jnp.asarray(self.rng.standard_normal((64, 8)), jnp.float32)
    s0 = jnp.full((1, 8), 0.02, jnp.float32)           # far too small: most of w clips
    loss = lambda s: jnp.mean(jnp.square(qat.lsq_fake_quant(w, s, None, spec) - w))
    tx = optax.adam(1e-2)
    step = jax.jit(lambda s, st: (lambda u, st: (optax.apply_updates(s, u), st))(*tx.update(jax.grad(loss)(s), st)))
    s, st = s0, tx.init(s0)
    for _ in range(150):
      s, st = step(s, st)
    self.assertLess(float(loss(s)), 0.25 * float(loss(s0)))


class ConvertTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = ref.fresh_rng(self.id())

  def _params(self):
    r = self.rng
    return {"params": {"mlp": {"kernel": jnp.asarray(r.standard_normal((16, 8)), jnp.float32),
                               "bias": jnp.asarray(r.standard_normal((8,)), jnp.float32)},
                       "embed": {"embedding": jnp.asarray(r.standard_normal((10, 16)), jnp.float32)},
                       "out": {"kernel": jnp.asarray(r.standard_normal((8, 4)), jnp.float32)}}}

  def test_dynamic_weights_bit_exact_with_quant_config(self):
    params = self._params()
    w4 = jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
    w8 = jq.QuantSpec(qtype=jq.INT8)
    cfg = QuantConfig(rules=[QuantRule(r".*/mlp/kernel", w4), QuantRule(r".*/kernel", w8)], skip=[r".*embed.*"])
    out = qat.convert(params, cfg)
    mlp, head = out["params"]["mlp"]["kernel"], out["params"]["out"]["kernel"]
    self.assertIsInstance(mlp, jq.QArray)
    self.assertEqual(mlp.spec, w4)
    self.assertEqual(head.spec, w8)
    for q, w, spec in ((mlp, params["params"]["mlp"]["kernel"], w4), (head, params["params"]["out"]["kernel"], w8)):
      np.testing.assert_array_equal(np.asarray(jq.dequantize(q)), np.asarray(jax.jit(qat.fake_quant,
                                                                                     static_argnums=1)(w, spec)))
    self.assertIs(out["params"]["embed"]["embedding"], params["params"]["embed"]["embedding"])
    self.assertIs(out["params"]["mlp"]["bias"], params["params"]["mlp"]["bias"])

  @parameterized.named_parameters(*LSQ_SPECS.items())
  def test_lsq_params_bit_exact_and_siblings_dropped(self, spec):
    params = self._params()
    w = params["params"]["mlp"]["kernel"]
    s, z = qat.lsq_init(w, spec)
    s = s * 0.8 * jnp.asarray(np.where(self.rng.random(s.shape) < 0.5, -1.0, 1.0), jnp.float32)   # |s| is the step
    params["params"]["mlp"]["kernel_scale"] = s
    if z is not None:
      z = z + 0.4
      params["params"]["mlp"]["kernel_zero_point"] = z
    out = qat.convert(params, lambda path, leaf: spec if path == "params/mlp/kernel" else None)
    self.assertEqual(set(out["params"]["mlp"]), {"kernel", "bias"})
    got = jq.dequantize(out["params"]["mlp"]["kernel"])
    want = jax.jit(lambda w, s, z: qat.lsq_fake_quant(w, s, z, spec))(w, s, z)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Already-converted trees pass through unchanged.
    again = qat.convert(out, {"params/mlp/kernel": spec})
    self.assertIs(again["params"]["mlp"]["kernel"], out["params"]["mlp"]["kernel"])

  def test_bad_input(self):
    params = self._params()
    spec = jq.QuantSpec(qtype=jq.INT8)
    with self.assertRaisesRegex(TypeError, "single QuantSpec"):
      qat.convert(params, spec)
    with self.assertRaisesRegex(TypeError, "mapping"):
      qat.convert(params, {"params/mlp/kernel": "int8"})
    with self.assertRaisesRegex(TypeError, "QuantConfig"):
      qat.convert(params, 3)
    with self.assertRaisesRegex(TypeError, "expected a jq.QuantSpec"):
      qat.convert(params, lambda p, x: "int8" if p.endswith("kernel") else None)
    params["params"]["out"]["kernel_scale"] = jnp.ones((1, 4))
    with self.assertRaisesRegex(ValueError, "no quantized weight"):
      qat.convert(params, {"params/mlp/kernel": spec})


@pytest.mark.parametrize("call, exc", [
    (lambda: qat.lsq_fake_quant(jnp.ones((4, 4)), jnp.ones((1, 4)), None, jq.QuantSpec(qtype=jq.FP8_E4M3)),
     ValueError),
    (lambda: qat.lsq_fake_quant(jnp.ones((4, 4)), jnp.ones((1, 4)), jnp.ones((1, 4)), LSQ_SPECS["int4_channel"]),
     ValueError),
    (lambda: qat.lsq_fake_quant(jnp.ones((4, 4)), jnp.ones((1, 4)), None, LSQ_SPECS["int4_channel_asym"]),
     ValueError),
    (lambda: qat.lsq_fake_quant(jnp.ones((4, 4)), jnp.ones((4, 1)), None, LSQ_SPECS["int4_channel"]), ValueError),
    (lambda: qat.lsq_fake_quant(jnp.ones((8, 4)), jnp.ones((2, 4)), jnp.ones((1, 4)),
                                LSQ_SPECS["uint4_group_asym"]), ValueError),
    (lambda: qat.lsq_fake_quant(jnp.ones((4, 4), jnp.int8), jnp.ones((1, 4)), None, LSQ_SPECS["int4_channel"]),
     TypeError),
    (lambda: qat.lsq_init(jnp.ones((4, 4)), "int4"), TypeError),
    (lambda: qat.lsq_init(jnp.ones((4, 4)), jq.QuantSpec(qtype=jq.NF4)), ValueError),
])
def test_bad_input(call, exc):
  with pytest.raises(exc):
    call()
