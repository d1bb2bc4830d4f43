"""Issue 11, item 2: a NaN/inf input never becomes a finite output (values and gradients), under jit.

Each test poisons one element of a random array and checks (a) the tile (or row) holding it is non-finite in the
output and (b) every other tile equals the clean run's (the poison does not leak, and nothing else changed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jquant as jq
from jquant import mixed_precision as mp
from jquant.qat import lsq_fake_quant
from jquant.solvers.llm_int8 import llm_int8_matmul, llm_int8_prepare
from jquant.solvers.smoothquant import w8a8_matmul, w8a8_quantize_weight

pytestmark = pytest.mark.randomized

SPECS = {
    "int8-token": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken()),
    "int8-channel": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1)),
    "uint8-asym-token": jq.QuantSpec(qtype=jq.UINT8, granularity=jq.PerToken(), symmetric=False),
    "int4-group": jq.QuantSpec(qtype=jq.INT4, granularity=jq.PerGroup(axis=0, size=4)),
    "uint4-asym-group": jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=4), symmetric=False),
    "fp8-token": jq.QuantSpec(qtype=jq.FP8_E4M3, granularity=jq.PerToken()),
    "nf4-group": jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=4)),
    "int8-tensor": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerTensor()),
    "int8-mse-token": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken(), calibration=jq.MSE(grid=8)),
    "int8-pct-token": jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken(), calibration=jq.Percentile(99.0)),
    "dq-nf4": jq.QuantSpec(qtype=jq.NF4, granularity=jq.PerGroup(axis=0, size=4), double_quant=True,
                           double_quant_block=4),
}
BAD = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _tile_mask(spec, shape, idx):
  """Boolean mask of the elements sharing a scale with element ``idx``."""
  block = spec.granularity.block_shape(shape)
  grid = np.indices(shape)
  return np.all([grid[d] // block[d] == idx[d] // block[d] for d in range(len(shape))], axis=0)


def _poisoned(rng, bad, shape=(8, 16), idx=(5, 3)):
  x = rng.normal(size=shape).astype(np.float32)
  xb = x.copy()
  xb[idx] = BAD[bad]
  return x, xb, idx


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("name", list(SPECS))
def test_jit_quantize_keeps_nonfinite_in_its_tile(rng, name, bad):
  spec = SPECS[name]
  x, xb, idx = _poisoned(rng, bad)
  f = jax.jit(lambda a: jq.dequantize(jq.quantize(a, spec)))
  y, yb = np.asarray(f(x)), np.asarray(f(xb))
  tile = _tile_mask(spec, x.shape, idx)
  if spec.double_quant:   # the scales are double-quantized in blocks: the bad tile's whole scale block is NaN
    block = spec.granularity.block_shape(x.shape)
    sshape = tuple(n // b for n, b in zip(x.shape, block))
    flat = np.ravel_multi_index(tuple(i // b for i, b in zip(idx, block)), sshape)
    lo = flat // spec.double_quant_block * spec.double_quant_block
    sflat = np.arange(np.prod(sshape)).reshape(sshape)
    in_block = (sflat >= lo) & (sflat < lo + spec.double_quant_block)
    tile = np.repeat(np.repeat(in_block, block[0], 0), block[1], 1)
  assert not np.isfinite(yb[tile]).any(), "the tile holding a NaN/inf must dequantize to NaN"
  np.testing.assert_array_equal(yb[~tile], y[~tile])


@pytest.mark.parametrize("bad", list(BAD))
def test_jit_quantize_static_scale_keeps_nonfinite(rng, bad):
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerToken())
  x, xb, idx = _poisoned(rng, bad)
  scale = jnp.full((8, 1), 0.05, jnp.float32)
  f = jax.jit(lambda a: jq.dequantize(jq.quantize(a, spec, scale=scale)))
  y, yb = np.asarray(f(x)), np.asarray(f(xb))
  assert not np.isfinite(yb[idx[0]]).any()
  np.testing.assert_array_equal(np.delete(yb, idx[0], 0), np.delete(y, idx[0], 0))


@pytest.mark.parametrize("bad", list(BAD))
def test_eager_quantize_raises_on_nonfinite(rng, bad):
  _, xb, _ = _poisoned(rng, bad)
  with pytest.raises(ValueError, match=r"1 NaN/inf values \(first at index \(5, 3\)\)"):
    jq.quantize(xb, SPECS["int8-token"])


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("name", ["int8-token", "int8-channel", "uint8-asym-token", "fp8-token", "nf4-group"])
def test_fake_quant_values_and_grads_stay_nonfinite(rng, name, bad):
  spec = SPECS[name]
  x, xb, idx = _poisoned(rng, bad)
  tile = _tile_mask(spec, x.shape, idx)
  w = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  fq = jax.jit(lambda a: jq.fake_quant(a, spec))
  grad = jax.jit(jax.grad(lambda a: jnp.sum(jq.fake_quant(a, spec) * w)))
  y, yb = np.asarray(fq(x)), np.asarray(fq(xb))
  assert not np.isfinite(yb[tile]).any()
  np.testing.assert_array_equal(yb[~tile], y[~tile])
  g, gb = np.asarray(grad(x)), np.asarray(grad(xb))
  assert np.isnan(gb[tile]).all(), "every gradient of a poisoned tile must be NaN"
  np.testing.assert_array_equal(gb[~tile], g[~tile])


@pytest.mark.parametrize("bad", list(BAD))
def test_fake_quant_static_scale_grad_is_nan_at_the_element(rng, bad):
  spec = SPECS["int8-token"]
  x, xb, idx = _poisoned(rng, bad)
  scale = jnp.full((8, 1), 0.02, jnp.float32)
  gb = np.asarray(jax.grad(lambda a: jnp.sum(jq.fake_quant(a, spec, scale=scale)))(jnp.asarray(xb)))
  assert np.isnan(gb[idx[0]]).all()
  g = np.asarray(jax.grad(lambda a: jnp.sum(jq.fake_quant(a, spec, scale=scale)))(jnp.asarray(x)))
  np.testing.assert_array_equal(np.delete(gb, idx[0], 0), np.delete(g, idx[0], 0))


@pytest.mark.parametrize("bad", list(BAD))
def test_lsq_fake_quant_nonfinite_gives_nan_value_and_grads(rng, bad):
  spec = SPECS["int8-channel"]
  x, xb, idx = _poisoned(rng, bad)
  scale = jnp.full((1, 16), 0.03, jnp.float32)
  y = np.asarray(lsq_fake_quant(jnp.asarray(xb), scale, None, spec))
  assert np.isnan(y[idx])
  gx, gs = jax.grad(lambda a, s: jnp.sum(lsq_fake_quant(a, s, None, spec)), argnums=(0, 1))(jnp.asarray(xb), scale)
  assert np.isnan(np.asarray(gx)[idx]) and np.isnan(np.asarray(gs)[0, idx[1]])
  assert np.isfinite(np.delete(np.asarray(gx).reshape(-1), idx[0] * 16 + idx[1])).all()


def test_loss_scaled_skips_step_poisoned_through_per_token_fake_quant(rng):
  """The issue's example: a NaN activation through per-token INT8 fake quant used to give finite grads."""
  spec = SPECS["int8-token"]
  x = rng.normal(size=(8, 16)).astype(np.float32)
  x[2, 7] = np.nan
  params = {"w": jnp.asarray(rng.normal(size=(16, 4)).astype(np.float32))}
  tx = mp.loss_scaled(optax.sgd(0.1), mp.DynamicLossScale(scale=1024.0))
  state = tx.init(params)

  def loss(p):
    return jnp.sum(jq.fake_quant(jnp.asarray(x), spec) @ jq.fake_quant(p["w"], SPECS["int8-channel"]))

  grads = jax.grad(lambda p: loss(p) * mp.current_loss_scale(state))(params)
  assert not bool(mp.all_finite(grads))
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  new_params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(new_params["w"]), np.asarray(params["w"]))
  assert not bool(new_state.grads_finite)
  assert float(new_state.loss_scale.scale) == 512.0
  for a, b in zip(jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_quantize_params_eager_raises_and_traced_propagates(rng):
  spec = SPECS["int8-channel"]
  w = rng.normal(size=(8, 16)).astype(np.float32)
  w[4, 9] = np.nan
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*kernel", spec)])
  with pytest.raises(ValueError, match=r"parameter 'dense/kernel'.*NaN/inf"):
    jq.quantize_params({"dense": {"kernel": jnp.asarray(w)}}, cfg)
  out = jax.jit(lambda p: jq.dequantize_params(jq.quantize_params(p, cfg)))({"dense": {"kernel": jnp.asarray(w)}})
  col = np.asarray(out["dense"]["kernel"])[:, 9]
  assert np.isnan(col).all()
  assert np.isfinite(np.delete(np.asarray(out["dense"]["kernel"]), 9, axis=1)).all()


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("mode", ["per_token", "per_tensor", "static"])
def test_w8a8_matmul_propagates_nonfinite_rows(rng, mode, bad):
  x, xb, idx = _poisoned(rng, bad, shape=(6, 32), idx=(2, 11))
  qw = w8a8_quantize_weight(rng.normal(size=(32, 8)).astype(np.float32))
  kw = dict(act_scale=0.05) if mode == "static" else dict(act=mode)
  f = jax.jit(lambda a: w8a8_matmul(a, qw, **kw))
  y, yb = np.asarray(f(x)), np.asarray(f(xb))
  rows = np.arange(6) == 2 if mode != "per_tensor" else np.ones(6, bool)
  assert (~np.isfinite(yb[rows])).all()
  np.testing.assert_array_equal(yb[~rows], y[~rows])


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("threshold", [6.0, 0.0])
def test_llm_int8_matmul_propagates_nonfinite_rows(rng, threshold, bad):
  x, xb, idx = _poisoned(rng, bad, shape=(6, 32), idx=(2, 11))
  qw = llm_int8_prepare(rng.normal(size=(32, 8)).astype(np.float32))
  f = jax.jit(lambda a: llm_int8_matmul(a, qw, threshold=threshold))
  y, yb = np.asarray(f(x)), np.asarray(f(xb))
  assert (~np.isfinite(yb[2])).all()
  if threshold == 0.0 or bad == "nan":   # an inf is an outlier column: its column's product reaches every row
    np.testing.assert_array_equal(np.delete(yb, 2, 0), np.delete(y, 2, 0))
