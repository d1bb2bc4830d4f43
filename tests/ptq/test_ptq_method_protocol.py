"""The PTQ method protocol: the driver runs any object implementing it (no isinstance chain), and the W8A8 runtime
matmul (dispatched through jq.qdot) equals the reference W8A8 matmul."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq
from jquant.ptq.methods import PTQMethod, W8A8Matmul
from jquant.ptq.methods.base import NoTransform
from jquant.solvers import rtn, w8a8_matmul, w8a8_quantize_weight

INT8 = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))


@dataclasses.dataclass(frozen=True)
class ScaledRTN(NoTransform):
  """A method written outside jquant: RTN of the kernel times 1 (a new method is one class)."""

  spec: jq.QuantSpec
  name = "scaled_rtn"
  bits = 8
  float_inputs = False
  matmul = None

  def solve(self, w, gram, view=None):
    assert gram.shape == (w.shape[0], w.shape[0])
    return rtn(w, self.spec), None, {"custom": True}


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = x + nn.Dense(16, name=f"layers_{i}")(jax.nn.gelu(nn.Dense(32, name=f"up_{i}")(x)))
    return x


def test_a_user_method_runs_through_the_driver(rng):
  model = MLP()
  xs = [jnp.asarray(rng.normal(size=(8, 16)), jnp.float32) for _ in range(2)]
  params = model.init(jax.random.key(0), xs[0])["params"]
  assert isinstance(ScaledRTN(INT8), PTQMethod)
  q_custom, report = jq.ptq.quantize_model(model, params, xs, ScaledRTN(INT8), progress=False)
  q_rtn, _ = jq.ptq.quantize_model(model, params, xs, jq.ptq.RTN(INT8), progress=False)
  assert {e.path for e in report.layers} == {"layers_0", "layers_1", "up_0", "up_1"}
  assert all(e.extra.get("custom") and e.method == "scaled_rtn" for e in report.layers)
  for a, b in zip(jax.tree.leaves(q_custom), jax.tree.leaves(q_rtn)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_not_a_method_is_a_type_error():
  with pytest.raises(TypeError, match="unknown method"):
    jq.ptq.quantize_model(MLP(), {}, [jnp.ones((2, 16))], object(), progress=False)
  with pytest.raises(TypeError, match="unknown method"):
    jq.ptq.quantize_model(MLP(), {}, [jnp.ones((2, 16))], jq.ptq.GPTQ, progress=False)


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
def test_w8a8_runtime_matmul_equals_the_reference(act, rng):
  x = jnp.asarray(rng.normal(size=(3, 5, 64)) * rng.uniform(0.1, 4.0, size=(1, 1, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
  qw = w8a8_quantize_weight(w, per_channel=True)
  got = W8A8Matmul(act)(x, qw)
  ref = w8a8_matmul(x, qw, act=act, out_dtype=jnp.float32)
  # both accumulate the same int8 codes exactly in int32 and apply the same two float32 scales
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-6, atol=0)
  # NumPy float64 oracle of dynamic symmetric int8 activations x per-channel int8 weights
  x64 = np.asarray(x, np.float64).reshape(-1, 64)
  sx = np.abs(x64).max(axis=1, keepdims=True) if act == "per_token" else np.abs(x64).max()
  sx = sx / 127.0
  xq = np.clip(np.round(x64 / sx), -127, 127)
  sw = np.asarray(qw.scale, np.float64).reshape(1, -1)
  oracle = (xq @ np.asarray(qw.qvalue, np.float64)) * sx * sw
  np.testing.assert_allclose(np.asarray(got).reshape(-1, 24), oracle, rtol=1e-5, atol=1e-5 * np.abs(oracle).max())


@dataclasses.dataclass(frozen=True)
class FailsOnWide(ScaledRTN):
  """Raises like a solver that cannot quantize a layer (GPTQ's non-finite scales), on the 32-wide kernels only."""

  def solve(self, w, gram, view=None):
    if w.shape[-1] == 32:
      raise ValueError("the solve produced non-finite scales")
    return super().solve(w, gram, view)


def test_a_solver_error_names_the_layer(rng):
  model = MLP()
  xs = [jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)]
  params = model.init(jax.random.key(0), xs[0])["params"]
  with pytest.raises(ValueError, match=r"layer up_0: the solve produced non-finite scales"):
    jq.ptq.quantize_model(model, params, xs, FailsOnWide(INT8), progress=False)
