"""jquant vs Qwix on a real model: the same float params, weight settings and calibration batches quantized by
Qwix's RTN / GPTQ / AWQ and by jquant's, side by side (quality and quantize time).

Usage (Qwix is not in the project venv; use a separate one with the same jax):
  python -m venv /work/bench-venv && /work/bench-venv/bin/pip install jax==0.11.2 jaxlib==0.11.2 qwix \
      flax optax chex safetensors tokenizers gguf tqdm matplotlib
  PYTHONPATH=/work/main /work/bench-venv/bin/python benchmarks/vs_qwix.py                       # MiniLM w4 g128
  PYTHONPATH=/work/main /work/bench-venv/bin/python benchmarks/vs_qwix.py --bits 3 --out /tmp/vs_qwix_w3.md
  PYTHONPATH=/work/main /work/bench-venv/bin/python benchmarks/vs_qwix.py --model smollm2        # w4 g64
  (the real-model assets must be importable: `python -m jquant fetch-assets` prints where they are.)

What is compared. One process loads the model (jquant's Flax Linen MiniLM or SmolLM2), builds the calibration
batches once (`jquant.cli.common.calibration_batches`) and then quantizes the same float params with
  * Qwix, through its own model-level API: `qwix.quantize_model` on the Linen module (which intercepts the model's
    `jax.lax.dot_general` calls), a `PtqProvider` model for the abstract quantized params, and
      - RTN:  `qwix.quantize_params`,
      - GPTQ: `qwix.contrib.gptq.GptqCalibrationProvider` (Hessians from the *float* model, single pass) +
              `gptq.quantize_params`,
      - AWQ:  `qwix.contrib.awq.AwqCalibrationProvider` (mean |x| per input channel) + `awq.quantize_params`;
  * jquant, through its public API: `jq.quantize_params` (RTN) and `jq.ptq.quantize_model` with `GPTQ` (with and
    without act-order, and on Qwix's symmetric grid), `AWQ` (with its clip search, and without it like Qwix).
Every result is evaluated with the same jquant evaluation (MiniLM: mean cosine to the fp32 embeddings of 512
Hamlet paragraphs; SmolLM2: Hamlet perplexity over 8 x 512 tokens): jquant's QArray params run as they are, Qwix's
QArrays are dequantized (AWQ: divided by its per-input-channel scale) into jquant's params tree.

Time is the wall time of the whole quantization call (calibration passes included), first call in this process
(tracing + compilation included), ended with `jax.block_until_ready`. Rows of one library that run later may reuse
programs an earlier row of the same library compiled. Ratios are jquant time / Qwix time for the matching method.

Qwix 0.1.8 grids: asymmetric ("minmax", 0 always in range) exists for int4/int8 only and its GPTQ crashes on it,
so each Qwix method first tries the asymmetric grid (like jquant's default UINT asymmetric grid) and falls back to
the symmetric one ("absmax", scale = absmax / (2^(b-1) - 0.5)); the row says which grid ran and why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

import jquant as jq  # noqa: E402
from jquant.cli import common  # noqa: E402

QWIX_MISSING = ("Qwix is not installed in this Python ({exe}); Qwix rows are skipped. Install it next to jquant's "
                "dependencies (same jax version), e.g.\n  python -m venv /work/bench-venv && "
                "/work/bench-venv/bin/pip install qwix jax==<jquant's jax> flax optax safetensors tokenizers gguf "
                "tqdm matplotlib\nand run  PYTHONPATH=<jquant checkout> /work/bench-venv/bin/python "
                "benchmarks/vs_qwix.py")

# Qwix rule regexes (re.fullmatch on the Linen module path) that pick exactly the linears jquant quantizes.
LINEAR_MODULES = {
    "minilm": r"layer_\d+/(attention/(query|key|value|output)|intermediate|output)",
    "smollm2": r"layers_\d+/(self_attn/(q_proj|k_proj|v_proj|o_proj)|mlp/(gate_proj|up_proj|down_proj))",
}
METHODS = ("rtn", "gptq", "awq")


# ----------------------------------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class Settings:
  model: str
  bits: int
  group: int | None
  calib_samples: int
  methods: tuple[str, ...]
  qwix_timeout: float
  skip_qwix: frozenset[str]


def parse_args(argv=None) -> Settings:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", default="minilm", choices=common.MODELS)
  p.add_argument("--bits", type=int, default=4, choices=(8, 4, 3))
  p.add_argument("--group-size", type=int, default=None,
                 help="input-axis group size (default 128 for minilm, 64 for smollm2; <= 0: per channel)")
  p.add_argument("--calib-samples", type=int, default=None,
                 help="MiniLM paragraphs (default 256) / SmolLM2 512-token windows (default 32)")
  p.add_argument("--methods", default="rtn,gptq,awq", help="comma-separated subset of rtn,gptq,awq")
  p.add_argument("--skip-qwix", default="", help="comma-separated Qwix methods not to run (e.g. gptq)")
  p.add_argument("--qwix-timeout", type=float, default=1800.0,
                 help="seconds per Qwix method before it is abandoned and reported as timed out (checked between "
                      "Python bytecodes, so a single long XLA compile overruns it)")
  p.add_argument("--out", default=None, metavar="FILE.md", help="also write the markdown report here")
  a = p.parse_args(argv)
  methods = tuple(m for m in a.methods.split(",") if m)
  bad = set(methods) - set(METHODS)
  if bad:
    p.error(f"--methods: unknown {sorted(bad)}; choose from {METHODS}")
  group = common.model_kind(a.model).default_group if a.group_size is None else (a.group_size if a.group_size > 0 else None)
  if a.bits == 8:
    group = None   # jquant's 8-bit weight spec is per output channel
  calib = a.calib_samples or {"minilm": 256, "smollm2": 32}[a.model]
  s = Settings(a.model, a.bits, group, calib, methods, a.qwix_timeout,
               frozenset(m for m in a.skip_qwix.split(",") if m))
  return s, a.out


# --------------------------------------------------------------------------------------------------------- rows

@dataclasses.dataclass
class Row:
  library: str
  method: str
  grid: str
  seconds: float | None = None
  quality: dict[str, float] | None = None
  status: str = "ok"
  note: str = ""


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


class MethodTimeout(Exception):
  pass


@contextlib.contextmanager
def time_limit(seconds: float):
  """Raises MethodTimeout in the main thread after ``seconds`` (SIGALRM; fires between Python bytecodes)."""
  if seconds <= 0 or not hasattr(signal, "SIGALRM"):
    yield
    return

  def _raise(signum, frame):
    raise MethodTimeout(f"timed out after {seconds:.0f} s")

  old = signal.signal(signal.SIGALRM, _raise)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def short_reason(e: BaseException) -> str:
  msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
  msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
  return msg if len(msg) <= 110 else msg[:107] + "..."


def log(msg: str) -> None:
  print(f"[vs_qwix] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- model + data

@dataclasses.dataclass
class Bench:
  name: str
  model: Any          # jquant BlockwiseModel (MiniLM / SmolLM2)
  params: Any         # float params (jax arrays)
  batches: list       # calibration batches, shared by both libraries
  evaluate: Any       # params -> metrics (MiniLM: against the fp32 embeddings, computed once)

  def module_args(self, batch) -> tuple:
    """Positional args of the Linen module's ``__call__`` for one calibration batch."""
    if self.name == "minilm":
      return (jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
              jnp.asarray(batch["token_type_ids"]))
    return (jnp.asarray(batch),)


