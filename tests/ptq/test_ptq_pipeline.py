"""quantize_model on tiny random models of both architectures: every method, quality vs RTN, sequential feeding."""

import jax
import numpy as np
import pytest

import jquant as jq
from jquant.ptq import pipeline
from tests.ptq import helpers as H

_ARCHS = {"llama": (H.tiny_llama, H.llama_batches), "bert": (H.tiny_bert, H.bert_batches)}


def _setup(arch, rng, n=3):
  make, batches = _ARCHS[arch]
  model, params = make(rng)
  return model, params, batches(rng, n=n)


def _methods(bits=4):
  s = H.spec(bits)
  return {"rtn": jq.ptq.RTN(s), "gptq_ao": jq.ptq.GPTQ(s, act_order=True), "awq": jq.ptq.AWQ(s),
          "awq_gptq": jq.ptq.AWQ(s, gptq=jq.ptq.GPTQ(s, act_order=True)), "sq": jq.ptq.SmoothQuant(),
          "int8": jq.ptq.LLMInt8()}


# Per-layer output SQNR floors (dB) and end-to-end relative-MSE ceilings per (arch, method), 4-bit g8 asymmetric.
# Measured over 201 seeds (20000+i, the test's own setup): worst layer's SQNR min / median / max and rel error
# median / max:
#   llama rtn     20.06 / 23.12 / 24.45 dB, rel 0.107 / 0.217     bert rtn     17.55 / 22.82 / 24.78 dB, rel 0.011 / 0.195
#   llama gptq_ao 21.86 / 26.09 / 28.31 dB, rel 0.059 / 0.133     bert gptq_ao 24.09 / 27.48 / 34.72 dB, rel 0.0015 / 0.076
#   llama awq     23.90 / 25.61 / 27.03 dB, rel 0.062 / 0.138     bert awq     22.42 / 26.62 / 28.60 dB, rel 0.0039 / 0.121
# awq_gptq (3 seeds: llama 27.1-27.4, bert 29.3-30.1 dB) takes the gptq_ao floors. Floors sit ~2.5-3 dB below the
# worst of 201 (~3 sd below it; a normal fit puts the floors beyond 5 sd below the median), ceilings ~1.5x the worst
# (the old ceiling 0.2 failed llama RTN on 2 of 201 seeds). 3-bit RTN measured 12.8-17.1 dB (worst layer), 2-bit
# 8.3-9.6 dB: both fail the 4-bit floors; so does a zero point off by one in a group. 8-bit (SmoothQuant W8A8,
# LLM.int8): 38.2-42.5 dB worst layer, rel <= 5.4e-3 over 4 seeds; floor 30 dB, ceiling 2e-2.
_FLOOR_DB = {("llama", "rtn"): 18.0, ("llama", "gptq_ao"): 19.0, ("llama", "awq"): 21.0, ("llama", "awq_gptq"): 19.0,
             ("bert", "rtn"): 15.0, ("bert", "gptq_ao"): 21.0, ("bert", "awq"): 19.5, ("bert", "awq_gptq"): 21.0}
_MAX_REL = {("llama", "rtn"): 0.3, ("llama", "gptq_ao"): 0.2, ("llama", "awq"): 0.2, ("llama", "awq_gptq"): 0.2,
            ("bert", "rtn"): 0.3, ("bert", "gptq_ao"): 0.15, ("bert", "awq"): 0.2, ("bert", "awq_gptq"): 0.15}


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("name", ["rtn", "gptq_ao", "awq", "awq_gptq", "sq", "int8"])
def test_every_method_runs_reports_and_stays_close(arch, name, rng):
  model, params, batches = _setup(arch, rng)
  method = _methods()[name]
  qparams, report = jq.ptq.quantize_model(model, params, batches, method, progress=False)
  paths = [f"{b}/{p}" for b in model.block_names() for g in model.linear_groups() for p in g]
  assert sorted(e.path for e in report.layers) == sorted(paths)
  bits = 8 if name in ("sq", "int8") else 4
  for e in report.layers:
    kernel = qparams[e.path.split("/")[0]]
    for part in e.path.split("/")[1:]:
      kernel = kernel[part]
    assert isinstance(kernel["kernel"], jq.QArray) and kernel["kernel"].qtype.bits == bits
    assert e.bits == bits and e.method == method.name and np.isfinite(e.sqnr_db) and e.seconds >= 0
    assert e.sqnr_db > (30.0 if bits == 8 else _FLOOR_DB[arch, name]), (e.path, e.sqnr_db)
    assert (e.loss is not None) == (name in ("gptq_ao", "awq_gptq"))
  assert report.bytes_after < report.bytes_before and report.calib_batches == 3
  err = H.rel_err(model, params, qparams, H.concat(batches), method)
  assert err < (2e-2 if bits == 8 else _MAX_REL[arch, name]), err
  assert report.layers[0].path in str(report)


