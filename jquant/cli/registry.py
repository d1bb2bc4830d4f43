"""The CLI's model registry: one `ModelKind` per kind of model the commands know, in ``KINDS``.

A kind says how to load its built-in checkpoint, which Hugging Face architecture it runs, how to draw calibration
batches, how to evaluate (the metric lines ``eval`` prints, the first one being the headline), and its defaults
(group size, sample counts, the token-embedding path). ``quantize``, ``eval``, ``demo``, ``report`` and ``export``
look a model up here (`model_kind`, `load_model`) instead of branching on its name; a new kind is one entry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

__all__ = ["KINDS", "MODELS", "ModelKind", "load_model", "model_kind", "with_matmul"]


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """One kind of model.

  Attributes:
    name: the ``--model`` name of its built-in checkpoint (``smollm2``, ``minilm``).
    loader: name of the `jquant.models` function loading the built-in checkpoint (``loader(matmul=...)``).
    hf_kind: what `jquant.models.hf.hf_kind` says for a Hugging Face folder of this kind.
    default_group: ``--group-size`` default below 8 bits.
    embedding_path: the token embedding table in the params (SmolLM2's is also its tied LM head).
    calib_samples, demo_samples, report_samples: calibration samples for ``quantize``, ``demo`` and a data-free
      ``quantize --report`` / ``report --recompute`` (windows of 512 tokens or paragraphs: ``sample_unit``).
    metrics: ``(key, format, column)`` of each line ``eval`` prints, headline first; ``column``: its heading in the
      demo table (None: not a column).
    metric_label: the headline's axis label in the demo plot.
    causal_lm: a Llama-architecture LM (``--rotate``, ``eval --kv-cache``).
    vs_float: evaluating a quantized model compares it to the float model's outputs (encoders: embedding cosine).
    batches: ``(model, texts, num, seed) -> list of batches`` for calibration.
    evaluator: ``(model, ref_params, text, windows, paragraphs) -> f(model, params) -> {metric: value}``.
  """

  name: str
  loader: str
  hf_kind: str
  default_group: int
  embedding_path: str
  calib_samples: int
  demo_samples: int
  report_samples: int
  sample_unit: str
  metrics: tuple[tuple[str, str, str | None], ...]
  metric_label: str
  causal_lm: bool
  vs_float: bool
  batches: Callable[..., list] = dataclasses.field(repr=False)
  evaluator: Callable[..., Callable] = dataclasses.field(repr=False)

  @property
  def metric(self) -> str:
    """The headline metric (``ppl`` / ``mean_cos``)."""
    return self.metrics[0][0]

  @property
  def lower_is_better(self) -> bool:
    return self.metric == "ppl"

  def calibration_batches(self, model, *, calib_text: str | None = None, num: int | None = None,
                          seed: int = 0) -> list[Any]:
    """``num`` (default ``calib_samples``) calibration samples from the other plays (or ``calib_text``)."""
    from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
    texts = None if calib_text is None else [jeval.read_text(calib_text)]
    return self.batches(model, texts, num or self.calib_samples, seed)

  def evaluate(self, model, params, *, ref_params=None, text: str | None = None, windows: int = 8,
               paragraphs: int = 512) -> dict[str, float]:
    """The metrics of ``params`` on Hamlet (or ``text``); encoders compare to ``ref_params`` (None: to itself)."""
    return self.evaluator(model, ref_params, text, windows, paragraphs)(model, params)

  def format_metrics(self, metrics: dict[str, float]) -> list[str]:
    """``eval``'s output lines, e.g. ``["ppl 42.56", ...]``."""
    return [f"{k} {metrics[k]:{fmt}}" for k, fmt, _ in self.metrics if k in metrics]


def _lm_batches(model, texts, num, seed):
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
  wins = jeval.lm_calibration_windows(model, num, 512, seed=seed, texts=texts)
  return [wins[i:i + 4] for i in range(0, len(wins), 4)]


def _encoder_batches(model, texts, num, seed):
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
  paras = jeval.encoder_calibration_texts(num, seed=seed, texts=texts)
  return [model.encode_batch(paras[i:i + 32], pad_to=256) for i in range(0, len(paras), 32)]   # 256 = truncation


def _lm_evaluator(model, ref_params, text, windows, paragraphs):   # pylint: disable=unused-argument
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel

  def run(m, p):
    r = jeval.perplexity(m, p, text=text, windows=windows)
    return {"ppl": float(r.ppl), "nll_per_token": r.nll / r.n_predictions, "predictions": r.n_predictions}
  return run


def _encoder_evaluator(model, ref_params, text, windows, paragraphs):   # pylint: disable=unused-argument
  """Embedding fidelity against ``ref_params``' embeddings, computed once (the demo evaluates many params)."""
  from jquant import eval as jeval  # pylint: disable=import-outside-toplevel
  ref: list = []

  def run(m, p):
    if ref_params is not None and not ref:
      from jquant import assets  # pylint: disable=import-outside-toplevel
      paras = jeval.paragraphs(assets.shakespeare_text("hamlet") if text is None else text, n=paragraphs)
      ref.append(jeval.embed_texts(model, ref_params, paras) if len(paras) >= 2 else None)
    r = jeval.embedding_fidelity(m, p, text=text, n=paragraphs, ref_embeddings=ref[0] if ref else None)
    return {"mean_cos": r.mean_cos, "min_cos": r.min_cos, "top1_agree": r.top1_agree, "paragraphs": r.n}
  return run


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("smollm2", "load_smollm2", "llama", default_group=64, embedding_path="embed_tokens/embedding",
              calib_samples=32, demo_samples=16, report_samples=2, sample_unit="windows of 512 tokens",
              metrics=(("ppl", ".2f", "Hamlet ppl"), ("nll_per_token", ".4f", None), ("predictions", "d", None)),
              metric_label="Hamlet perplexity (log scale; lower is better)", causal_lm=True, vs_float=False,
              batches=_lm_batches, evaluator=_lm_evaluator),
    ModelKind("minilm", "load_minilm", "bert", default_group=128, embedding_path="embeddings/word_embeddings/embedding",
              calib_samples=256, demo_samples=128, report_samples=32, sample_unit="paragraphs",
              metrics=(("mean_cos", ".4f", "mean cos"), ("min_cos", ".4f", "min cos"), ("top1_agree", ".3f", "top-1 NN"),
                       ("paragraphs", "d", None)),
              metric_label="mean cosine to the fp32 embeddings (higher is better)", causal_lm=False, vs_float=True,
              batches=_encoder_batches, evaluator=_encoder_evaluator),
)}
MODELS: tuple[str, ...] = tuple(KINDS)