def load_bench(s: Settings) -> Bench:
  log(f"loading {s.model}")
  kind = common.model_kind(s.model)
  model, params = common.load_model(s.model)
  params = jax.tree.map(jnp.asarray, params)
  batches = kind.calibration_batches(model, num=s.calib_samples)
  ev = kind.evaluator(model, params if kind.vs_float else None, None, 8, 512)
  return Bench(s.model, model, params, batches, lambda p: ev(model, p))


# ------------------------------------------------------------------------------------------------------ jquant

def jquant_spec(bits: int, group: int | None, symmetric: bool) -> jq.QuantSpec:
  if not symmetric:
    return common.weight_spec(bits, group)          # the CLI/demo grid: UINT asymmetric, 0 in range
  qtype = {8: jq.INT8, 4: jq.INT4, 3: jq.INT3}[bits]
  gran = jq.PerGroup(axis=0, size=group) if group else jq.PerChannel(axis=-1)
  return jq.QuantSpec(qtype=qtype, granularity=gran, symmetric=True)


def jquant_configs(s: Settings) -> list[tuple[str, str, str, Callable[[Bench], Any]]]:
  """(method key, label, grid, run(bench) -> qparams) for the jquant rows."""
  from jquant import ptq  # pylint: disable=import-outside-toplevel
  asym, sym = jquant_spec(s.bits, s.group, False), jquant_spec(s.bits, s.group, True)
  grid = lambda spec: f"{spec.qtype.name} {'sym' if spec.symmetric else 'asym'}"

  def rtn(spec):
    cfg = jq.QuantConfig(rules=[jq.QuantRule(r".*/kernel", spec)])
    return lambda b: jq.quantize_params(b.params, cfg)

  def pipeline(method):
    return lambda b: ptq.quantize_model(b.model, b.params, b.batches, method, progress=False)[0]

  out = []
  if "rtn" in s.methods:
    out += [("rtn", "RTN", grid(asym), rtn(asym)), ("rtn_sym", "RTN", grid(sym), rtn(sym))]
  if "gptq" in s.methods:
    out += [("gptq", "GPTQ", grid(asym), pipeline(ptq.GPTQ(asym))),
            ("gptq_sym", "GPTQ", grid(sym), pipeline(ptq.GPTQ(sym))),
            ("gptq_act", "GPTQ act-order", grid(asym), pipeline(ptq.GPTQ(asym, act_order=True)))]
  if "awq" in s.methods:
    out += [("awq", "AWQ (scale + clip search)", grid(asym), pipeline(ptq.AWQ(asym))),
            ("awq_noclip", "AWQ (scale search only)", grid(asym), pipeline(ptq.AWQ(asym, clip=False)))]
  return out