def _errs(arch, bits, rng):
  model, params, batches = _setup(arch, rng, n=16)
  test = H.concat(_ARCHS[arch][1](rng, n=2))
  out = {}
  for name in ("rtn", "gptq_ao", "awq"):
    qp, _ = jq.ptq.quantize_model(model, params, batches, _methods(bits)[name], progress=False)
    out[name] = H.rel_err(model, params, qp, test)
  return out


# Solver vs RTN on the same draw: the geometric mean over _DRAWS fresh tiny models of err(solver) / err(RTN) must stay
# below these bounds (a solver replaced by RTN gives exactly 1.0 and fails). One tiny random model is a noisy
# benchmark: measured per draw (seeds 1000+i, 1000 draws at 4 bits, 300 at 3 bits) the ratio spans
#   llama 4-bit: GPTQ-AO 0.197 / 0.713 / 2.027 (min / median / max; 13.8% of draws worse than RTN), AWQ 0.224 / 0.611 / 1.665
#   bert  4-bit: GPTQ-AO 0.001 / 0.208 / 7.25 (7.6% worse), AWQ 0.015 / 0.402 / 25.8 (18.1% worse)
#   llama 3-bit: GPTQ-AO 0.359 / 0.732 / 1.398, AWQ 0.287 / 0.628 / 1.350
#   bert  3-bit: GPTQ-AO 0.003 / 0.201 / 6.51, AWQ 0.006 / 0.360 / 7.30
# (the old test, 4 draws with bound 1.0, failed with probability ~1e-3 on llama). Bounds: the 1 - 1e-4 quantile of
# the 20-draw geometric mean (bootstrap, 4M resamples of the measured draws; llama-4 GPTQ 0.924, AWQ 0.797; bert-4
# 0.527, 0.949; llama-3 0.874, 0.765; bert-3 0.520, 0.784), rounded up with margin: a correct implementation fails
# with probability < 1e-4.
_DRAWS = 20
_BEAT_RTN = {("llama", 4): {"gptq_ao": 0.95, "awq": 0.85}, ("bert", 4): {"gptq_ao": 0.6, "awq": 1.0},
             ("llama", 3): {"gptq_ao": 0.9, "awq": 0.8}, ("bert", 3): {"gptq_ao": 0.6, "awq": 0.85}}


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("bits", [4, pytest.param(3, marks=pytest.mark.slow)])
def test_gptq_and_awq_beat_rtn(arch, bits, rng):
  errs = [_errs(arch, bits, rng) for _ in range(_DRAWS)]
  for name, bound in _BEAT_RTN[arch, bits].items():
    ratio = float(np.exp(np.mean([np.log(e[name] / e["rtn"]) for e in errs])))
    assert ratio < bound, (name, ratio, bound, errs)


def _recorded_inputs(monkeypatch):
  seen = {}
  real = pipeline.capture_block

  def spy(model, i, block_params, hiddens, ctxs, paths, **kw):
    seen.setdefault(i, [np.asarray(h) for h in hiddens])
    return real(model, i, block_params, hiddens, ctxs, paths, **kw)

  monkeypatch.setattr(pipeline, "capture_block", spy)
  return seen


def _block1_inputs(model, params, batch):
  h, ctx = model.embed(params, batch)
  deq = jax.tree.map(lambda x: jq.dequantize(x) if isinstance(x, jq.QArray) else x, params,
                     is_leaf=lambda x: isinstance(x, jq.QArray))
  return np.asarray(model.apply_block(0, deq[model.block_names()[0]], h, ctx))


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_sequential_mode_feeds_quantized_block_outputs(arch, rng, monkeypatch):
  model, params, batches = _setup(arch, rng)
  seen = _recorded_inputs(monkeypatch)
  qparams, _ = jq.ptq.quantize_model(model, params, batches, _methods()["gptq_ao"], progress=False)
  got = seen[1][0]
  want_q = _block1_inputs(model, qparams, batches[0])
  want_fp = _block1_inputs(model, params, batches[0])
  np.testing.assert_allclose(got, want_q, rtol=1e-4, atol=1e-4)
  assert np.max(np.abs(got - want_fp)) > 100 * np.max(np.abs(got - want_q))


