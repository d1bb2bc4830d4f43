"""quantize_model / runtime_model on a user-written Flax NNX model (nnx.Linear, nnx.LinearGeneral, nnx.Einsum; an
nnx.List of layers): every linear reported by path, qparams an nnx.State, runtime == the dequantized model, GPTQ
beats RTN, unsupported layers reported, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant as jq

D, H, V, T = 16, 2, 24, 8
HD = D // H


class Attn(nnx.Module):
  def __init__(self, rngs):
    self.q = nnx.LinearGeneral(D, (H, HD), rngs=rngs)                           # 3-D kernel (D, H, hd)
    self.k = nnx.LinearGeneral(D, (H, HD), rngs=rngs)
    self.v = nnx.Einsum("btd,dnh->btnh", (D, H, HD), (H, HD), rngs=rngs)        # einsum kernel with a bias
    self.o = nnx.LinearGeneral((H, HD), D, axis=(-2, -1), rngs=rngs)            # two-axis contraction

  def __call__(self, h, mask):
    q, k, v = self.q(h), self.k(h), self.v(h)
    a = jax.nn.softmax(jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(HD) + mask, axis=-1)
    return self.o(jnp.einsum("bnqk,bknh->bqnh", a, v))


class Block(nnx.Module):
  def __init__(self, rngs):
    self.n1 = nnx.RMSNorm(D, rngs=rngs)
    self.attn = Attn(rngs)
    self.n2 = nnx.RMSNorm(D, rngs=rngs)
    self.gate = nnx.Linear(D, 2 * D, use_bias=False, rngs=rngs)
    self.up = nnx.Linear(D, 2 * D, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(2 * D, D, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.n1(x), mask)
    h = self.n2(x)
    return x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))


class LM(nnx.Module):
  def __init__(self, rngs, layers=2):
    self.embed = nnx.Embed(V, D, rngs=rngs)
    self.layers = nnx.List([Block(rngs) for _ in range(layers)])
    self.norm = nnx.RMSNorm(D, rngs=rngs)
    self.head = nnx.Linear(D, V, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids)
    t = ids.shape[1]
    mask = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -1e9)
    for layer in self.layers:
      x = layer(x, mask)
    return self.head(self.norm(x))


def _setup(rng, n_batches=2, batch=4):
  model = LM(nnx.Rngs(int(rng.integers(1 << 30))))
  ids = lambda: jnp.asarray(rng.integers(0, V, (batch, T)), jnp.int32)
  return model, nnx.state(model, nnx.Param), [ids() for _ in range(n_batches)], ids()


def _float(model, state, x):
  """The unmodified model on float params ``state`` (a fresh merge: ``model`` itself is not touched)."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, state, rest)(x)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


W4 = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
LINEARS = ["attn/q", "attn/k", "attn/v", "attn/o", "gate", "up", "down"]
PATHS = [f"layers/{i}/{p}" for i in range(2) for p in LINEARS] + ["head"]
METHODS = {
    "awq_gptq": jq.ptq.AWQ(W4, gptq=jq.ptq.GPTQ(W4)),     # scales on the quantized model's inputs, then GPTQ
    "rtn": jq.ptq.RTN(W4),
    "gptq": jq.ptq.GPTQ(W4, act_order=True),
    "awq": jq.ptq.AWQ(W4),
    "smoothquant": jq.ptq.SmoothQuant(smooth="all"),
    "llm_int8": jq.ptq.LLMInt8(),
}


def _flat(state):
  return {"/".join(str(getattr(k, "key", k)) for k in kp): v.get_value() for kp, v in nnx.to_flat_state(state)}


def _check_quantized(model, params, qstate, report, method, held):
  """Every linear reported and quantized in an nnx.State of the params' structure; the runtime under jit computes
  the dequantized model (weight-only) or the float model within activation-quantization error (W8A8 / LLM.int8)."""
  assert sorted(e.path for e in report.layers) == sorted(PATHS)
  assert report.unsupported == () and report.skipped == ()
  assert isinstance(qstate, nnx.State)
  fp, q = _flat(params), _flat(qstate)
  assert set(fp) <= set(q) and all(k.endswith("/input_scale") for k in set(q) - set(fp))
  for p in PATHS:       # QArray kernels of the kernels' logical shapes (N-D for LinearGeneral / Einsum)
    assert isinstance(q[f"{p}/kernel"], jq.QArray) and q[f"{p}/kernel"].shape == fp[f"{p}/kernel"].shape, p
  y_run = jax.jit(jq.ptq.runtime_model(model, method).apply)(qstate, held)
  deq = jq.dequantize_params(qstate)
  assert isinstance(deq, nnx.State) and set(_flat(deq)) == set(fp)     # input scales folded into the kernels
  y_deq = _float(model, deq, held)
  y_fp = _float(model, params, held)
  if getattr(method, "matmul", None) is None:
    # the runtime (jq.qdot on QArrays, input scales applied) computes the dequantized model; float32 rounding
    assert _rel(y_run, y_deq) < 1e-3
  else:
    # W8A8 / LLM.int8 quantize activations at run time: within the activation-quantization error. Over 60 seeds
    # (SmoothQuant and LLM.int8): the weight-only error 0.015 +- 0.0025 (max 0.024), the SQNR 33.0 +- 1.4 dB (min
    # 29.5); the bounds are >= 6 sd from the mean.
    assert _rel(y_deq, y_fp) < 0.05
    sqnr = -20 * np.log10(_rel(y_run, y_fp))
    assert sqnr >= 24.0, sqnr
  return _rel(y_deq, y_fp)