def _unknown(name: str) -> ValueError:
  return ValueError(f"unknown model {name!r}; choose one of {MODELS} or give a Hugging Face model folder "
                    f"(config.json, model.safetensors, tokenizer.json).")


def model_kind(name: str) -> ModelKind:
  """The kind of a built-in model name or a local Hugging Face folder (from its config.json)."""
  if name in KINDS:
    return KINDS[name]
  if not Path(name).is_dir():
    raise _unknown(name)
  from jquant.models import hf  # pylint: disable=import-outside-toplevel
  hf_kind = hf.hf_kind(name)
  for kind in KINDS.values():
    if kind.hf_kind == hf_kind:
      return kind
  raise ValueError(f"{name}: a {hf_kind!r} Hugging Face folder has no CLI model kind; known: {MODELS}.")


def load_model(name: str, matmul=None):
  """(model, float params) of a built-in model by name, or of a local Hugging Face folder
  (`jquant.models.from_pretrained`); ``matmul``: the runtime's activation-quantizing matmul (None: `jq.qdot`)."""
  from jquant import models  # pylint: disable=import-outside-toplevel
  if name in KINDS:
    return getattr(models, KINDS[name].loader)(matmul=matmul)
  if Path(name).is_dir():
    return models.from_pretrained(name, matmul=matmul)
  raise _unknown(name)


def with_matmul(model, matmul):
  """``model`` rebuilt to run every linear through ``matmul`` (None: ``model`` itself)."""
  return model if matmul is None else type(model)(model.config, matmul=matmul, tokenizer=model.tokenizer)