def test_awq_calibrates_on_float_block_outputs(rng, monkeypatch):
  model, params, batches = _setup("llama", rng)
  seen = _recorded_inputs(monkeypatch)
  jq.ptq.quantize_model(model, params, batches, _methods()["awq"], progress=False)
  # Same float32 block, evaluated jitted in the pipeline and eagerly here: the two orders differ by O(sqrt(K) eps)
  # per op over ~10 sequential ops (K <= 40), so atol = 64 eps32 max|ref| (~10 sqrt(40)). Measured over 250 seeds:
  # max|diff| / (eps32 max|ref|) = 0.86 / 2.99 / 9.47 (min / median / max); the old fixed atol 1e-5 failed on 1 in
  # ~100 seeds (max|ref| up to 95). Feeding the quantized block output instead differs by ~1e-2 max|ref|.
  want = _block1_inputs(model, params, batches[0])
  eps = float(np.finfo(np.float32).eps)
  np.testing.assert_allclose(seen[1][0], want, rtol=0, atol=64 * eps * np.abs(want).max())


def test_skip_leaves_layers_float(rng):
  model, params, batches = _setup("llama", rng)
  qparams, report = jq.ptq.quantize_model(model, params, batches, _methods()["gptq_ao"], skip=("*/mlp/down_proj",
                                                                                           "layers_0/*"),
                                          progress=False)
  assert "layers_1/mlp/down_proj" in report.skipped and "layers_0/self_attn/q_proj" in report.skipped
  assert not isinstance(qparams["layers_1"]["mlp"]["down_proj"]["kernel"], jq.QArray)
  assert isinstance(qparams["layers_1"]["mlp"]["up_proj"]["kernel"], jq.QArray)
  assert len(report.layers) == 6
  np.testing.assert_array_equal(qparams["layers_0"]["self_attn"]["q_proj"]["kernel"],
                                params["layers_0"]["self_attn"]["q_proj"]["kernel"])
  with pytest.raises(KeyError, match="layers_0/self_attn/q_proj"):
    report["layers_0/self_attn/q_proj"]


def _int8_rows_f32(x):
  """Per-row symmetric int8 codes and scales, rounded exactly as the kernels do (float32 x / s, half to even)."""
  x = np.asarray(x, np.float32)
  s = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
  s = np.where(s == 0, np.float32(1), s)
  return np.clip(np.round(x / s), -127, 127).astype(np.int64), s.astype(np.float64)


def _w8a8_oracle(x, qw, act):
  """NumPy W8A8: dynamic int8 activations (per token or per tensor) x int8 weights, exact integer accumulation."""
  x2 = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
  if act == "per_tensor":
    xq, sx = _int8_rows_f32(x2.reshape(1, -1))
    xq, sx = xq.reshape(x2.shape), sx.reshape(1, 1)
  else:
    xq, sx = _int8_rows_f32(x2)
  acc = xq @ np.asarray(qw.qvalue, np.int64)
  return acc * sx * np.asarray(qw.scale, np.float64), np.zeros_like(acc, np.float64)


def _llm_int8_oracle(x, qw, threshold):
  """NumPy LLM.int8(): inputs with |x| >= threshold go through the float path on the dequantized INT8 weight
  (bitsandbytes), the rest through vector-wise int8. Returns (y, |float part| bound for its rounding)."""
  x2 = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
  cols = (np.abs(x2) >= threshold).any(axis=0)
  xm = np.where(np.abs(x2) >= threshold, np.float32(0), x2)
  xq, sx = _int8_rows_f32(xm)
  xq[:, cols] = 0
  sw = np.asarray(qw.scale, np.float64)
  w_deq = np.asarray(qw.qvalue, np.float64) * sw
  xo = np.where(cols[None, :], x2.astype(np.float64), 0.0)
  return (xq @ np.asarray(qw.qvalue, np.int64)) * sx * sw + xo @ w_deq, np.abs(xo) @ np.abs(w_deq)


class _SpyMatmul:
  """Records every (x, kernel, y) the runtime model's matmul sees (hashable by identity)."""

  def __init__(self, inner):
    self.inner, self.calls = inner, []

  def __call__(self, x, kernel):
    y = self.inner(x, kernel)
    self.calls.append((np.asarray(x), kernel, np.asarray(y)))
    return y


