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
    assert e.sqnr_db > (30.0 if bits == 8 else 5.0)
    assert (e.loss is not None) == (name in ("gptq_ao", "awq_gptq"))
  assert report.bytes_after < report.bytes_before and report.calib_batches == 3
  err = H.rel_err(model, params, qparams, H.concat(batches), method)
  assert err < (2e-2 if bits == 8 else 0.2), err
  assert report.layers[0].path in str(report)


def _errs(arch, bits, rng):
  model, params, batches = _setup(arch, rng, n=16)
  test = H.concat(_ARCHS[arch][1](rng, n=2))
  out = {}
  for name in ("rtn", "gptq_ao", "awq"):
    qp, _ = jq.ptq.quantize_model(model, params, batches, _methods(bits)[name], progress=False)
    out[name] = H.rel_err(model, params, qp, test)
  return out


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("bits", [4, pytest.param(3, marks=pytest.mark.slow)])
def test_gptq_and_awq_beat_rtn(arch, bits, rng):
  # One tiny random model is a noisy benchmark (a single draw can favour RTN), so compare the geometric mean of the
  # error ratios over 4 fresh models (measured over 12 draws: 0.19 .. 0.82 for both methods).
  errs = [_errs(arch, bits, rng) for _ in range(4)]
  for name in ("gptq_ao", "awq"):
    ratio = float(np.exp(np.mean([np.log(e[name] / e["rtn"]) for e in errs])))
    assert ratio < 1.0, (name, ratio, errs)


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
  np.testing.assert_allclose(seen[1][0], _block1_inputs(model, params, batches[0]), rtol=1e-5, atol=1e-5)


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


def test_activation_methods_need_their_matmul(rng):
  model, params, batches = _setup("llama", rng)
  batch = H.concat(batches)
  for method in (jq.ptq.SmoothQuant(alpha=0.5), jq.ptq.LLMInt8(threshold=2.0)):
    qparams, _ = jq.ptq.quantize_model(model, params, batches, method, progress=False)
    rt = jq.ptq.runtime_model(model, method)
    assert rt.matmul == method.matmul and hash(rt.matmul) == hash(method.matmul)
    a = np.asarray(rt.apply(qparams, batch))
    b = np.asarray(model.apply(qparams, batch))      # weight-only int8: differs by the activation rounding
    assert 0 < np.max(np.abs(a - b))
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