def test_rtn_and_gptq_quantize_every_linear_and_gptq_beats_rtn(rng):
  # 8 x 64 = 512 calibration tokens for K <= 32 (with ~100 tokens GPTQ can overfit the calibration set), 1024
  # held-out tokens. One draw of this 16-wide model is too few: its held-out error ratio GPTQ / RTN was
  # 0.836 +- 0.052 over 40 seeds (log: -0.181 +- 0.062, max 0.95), > 1 with probability ~1e-3; the geometric mean
  # over three draws sits 5.1 sd below 1.
  log_ratios = []
  for draw in range(3):
    model, params, batches, _ = _setup(rng, n_batches=8, batch=8)
    held = jnp.asarray(rng.integers(0, V, (128, T)), jnp.int32)
    before = jax.tree.map(np.asarray, _flat(nnx.state(model, nnx.Param)))
    err, sqnr = {}, {}
    for name in ("rtn", "gptq"):
      qstate, report = jq.ptq.quantize_model(model, params, batches, METHODS[name], progress=False)
      err[name] = _check_quantized(model, params, qstate, report, METHODS[name], held)
      sqnr[name] = report.mean_sqnr_db()
    log_ratios.append(np.log(err["gptq"] / err["rtn"]))
    # what GPTQ minimises, the layer output error on the calibration tokens: +1.85 +- 0.21 dB over RTN (60 seeds)
    assert sqnr["gptq"] > sqnr["rtn"] + 0.5, (draw, sqnr)
    after = _flat(nnx.state(model, nnx.Param))    # the user's model is not modified
    assert all(np.array_equal(before[k], np.asarray(after[k])) for k in before)
  assert np.mean(log_ratios) < 0, np.exp(log_ratios)     # held-out inputs


@pytest.mark.parametrize("name", ["awq", "smoothquant", pytest.param("llm_int8", marks=pytest.mark.slow),
                                  pytest.param("awq_gptq", marks=pytest.mark.slow)])
def test_scaling_and_activation_methods(name, rng):
  model, params, batches, held = _setup(rng)
  qstate, report = jq.ptq.quantize_model(model, params, batches, METHODS[name], progress=False)
  if name != "llm_int8":                        # no producer to fold into on a user model: input_scale Params
    assert any(k.endswith("/input_scale") for k in _flat(qstate))
  _check_quantized(model, params, qstate, report, METHODS[name], held)


class WithConv(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(8, 8, (3,), rngs=rngs)
    self.proj = nnx.Linear(8, 4, rngs=rngs)
    self.unused = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    return self.proj(self.conv(x))


def test_unsupported_layer_is_reported_not_skipped_silently(rng):
  model = WithConv(nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(2, 12, 8)), jnp.float32)
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
  params = nnx.state(model, nnx.Param)
  qstate, report = jq.ptq.quantize_model(model, params, [x], jq.ptq.GPTQ(spec), progress=False)
  assert [e.path for e in report.layers] == ["proj"]
  why = dict(report.unsupported)
  assert sorted(why) == ["conv", "unused"] and "Conv" in why["conv"] and "not called" in why["unused"]
  assert "unsupported (float): conv" in str(report)
  q = _flat(qstate)
  assert isinstance(q["proj/kernel"], jq.QArray) and not isinstance(q["conv/kernel"], jq.QArray)
  y = jax.jit(jq.ptq.runtime_model(model, jq.ptq.GPTQ(spec)).apply)(qstate, x)
  assert _rel(y, model(x)) < 0.02


class NoLinear(nnx.Module):
  def __init__(self, rngs):
    self.ln = nnx.LayerNorm(8, rngs=rngs)

  def __call__(self, x):
    return self.ln(x)


class Scanned(nnx.Module):
  def __init__(self, rngs):
    make = nnx.vmap(lambda k: nnx.Linear(8, 8, rngs=nnx.Rngs(k)))
    self.layers = make(jax.random.split(jax.random.key(0), 3))

  def __call__(self, x):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def step(layer, h):
      return layer(h)
    return step(self.layers, x)


