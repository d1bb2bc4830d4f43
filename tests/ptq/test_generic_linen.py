"""quantize_model / runtime_model on user-written Flax Linen models (Dense, DenseGeneral, Einsum; unrolled and
nn.scan-ned blocks): every linear reported, runtime == the dequantized model, solvers beat RTN, clear errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant as jq

D, H, V, T = 32, 4, 40, 16


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, mask):
    h = nn.RMSNorm(name="n1")(x)
    q = nn.DenseGeneral((H, D // H), name="q")(h)                       # 3-D kernel (D, H, hd)
    k = nn.DenseGeneral((H, D // H), name="k")(h)
    v = nn.Einsum((D, H, D // H), "btd,dnh->btnh", name="v")(h)         # einsum kernel
    a = jax.nn.softmax(jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(D // H) + mask, axis=-1)
    o = jnp.einsum("bnqk,bknh->bqnh", a, v)
    x = x + nn.DenseGeneral(D, axis=(-2, -1), name="o")(o)               # two-axis contraction
    h = nn.RMSNorm(name="n2")(x)
    g = nn.Dense(2 * D, use_bias=False, name="gate")(h)
    u = nn.Dense(2 * D, use_bias=False, name="up")(h)
    return x + nn.Dense(D, name="down")(jax.nn.silu(g) * u)


class ScanBody(nn.Module):
  @nn.compact
  def __call__(self, x, mask):
    return Block(name="block")(x, mask), None


class LM(nn.Module):
  scan: bool = False
  layers: int = 2

  @nn.compact
  def __call__(self, ids):
    x = nn.Embed(V, D, name="embed")(ids)
    t = ids.shape[1]
    mask = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -1e9)
    if self.scan:
      stack = nn.scan(ScanBody, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                      length=self.layers)
      x, _ = stack(name="layers")(x, mask)
    else:
      for i in range(self.layers):
        x = Block(name=f"layers_{i}")(x, mask)
    return nn.Dense(V, name="head")(nn.RMSNorm(name="norm")(x))


def _setup(scan, rng, n_batches=3):
  model = LM(scan=scan)
  ids = lambda: jnp.asarray(rng.integers(0, V, (4, T)), jnp.int32)
  params = model.init(jax.random.key(int(rng.integers(1 << 30))), ids())["params"]
  return model, params, [ids() for _ in range(n_batches)], ids()


W4 = jq.QuantSpec(qtype=jq.UINT4, granularity=jq.PerGroup(axis=0, size=8), symmetric=False)
LINEARS = ["q", "k", "v", "o", "gate", "up", "down"]


def _paths(scan):
  if scan:
    return [f"layers[{i}]/block/{p}" for i in range(2) for p in LINEARS] + ["head"]
  return [f"layers_{i}/{p}" for i in range(2) for p in LINEARS] + ["head"]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


METHODS = {
    "rtn": jq.ptq.RTN(W4),
    "gptq": jq.ptq.GPTQ(W4, act_order=True),
    "awq": jq.ptq.AWQ(W4),
    "smoothquant": jq.ptq.SmoothQuant(smooth="all"),
    "llm_int8": jq.ptq.LLMInt8(),
}


LAYOUTS = [False, pytest.param(True, marks=pytest.mark.slow)]   # the scanned path is also covered by the
                                                                 # scanned == unrolled test in the default suite


@pytest.mark.parametrize("scan", LAYOUTS, ids=["unrolled", "scan"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_linear_quantized_and_runtime_matches(name, scan, rng):
  model, params, batches, held = _setup(scan, rng)
  method = METHODS[name]
  qparams, report = jq.ptq.quantize_model(model, params, batches, method, progress=False)
  assert sorted(e.path for e in report.layers) == sorted(_paths(scan))
  assert report.unsupported == () and report.skipped == ()
  # QArrays keep each kernel's logical shape (stacked under nn.scan)
  flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for kp, leaf in jax.tree_util.tree_flatten_with_path(qparams, is_leaf=lambda a: isinstance(a, jq.QArray))[0]:
    if isinstance(leaf, jq.QArray):
      assert leaf.shape == flat_p[kp].shape, kp
  run = jq.ptq.runtime_model(model, method)
  y_run = jax.jit(run.apply)({"params": qparams}, held)
  y_deq = model.apply({"params": jq.dequantize_params(qparams)}, held)
  y_fp = model.apply({"params": params}, held)
  if name in ("rtn", "gptq", "awq"):
    # the runtime (jq.qdot on QArrays, input scales applied) computes the dequantized model; float32 rounding
    assert _rel(y_run, y_deq) < 1e-3
  else:
    # W8A8 / LLM.int8 quantize activations at run time: within the activation-quantization error. Over 60 seeds
    # (both methods) the SQNR was 31.2 +- 0.7 dB (min 29.3): the bound is 6 sd below the mean.
    sqnr = -20 * np.log10(_rel(y_run, y_fp))
    assert sqnr >= 26.5, sqnr


@pytest.mark.parametrize("scan", LAYOUTS, ids=["unrolled", "scan"])
def test_gptq_and_awq_beat_rtn_on_held_out_inputs(scan, rng):
  # 8 x 64 = 512 calibration tokens for K <= 64 (with ~100 tokens GPTQ can overfit the calibration set). Held out:
  # 1024 tokens. With 64 the error ratio GPTQ / RTN was 0.87 +- 0.06 (> 1 on ~3% of seeds); with 1024 it is
  # 0.849 +- 0.026 over 40 seeds (max 0.93), 5.7 sd below 1.
  model, params, batches, _ = _setup(scan, rng, n_batches=8)
  held = jnp.asarray(rng.integers(0, V, (64, T)), jnp.int32)
  y_fp = model.apply({"params": params}, held)
  err, sqnr = {}, {}
  for name in ("rtn", "gptq", "awq"):
    qparams, report = jq.ptq.quantize_model(model, params, batches, METHODS[name], progress=False)
    err[name] = _rel(model.apply({"params": jq.dequantize_params(qparams)}, held), y_fp)
    sqnr[name] = report.mean_sqnr_db()
  assert err["gptq"] < err["rtn"], err
  # What GPTQ minimises, the layer output error on the calibration tokens: +1.80 +- 0.12 dB over RTN (60 seeds)
  assert sqnr["gptq"] > sqnr["rtn"] + 0.5, sqnr
  # AWQ's scale search includes alpha = 0 (plain rounding) and minimises the group's output error on the
  # calibration tokens, so its per-layer output SQNR there is at least RTN's. (End to end on held-out inputs AWQ
  # beat RTN on one of two tiny random draws only: on random weights there are no salient channels to protect.)
  assert sqnr["awq"] > sqnr["rtn"], sqnr


def test_scanned_equals_unrolled_gptq(rng):
  """The same weights laid out unrolled and scanned give the same quantized kernels."""
  m_u, p_u, batches, _ = _setup(False, rng)
  m_s = LM(scan=True)
  p_s = dict(p_u)
  layers = [p_s.pop(f"layers_{i}") for i in range(2)]
  p_s["layers"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  method = jq.ptq.GPTQ(W4)
  q_u, _ = jq.ptq.quantize_model(m_u, p_u, batches, method, progress=False)
  q_s, _ = jq.ptq.quantize_model(m_s, p_s, batches, method, progress=False)
  for i in range(2):
    for lin in LINEARS:
      a = jq.dequantize(q_u[f"layers_{i}"][lin]["kernel"])
      b = jq.dequantize(q_s["layers"]["block"][lin]["kernel"])[i]
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(a))))


class WithConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3,), name="conv")(x)
    return nn.Dense(4, name="proj")(x)


def test_unsupported_layer_is_reported_not_skipped_silently(rng):
  model = WithConv()
  x = jnp.asarray(rng.normal(size=(2, 12, 8)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  spec = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
  qparams, report = jq.ptq.quantize_model(model, params, [x], jq.ptq.GPTQ(spec), progress=False)
  assert [e.path for e in report.layers] == ["proj"]
  assert [p for p, _ in report.unsupported] == ["conv"] and "Conv" in report.unsupported[0][1]
  assert "unsupported (float): conv" in str(report)
  assert isinstance(qparams["proj"]["kernel"], jq.QArray) and not isinstance(qparams["conv"]["kernel"], jq.QArray)


class NoLinear(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(name="ln")(x)


def test_bad_inputs_name_the_problem(rng):
  x = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
  nl = NoLinear()
  with pytest.raises(ValueError, match=r"no supported linear.*LayerNorm"):
    jq.ptq.quantize_model(nl, nl.init(jax.random.key(0), x)["params"], [x], jq.ptq.RTN(W4), progress=False)
  model, params, batches, _ = _setup(False, rng)
  with pytest.raises(ValueError, match=r"batch 0.*\(4, 16, 3\)"):
    jq.ptq.quantize_model(model, params, [jnp.zeros((4, 16, 3), jnp.float32)], jq.ptq.RTN(W4), progress=False)
  with pytest.raises(ValueError, match=r"blocks='nothing_\\\\d\+' matches no module"):
    jq.ptq.quantize_model(model, params, batches, jq.ptq.RTN(W4), blocks=r"nothing_\d+", progress=False)
  with pytest.raises(ValueError, match=r"group size 24 does not fit"):
    spec = W4.replace(granularity=jq.PerGroup(axis=0, size=24))
    jq.ptq.quantize_model(model, params, batches, jq.ptq.RTN(spec), progress=False)


def test_working_params_with_input_scale_run_as_the_runtime_does(rng):
  """AWQ / SmoothQuant with gptq= write kernel * s and input_scale = 1 / s into the working params before the
  solves: the block (and the whole model) must compute the same function, not ignore the extra param."""
  from jquant.ptq.linen_model import LinenModel
  model, params, batches, _ = _setup(False, rng)
  lm = LinenModel(model, params, batches[0])
  h, ctx = lm.embed(params, batches[0])
  bp = jax.tree.map(lambda a: a, params["layers_0"])
  y0 = lm.apply_block(0, bp, h, ctx)
  s = jnp.asarray(rng.uniform(0.5, 2.0, (D,)), jnp.float32)
  bp["up"] = {"kernel": bp["up"]["kernel"] * s[:, None], "input_scale": 1.0 / s}
  assert _rel(lm.apply_block(0, bp, h, ctx), y0) < 1e-5
  whole = dict(params, layers_0=bp)
  assert _rel(lm.forward_params(whole, batches[0]), lm.forward_params(params, batches[0])) < 1e-5


def test_runtime_runs_quantize_params_output(rng):
  """runtime_model(model) (no PTQ method) runs weight-only params from jq.quantize_params, whatever their rules:
  per-group on 2-D kernels (qdot), per-channel of the last axis only on N-D kernels (dequantized in the matmul)."""
  model, params, _, held = _setup(False, rng)
  w8_last = jq.QuantSpec(qtype=jq.INT8, granularity=jq.PerChannel(axis=-1))
  cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*/(gate|up|down)/kernel", W4), jq.QuantRule(r".*/kernel", w8_last)],
                       skip=[r".*bias", r".*scale", r"embed/.*"])
  qparams = jq.quantize_params(params, cfg)
  assert isinstance(qparams["layers_0"]["o"]["kernel"], jq.QArray)
  y_run = jax.jit(jq.ptq.runtime_model(model).apply)({"params": qparams}, held)
  y_deq = model.apply({"params": jq.dequantize_params(qparams)}, held)
  assert _rel(y_run, y_deq) < 1e-5