def run_jquant(s: Settings, bench: Bench) -> dict[str, Row]:
  rows = {}
  for key, label, grid, fn in jquant_configs(s):
    log(f"jquant {label} [{grid}]: quantizing")
    row = Row("jquant", label, grid)
    try:
      qparams, row.seconds = timed(lambda: fn(bench))
      row.quality = bench.evaluate(qparams)
    except Exception as e:  # pylint: disable=broad-except
      row.status = f"failed: {short_reason(e)}"
      traceback.print_exc()
    log(f"  -> {fmt_quality(row)} in {fmt_s(row.seconds)}")
    rows[key] = row
  return rows


# -------------------------------------------------------------------------------------------------------- Qwix

def import_qwix():
  try:
    import qwix  # pylint: disable=import-outside-toplevel
    from qwix.contrib import awq, gptq  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return None
  return qwix


@dataclasses.dataclass(frozen=True)
class QwixGrid:
  qtype: Any
  calibration: str          # "minmax" (asymmetric) or "absmax" (symmetric)

  @property
  def label(self) -> str:
    name = self.qtype if isinstance(self.qtype, str) else jnp.dtype(self.qtype).name
    return f"{name} {'asym' if self.calibration == 'minmax' else 'sym'}"


def qwix_grids(bits: int) -> list[QwixGrid]:
  """Grids to try in order: asymmetric first (jquant's default), then symmetric."""
  qtype = {8: jnp.int8, 4: jnp.int4}.get(bits, f"int{bits}")
  return [QwixGrid(qtype, "minmax"), QwixGrid(qtype, "absmax")]