def test_bad_inputs_name_the_problem(rng):
  x = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
  nl = NoLinear(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"no supported linear.*LayerNorm"):
    jq.ptq.quantize_model(nl, nnx.state(nl, nnx.Param), [x], jq.ptq.RTN(W4), progress=False)
  sc = Scanned(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"layers.*stacked kernel.*unroll"):
    jq.ptq.quantize_model(sc, nnx.state(sc, nnx.Param), [x], jq.ptq.RTN(W4), progress=False)
  model, params, batches, _ = _setup(rng)
  with pytest.raises(ValueError, match=r"batch 0.*\(4, 8, 3\)"):
    jq.ptq.quantize_model(model, params, [jnp.zeros((4, 8, 3), jnp.float32)], jq.ptq.RTN(W4), progress=False)
  with pytest.raises(ValueError, match=r"blocks='nothing/\\\\d\+' matches no module"):
    jq.ptq.quantize_model(model, params, batches, jq.ptq.RTN(W4), blocks=r"nothing/\d+", progress=False)
  with pytest.raises(ValueError, match=r"missing \['head/bias'"):
    bad = _flat(params)
    del bad["head/bias"]
    jq.ptq.quantize_model(model, nnx.from_flat_state({tuple(k.split("/")): nnx.Param(v) for k, v in bad.items()}),
                          batches, jq.ptq.RTN(W4), progress=False)
  with pytest.raises(TypeError, match=r"nnx.state\(model, nnx.Param\)"):
    jq.ptq.quantize_model(model, [1, 2], batches, jq.ptq.RTN(W4), progress=False)


class Named(nnx.Module):
  """Blocks as attributes ``layers_0``, ``layers_1`` (no list)."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(V, D, rngs=rngs)
    self.layers_0 = Block(rngs)
    self.layers_1 = Block(rngs)
    self.head = nnx.Linear(D, V, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids)
    mask = jnp.zeros((ids.shape[1], ids.shape[1]), jnp.float32)
    return self.head(self.layers_1(self.layers_0(x, mask), mask))


def test_attribute_blocks_blocks_regex_and_skip(rng):
  model = Named(nnx.Rngs(int(rng.integers(1 << 30))))
  params = nnx.state(model, nnx.Param)
  batches = [jnp.asarray(rng.integers(0, V, (4, T)), jnp.int32) for _ in range(2)]
  method = jq.ptq.RTN(W4)
  q1, r1 = jq.ptq.quantize_model(model, params, batches, method, skip=("*/down",), progress=False)
  q2, r2 = jq.ptq.quantize_model(model, params, batches, method, skip=("*/down",), blocks=r"layers_\d", progress=False)
  expect = [f"layers_{i}/{p}" for i in range(2) for p in LINEARS if p != "down"] + ["head"]
  assert sorted(e.path for e in r1.layers) == sorted(expect) == sorted(e.path for e in r2.layers)
  assert sorted(r1.skipped) == ["layers_0/down", "layers_1/down"]
  f1, f2 = _flat(q1), _flat(q2)
  assert not isinstance(f1["layers_0/down/kernel"], jq.QArray)
  for k in f1:                                    # the regex names the blocks found automatically: same result
    a = jq.dequantize(f1[k]) if isinstance(f1[k], jq.QArray) else f1[k]
    b = jq.dequantize(f2[k]) if isinstance(f2[k], jq.QArray) else f2[k]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)
  held = batches[0]
  y_run = jax.jit(jq.ptq.runtime_model(model, method).apply)(q1, held)
  assert _rel(y_run, _float(model, jq.dequantize_params(q1), held)) < 1e-3


def test_working_params_with_input_scale_run_as_the_runtime_does(rng):
  """The adapter's forwards apply an ``input_scale`` written beside a kernel (AWQ / SmoothQuant with gptq=)."""
  from jquant.ptq.nnx_model import NNXModel
  model, params, batches, _ = _setup(rng)
  m = NNXModel(model, params, batches[0])
  tree = m.params_tree(params)
  h, ctx = m.embed(tree, batches[0])
  y0 = m.apply_block(0, tree["layers"]["0"], h, ctx)
  s = jnp.asarray(rng.uniform(0.5, 2.0, (D,)), jnp.float32)
  up = tree["layers"]["0"]["up"]
  tree["layers"]["0"]["up"] = {"kernel": up["kernel"] * s[:, None], "input_scale": 1.0 / s}
  assert _rel(m.apply_block(0, tree["layers"]["0"], h, ctx), y0) < 1e-5
  assert _rel(m.forward_params(tree, batches[0]), _float(model, params, batches[0])) < 1e-5
