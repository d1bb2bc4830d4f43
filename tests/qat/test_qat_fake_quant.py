"""fake_quant: forward == quantize/dequantize (NumPy float64 reference), VJP == clipped STE, jit and eager."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jquant as jq
from jquant import qat
from tests.qat import _qat_reference as ref

SPECS = {
    "int8_channel": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)),
    "int4_tensor": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerTensor()),
    "uint4_group_asym": jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=4), symmetric=False),
    "int4_channel_asym": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerChannel(axis=0), symmetric=False),
    "fp8_e4m3_channel": jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=jq.PerChannel(axis=-1)),
    "fp8_e5m2_tensor": jq.QuantSpec(qtype=jq.FP8_E5M2, granularity=jq.PerTensor()),
    "nf4_group": jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=4)),
    "int8_token": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()),
}


def _static_params(rng, x, spec):
  """A static scale/zero point narrower than the data, so that some elements clip."""
  s, z = ref.qparams(x, spec)
  s = s * rng.uniform(0.4, 0.9, size=s.shape)
  if z is not None:
    z = np.clip(z + rng.integers(-2, 3, size=z.shape), spec.qtype.qmin, spec.qtype.qmax)
  return s.astype(np.float32), None if z is None else z.astype(np.float32)


class FakeQuantTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = ref.fresh_rng(self.id())

  def _x(self, dtype=np.float32):
    return (self.rng.standard_normal((8, 12)) * self.rng.uniform(0.5, 3.0)).astype(dtype)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(k, v) for k, v in SPECS.items()])
  def test_dynamic_matches_reference_and_ste(self, spec):
    x = self._x()
    g = self.rng.standard_normal(x.shape).astype(np.float32)
    fq = self.variant(lambda x: qat.fake_quant(x, spec))
    y, vjp = jax.vjp(fq, jnp.asarray(x))
    want_y, _ = ref.fake_quant(x, spec)
    scale = np.abs(x).max() / 7
    np.testing.assert_allclose(np.asarray(y, np.float64), want_y, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jq.dequantize(jq.quantize(x, spec))))
    (dx,) = vjp(jnp.asarray(g))
    _, mask = ref.fake_quant(x, spec)
    np.testing.assert_array_equal(np.asarray(dx), np.where(mask, g, 0.0).astype(np.float32))
    if spec.symmetric and not spec.double_quant:
      self.assertTrue(mask.all())   # a dynamic symmetric range contains all of its data

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(k, v) for k, v in SPECS.items() if k != "int8_token"])
  def test_static_scale_clipped_ste(self, spec):
    x = self._x()
    s, z = _static_params(self.rng, x, spec)
    g = self.rng.standard_normal(x.shape).astype(np.float32)
    fq = self.variant(lambda x, s, z: qat.fake_quant(x, spec, scale=s, zero_point=z))
    y, vjp = jax.vjp(fq, jnp.asarray(x), jnp.asarray(s), None if z is None else jnp.asarray(z))
    want_y, mask = ref.fake_quant(x, spec, s, z)
    np.testing.assert_allclose(np.asarray(y, np.float64), want_y, rtol=1e-5, atol=1e-6 * float(s.max()))
    self.assertTrue(0 < mask.mean() < 1, "the static range should clip some elements")
    dx, ds, dz = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(dx), np.where(mask, g, 0.0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(ds), np.zeros_like(s))
    if z is not None:
      np.testing.assert_array_equal(np.asarray(dz), np.zeros_like(z))

  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_half_precision_keeps_dtype(self, dtype):
    spec = SPECS["int8_channel"]
    x = jnp.asarray(self._x(), dtype)
    y, grad = jax.value_and_grad(lambda x: jnp.sum(qat.fake_quant(x, spec).astype(jnp.float32)))(x)
    self.assertEqual(grad.dtype, dtype)
    out = jax.jit(lambda x: qat.fake_quant(x, spec))(x)
    self.assertEqual(out.dtype, dtype)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jq.dequantize(jq.quantize(x, spec))))

  def test_dynamic_scale_gets_no_gradient_path(self):
    # d/dx of sum(fake_quant(x)) is exactly the mask (0/1): nothing flows through the absmax reduction.
    x = self._x()
    dx = jax.grad(lambda x: jnp.sum(qat.fake_quant(x, SPECS["int4_tensor"])))(jnp.asarray(x))
    self.assertTrue(set(np.unique(np.asarray(dx)).tolist()) <= {0.0, 1.0})

  def test_fake_quant_with_range(self):
    x = self._x()
    spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor())
    hi = np.float32(np.abs(x).max() * 0.5)
    y = qat.fake_quant_with_range(jnp.asarray(x), jnp.full((1, 1), -hi), jnp.full((1, 1), hi), spec)
    want, _ = ref.fake_quant(x, spec, np.full((1, 1), hi / 127.0))
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-6)

  def test_traces_once(self):
    spec = SPECS["int4_channel_asym"]
    chex.clear_trace_counter()
    grad = jax.grad(lambda x: jnp.sum(qat.fake_quant(x, spec)))
    f = jax.jit(chex.assert_max_traces(lambda x: grad(x), n=1))
    for _ in range(3):
      f(jnp.asarray(self._x()))


@pytest.mark.parametrize("call, exc", [
    (lambda: qat.fake_quant(jnp.ones((4, 4)), "int8"), TypeError),
    (lambda: qat.fake_quant(jnp.ones((4, 4), jnp.int32), SPECS["int8_channel"]), TypeError),
    (lambda: qat.fake_quant(jnp.ones(()), SPECS["int8_channel"]), ValueError),
    (lambda: qat.fake_quant(jnp.ones((4, 4)), SPECS["int8_channel"], scale=jnp.ones((4, 1))), ValueError),
    (lambda: qat.fake_quant(jnp.ones((8, 4)), SPECS["uint4_group_asym"], scale=jnp.ones((2, 4))), ValueError),
    (lambda: qat.fake_quant(jnp.ones((4, 4)), SPECS["int8_channel"], scale=jnp.ones((1, 4)),
                            zero_point=jnp.ones((1, 4))), ValueError),
    (lambda: qat.fake_quant(jnp.ones((4, 4)), SPECS["int8_channel"], zero_point=jnp.ones((1, 4))), ValueError),
    (lambda: qat.fake_quant(jnp.ones((6, 4)), SPECS["uint4_group_asym"]), ValueError),
    (lambda: qat.fake_quant(jnp.ones((4, 4)), jq.QuantSpec(qtype=jq.INT8, stochastic_rounding=True)), ValueError),
])
def test_bad_input(call, exc):
  with pytest.raises(exc):
    call()