class QwixRunner:
  """Qwix's model-level flow on jquant's Linen module.

  ``disable_jit=True`` on every provider: jquant's Linear calls ``jnp.matmul`` (itself jitted), and with jit left on
  Qwix's interception of ``jax.lax.dot_general`` only catches the first trace of each shape (3 of MiniLM's 36
  linears); with it, all 36 (or SmolLM2's 210) are intercepted.
  """

  def __init__(self, qwix, s: Settings, bench: Bench):
    self.qwix, self.s, self.bench = qwix, s, bench
    self.path_re = LINEAR_MODULES[s.model]
    self.tile = s.group
    self.progress: list[str] = []
    self.t_stats: float | None = None
    self.grid: QwixGrid | None = None      # the grid being tried (for a timed-out row)

  def rule_kwargs(self, grid: QwixGrid) -> dict[str, Any]:
    return dict(module_path=self.path_re, weight_qtype=grid.qtype, tile_size=self.tile,
                weight_calibration_method=grid.calibration)

  def abstract_params(self, grid: QwixGrid):
    """The PtqProvider model's abstract params: WithAux(how=...) at every linear kernel."""
    qwix = self.qwix
    model = qwix.quantize_model(self.bench.model.module,
                                qwix.PtqProvider([qwix.QtRule(**self.rule_kwargs(grid))], disable_jit=True))
    args = self.bench.module_args(self.bench.batches[0])
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    n = sum(type(x).__name__ == "WithAux" for x in jax.tree.leaves(abstract, is_leaf=_is_with_aux))
    if n == 0:
      raise RuntimeError("Qwix intercepted no linear of the model")
    return abstract

  def collect_stats(self, provider):
    """One float pass over the calibration batches with a Qwix calibration provider -> quant_stats."""
    model = self.qwix.quantize_model(self.bench.model.module, provider)
    stats = {}
    for batch in self.bench.batches:
      variables = {"params": self.bench.params, **({"quant_stats": stats} if stats else {})}
      _, upd = model.apply(variables, *self.bench.module_args(batch), mutable="quant_stats")
      stats = jax.block_until_ready(upd["quant_stats"])
    return stats

  def rtn(self, grid: QwixGrid):
    return self.qwix.quantize_params(self.bench.params, self.abstract_params(grid))

  def gptq_stats(self):
    from qwix.contrib import gptq  # pylint: disable=import-outside-toplevel
    rule = gptq.GptqRule(module_path=self.path_re)
    return self.collect_stats(gptq.GptqCalibrationProvider([rule], disable_jit=True))

  def gptq(self, grid: QwixGrid, stats):
    from qwix.contrib import gptq  # pylint: disable=import-outside-toplevel
    return gptq.quantize_params(self.bench.params, self.abstract_params(grid), stats,
                                gptq_block_size=128, gptq_damping_factor=0.01)

  def awq_stats(self):
    from qwix.contrib import awq  # pylint: disable=import-outside-toplevel
    rule = awq.AwqRule(module_path=self.path_re)
    return self.collect_stats(awq.AwqCalibrationProvider([rule], disable_jit=True))

  def awq(self, grid: QwixGrid, stats):
    from qwix.contrib import awq  # pylint: disable=import-outside-toplevel
    return awq.quantize_params(self.bench.params, self.abstract_params(grid), stats, n_grid=20)

  def run_method(self, method: str, grids: list[QwixGrid]) -> tuple[Any, float, QwixGrid, list[str]]:
    """Calibration (if any) + quantization, trying ``grids`` in order. Returns (qparams, seconds, grid, notes);
    seconds = calibration + the successful attempt (failed attempts are excluded and listed in notes)."""
    stats, t_stats = (None, 0.0)
    notes = self.progress = []          # kept on the runner so a timed-out row can still say how far it got
    self.t_stats, self.grid = None, None
    if method == "gptq":
      stats, t_stats = timed(self.gptq_stats)
    elif method == "awq":
      stats, t_stats = timed(self.awq_stats)
    if stats is not None:
      log(f"  Qwix {method} calibration pass: {t_stats:.1f} s")
      self.t_stats = t_stats
    for grid in grids:
      fn = {"rtn": lambda g=grid: self.rtn(g), "gptq": lambda g=grid: self.gptq(g, stats),
            "awq": lambda g=grid: self.awq(g, stats)}[method]
      self.grid = grid
      try:
        qparams, t = timed(fn)
      except MethodTimeout:
        raise
      except Exception as e:  # pylint: disable=broad-except
        notes.append(f"{grid.label} failed ({short_reason(e)})")
        log(f"  Qwix {method} on {grid.label} failed: {short_reason(e)}")
        continue
      if stats is not None:
        notes.append(f"calibration pass {t_stats:.1f} s + quantize_params {t:.1f} s")
      return qparams, t_stats + t, grid, list(notes)
    raise RuntimeError("; ".join(notes))


def _is_with_aux(x) -> bool:
  return type(x).__name__ in ("WithAux", "WithAwqScale")