def test_activation_methods_need_their_matmul(rng):
  # Every quantized linear of the runtime model runs the activation-quantized matmul: its outputs match a NumPy
  # oracle of W8A8 / LLM.int8 on the very inputs the runtime fed it. Tolerances: the int8 part is exact integer
  # accumulation times two float32 scale products (rtol 4 eps32); LLM.int8's float part is a K-term float32 dot
  # (error <= K eps32 sum|x||w|). (The old check asserted only 0 < max|runtime - weight-only|.)
  model, params, batches = _setup("llama", rng)
  batch = H.concat(batches)
  eps = float(np.finfo(np.float32).eps)
  for method in (jq.ptq.SmoothQuant(alpha=0.5), jq.ptq.SmoothQuant(alpha=0.5, act="per_tensor"),
                 jq.ptq.LLMInt8(threshold=2.0)):
    qparams, report = jq.ptq.quantize_model(model, params, batches, method, progress=False)
    rt = jq.ptq.runtime_model(model, method)
    assert rt.matmul == method.matmul and hash(rt.matmul) == hash(method.matmul)
    spy = _SpyMatmul(rt.matmul)
    with jax.disable_jit():
      out = np.asarray(type(model)(model.config, matmul=spy).apply(qparams, batch))
    np.testing.assert_allclose(out, np.asarray(rt.apply(qparams, batch)), rtol=2e-2, atol=2e-2 * np.abs(out).max())
    quantized = [(x, k, y) for x, k, y in spy.calls if isinstance(k, jq.QArray)]
    assert len(quantized) == len(report.layers), (len(quantized), len(report.layers))
    n_outlier_cols = 0
    for x, k, y in quantized:
      assert k.qtype == jq.INT8
      if isinstance(method, jq.ptq.LLMInt8):
        want, fp_mag = _llm_int8_oracle(x, k, method.threshold)
        n_outlier_cols += int(np.any(fp_mag > 0))
      else:
        want, fp_mag = _w8a8_oracle(x, k, method.act)
      tol = 4 * eps * np.abs(want) + x.shape[-1] * eps * fp_mag + 1e-30
      err = np.abs(np.asarray(y, np.float64).reshape(want.shape) - want)
      assert np.all(err <= tol), (method, float((err / tol).max()))
    if isinstance(method, jq.ptq.LLMInt8):
      assert n_outlier_cols > 0           # the threshold splits off outliers on these models (the float path runs)
  assert jq.ptq.runtime_model(model, _methods()["gptq_ao"]) is model


@pytest.mark.parametrize("arch,smoothed", [("llama", "mlp/down_proj"), ("bert", "output")])
def test_smoothquant_smooth_all_scales_previous_linear_groups_too(arch, smoothed, rng):
  model, params, batches = _setup(arch, rng)
  ref = jq.ptq.SmoothQuant()
  every = jq.ptq.SmoothQuant(smooth="all")
  _, rep_ref = jq.ptq.quantize_model(model, params, batches, ref, progress=False)
  qp, rep = jq.ptq.quantize_model(model, params, batches, every, progress=False)
  path = f"{model.block_names()[0]}/{smoothed}"
  assert "smooth_min" not in rep_ref[path].extra and "smooth_min" in rep[path].extra
  # every layer's SQNR is measured against the float layer through the folded scales (a missing out_div -> ~0 dB)
  assert min(e.sqnr_db for e in rep.layers) > 30.0
  assert H.rel_err(model, params, qp, H.concat(batches), every) < 2e-2


def test_smoothquant_rejects_unknown_smooth():
  with pytest.raises(ValueError, match="smooth must be 'norm'"):
    jq.ptq.SmoothQuant(smooth="everything")


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_smoothquant_with_gptq_runs_w8a8_kernels(arch, rng):
  # On tiny random models GPTQ at 8 bit is not reliably better than rounding end to end (errors ~1e-3 either way);
  # the gain is measured on SmolLM2 (Hamlet ppl 43.12 -> 42.90, benchmarks/RESULTS.md). Here: the path runs, stores
  # W8A8-ready INT8 kernels, reports GPTQ losses and stays as close to the float model as rounded W8A8.
  model, params, batches = _setup(arch, rng, n=8)
  solved = jq.ptq.SmoothQuant(smooth="all", gptq=jq.ptq.GPTQ(jq.ptq.SmoothQuant.weight_spec()))
  qs, rep = jq.ptq.quantize_model(model, params, batches, solved, progress=False)
  for e in rep.layers:
    leaf = qs[e.path.split("/")[0]]
    for part in e.path.split("/")[1:]:
      leaf = leaf[part]
    k = leaf["kernel"]
    assert k.qtype == jq.INT8 and k.zero_point is None and k.g_idx is None and k.scale.shape[0] == 1
    assert e.method == "smoothquant+gptq" and e.loss is not None and e.sqnr_db > 30.0
  assert H.rel_err(model, params, qs, H.concat(batches), solved) < 2e-2


def test_smoothquant_gptq_needs_the_w8a8_grid():
  with pytest.raises(ValueError, match="W8A8 weight grid"):
    jq.ptq.SmoothQuant(gptq=jq.ptq.GPTQ(H.spec(4)))
  with pytest.raises(ValueError, match="act_order"):
    jq.ptq.SmoothQuant(gptq=jq.ptq.GPTQ(jq.ptq.SmoothQuant.weight_spec(), act_order=True))
  with pytest.raises(TypeError, match="gptq must be"):
    jq.ptq.SmoothQuant(gptq="gptq")