def qwix_to_jquant(qwix, qparams):
  """Qwix's quantized params -> jquant's float params tree (dequantized kernels; AWQ: divided by its scale)."""
  def convert(leaf):
    if not _is_with_aux(leaf):
      return leaf
    w = qwix.dequantize(leaf.array)
    if type(leaf).__name__ == "WithAwqScale":
      shape = [1] * w.ndim
      shape[leaf.contracting_axis] = leaf.awq_scale.shape[0]
      w = w / leaf.awq_scale.reshape(shape)
    return w.astype(jnp.float32)
  return jax.tree.map(convert, qparams, is_leaf=_is_with_aux)


QWIX_LABELS = {"rtn": "RTN", "rtn_sym": "RTN", "gptq": "GPTQ (single pass, float Hessians)",
               "awq": "AWQ (scale search, no clip)"}


def qwix_configs(s: Settings) -> list[tuple[str, str, list[QwixGrid]]]:
  """(row key, Qwix method, grids to try) for the Qwix rows: asymmetric first, symmetric as the fallback; RTN
  also on the symmetric grid alone (the grid Qwix's GPTQ ends up on)."""
  asym, sym = qwix_grids(s.bits)
  out = []
  for m in s.methods:
    out.append((m, m, [asym, sym]))
    if m == "rtn":
      out.append(("rtn_sym", "rtn", [sym]))
  return out


def run_qwix(qwix, s: Settings, bench: Bench) -> dict[str, Row]:
  rows = {}
  runner = QwixRunner(qwix, s, bench)
  for key, method, grids in qwix_configs(s):
    row = Row("Qwix " + getattr(qwix, "__version__", "?"), QWIX_LABELS[key], "-")
    rows[key] = row
    if method in s.skip_qwix:
      row.status = "skipped (--skip-qwix)"
      continue
    log(f"Qwix {key}: quantizing")
    try:
      with time_limit(s.qwix_timeout):
        qparams, row.seconds, grid, notes = runner.run_method(method, grids)
      row.grid, row.note = grid.label, "; ".join(notes)
      row.quality = bench.evaluate(qwix_to_jquant(qwix, qparams))
    except MethodTimeout as e:
      row.status = f"failed: {e}"
      row.grid = runner.grid.label if runner.grid else "-"
      row.note = "; ".join(runner.progress + ([] if runner.t_stats is None else
                                              [f"its calibration pass took {runner.t_stats:.1f} s"]))
    except Exception as e:  # pylint: disable=broad-except
      row.status = f"failed: {short_reason(e)}"
      traceback.print_exc()
    log(f"  -> {fmt_quality(row) if row.quality else row.status} in {fmt_s(row.seconds)}")
  return rows


# ------------------------------------------------------------------------------------------------------ report

def fmt_s(x: float | None) -> str:
  return "-" if x is None else f"{x:.1f}"


def fmt_quality(row: Row) -> str:
  if row.quality is None:
    return row.status
  q = row.quality
  return f"ppl {q['ppl']:.2f}" if "ppl" in q else f"mean cos {q['mean_cos']:.4f}"


# jquant row key -> the Qwix method it is timed against
PAIRS = {"rtn": "rtn", "rtn_sym": "rtn_sym", "gptq": "gptq", "gptq_sym": "gptq", "gptq_act": "gptq", "awq": "awq",
         "awq_noclip": "awq"}


def table(s: Settings, ref: dict[str, float], qwix_rows: dict[str, Row], jq_rows: dict[str, Row]) -> str:
  minilm = s.model == "minilm"
  qcols = ["mean cos", "min cos", "top-1 NN"] if minilm else ["Hamlet ppl"]
  head = ["library", "method", "bits", "group", "grid"] + qcols + ["quantize time (s)", "jquant / Qwix time",
                                                                   "notes"]

  def qvals(q):
    if q is None:
      return ["-"] * len(qcols)
    return [f"{q['mean_cos']:.4f}", f"{q['min_cos']:.4f}", f"{q['top1_agree']:.3f}"] if minilm \
        else [f"{q['ppl']:.2f}"]

  g = s.group or "-"
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
           "| " + " | ".join(["-", "float (reference)", "32", "-", "fp32"] + qvals(ref) + ["-", "-", ""]) + " |"]
  order = [(k, r, None) for k, r in qwix_rows.items()] + [(k, r, PAIRS[k]) for k, r in jq_rows.items()]
  order.sort(key=lambda t: (METHODS.index(t[0].split("_")[0]), t[2] is not None))   # stable: keeps run order
  for key, r, pair in order:
    ratio = "-"
    other = qwix_rows.get(pair) if pair else None
    if other is not None and other.seconds and r.seconds:
      ratio = f"{r.seconds / other.seconds:.2f}x (vs Qwix {other.method.split(' ')[0]}, {other.grid})"
    note = r.note if r.status == "ok" else (r.status + ("; " + r.note if r.note else ""))
    lines.append("| " + " | ".join([r.library, r.method, str(s.bits), str(g), r.grid] + qvals(r.quality)
                                   + [fmt_s(r.seconds), ratio, note]) + " |")
  return "\n".join(lines)


def notes(s: Settings, qwix_ok: bool) -> str:
  calib = (f"{s.calib_samples} paragraphs from other plays, batches of 32 padded to 256 tokens" if s.model == "minilm"
           else f"{s.calib_samples} random 512-token windows from other plays, batches of 4")
  out = [
      f"Model {s.model}, {s.bits}-bit weights, group {s.group or 'per channel'} along the input axis; all "
      f"{'36 encoder' if s.model == 'minilm' else '210 block'} linears quantized, embeddings/norms fp32. "
      f"Calibration (both libraries, the same batches): {calib}.",
      "Like-for-like: same float params, same linears, same calibration batches, same group size, same "
      "evaluation; RTN asym is the same grid in both (Qwix int4 'minmax' with 0 in range = jquant UINT4 asym); "
      "GPTQ block 128, damping 0.01 in both; AWQ 20 grid points in both.",
      "Not like-for-like: (1) Qwix GPTQ is single pass (Hessians from the float model), jquant GPTQ is "
      "sequential block by block (Hessians from the inputs of the already-quantized earlier blocks); AWQ takes "
      "statistics from the float model in both; (2) Qwix's calibration sees every token of a batch (MiniLM "
      "padding tokens included), jquant's capture only the real tokens (the batch's attention mask); (3) Qwix "
      "AWQ's search is one exponent per layer on a diagonal proxy loss (mean |x| weighted weight error), has no "
      "clip search and keeps a per-input-channel scale next to each kernel (evaluated here as dequantize(W) / s); "
      "jquant AWQ searches per linear group on the exact output MSE (from the Gram matrix), folds the scale and "
      "searches clipping (the 'scale search only' row switches clipping off); (4) Qwix has no act-order; (5) "
      "where Qwix ran a "
      "symmetric grid (scale = absmax / (2^(b-1) - 0.5), clipped to [-2^(b-1), 2^(b-1)-1]) the jquant 'sym' "
      "rows use jquant's symmetric grid, which is close but not bit-identical.",
      "Times: wall clock, first call in this process (trace + compile + run), calibration passes included, "
      "ended with block_until_ready; Qwix providers run with disable_jit=True (needed for its interception "
      "to see every linear, see QwixRunner), so its calibration passes and solvers run op by op.",
  ]
  if not qwix_ok:
    out.append("Qwix was not installed: only jquant rows ran.")
  return "\n".join(f"- {x}" for x in out)


def main(argv=None) -> int:
  s, out_path = parse_args(argv)
  qwix = import_qwix()
  if qwix is None:
    log(QWIX_MISSING.format(exe=sys.executable))
  log(f"jax {jax.__version__}, devices {jax.devices()}, qwix {getattr(qwix, '__version__', 'not installed')}")
  bench = load_bench(s)
  log("evaluating the float reference")
  ref = bench.evaluate(bench.params)
  qwix_rows = run_qwix(qwix, s, bench) if qwix is not None else {}
  jq_rows = run_jquant(s, bench)
  md = "\n\n".join([f"### jquant vs Qwix: {s.model} w{s.bits} g{s.group or '-'} (benchmarks/vs_qwix.py)",
                    table(s, ref, qwix_rows, jq_rows), notes(s, qwix is not None)])
  print(md)
  if out_path:
    Path(out_path).write_text(md + "\n")
    log(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
