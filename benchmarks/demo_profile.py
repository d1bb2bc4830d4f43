"""Where `make demo` spends its time: per method, seconds in capture (block forwards + statistics), solve, transform
(AWQ / SmoothQuant scale searches), the block forwards that feed the next block, evaluation, and XLA compilation.

    python benchmarks/demo_profile.py [--model smollm2|minilm] [--methods rtn,gptq] [--out /tmp/demo_profile]

Runs ``python -m jquant demo`` in this process with timers around the pipeline's stages (results are blocked on, so
the times are wall times of the work, not of dispatch) and a listener on JAX's compile-time events. Prints one row
per demo row and the totals; the demo's own table and quality numbers are printed as usual. Times on a shared
machine move with its load: print ``uptime`` beside them and compare ratios (phase / total) between runs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jquant.cli import common, demo, registry  # noqa: E402  pylint: disable=wrong-import-position
from jquant.ptq import methods as ptq_methods  # noqa: E402  pylint: disable=wrong-import-position
from jquant.ptq import pipeline  # noqa: E402  pylint: disable=wrong-import-position

TIMES: collections.Counter = collections.Counter()
_STACK: list[str] = []     # the phase being timed (compile time inside it is also charged to "compile")


@contextlib.contextmanager
def phase(name: str):
  _STACK.append(name)
  t0 = time.perf_counter()
  try:
    yield
  finally:
    TIMES[name] += time.perf_counter() - t0
    _STACK.pop()


def timed(name: str, fn):
  def wrapper(*args, **kwargs):
    with phase(name):
      return jax.block_until_ready(fn(*args, **kwargs))
  return wrapper


def _on_event(event: str, secs: float, **_):
  if event.endswith("backend_compile_duration") or event.endswith("jaxpr_trace_duration") \
      or event.endswith("jaxpr_to_mlir_module_duration"):
    TIMES["compile"] += secs
    TIMES[f"compile in {_STACK[-1] if _STACK else 'other'}"] += secs


def _timed_evaluator(make):
  """A kind's evaluator factory whose evaluations are timed as "eval"."""
  return lambda *a: timed("eval", make(*a))


def instrument() -> None:
  pipeline.capture_block = timed("capture", pipeline.capture_block)
  pipeline.forward_block = timed("forward", pipeline.forward_block)
  pipeline._embed_all = timed("embed", pipeline._embed_all)          # pylint: disable=protected-access
  pipeline._sqnr = timed("report sqnr", pipeline._sqnr)              # pylint: disable=protected-access
  for cls in ptq_methods.METHODS:
    cls.solve = timed("solve", cls.solve)
    if "transform" in cls.__dict__:
      cls.transform = timed("transform", cls.transform)
  for kind in registry.KINDS.values():
    object.__setattr__(kind, "evaluator", _timed_evaluator(kind.evaluator))
  jax.monitoring.register_event_duration_secs_listener(_on_event)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="smollm2", choices=common.MODELS)
  ap.add_argument("--methods", default=None)
  ap.add_argument("--out", default="/tmp/demo_profile")
  args, rest = ap.parse_known_args()
  instrument()
  print(f"load: {os.getloadavg()}", flush=True)
  t0 = time.perf_counter()
  argv = ["--model", args.model, "--out", args.out] + (["--methods", args.methods] if args.methods else []) + rest
  p = argparse.ArgumentParser()
  demo.add_arguments(p)
  demo.run(p.parse_args(argv))
  total = time.perf_counter() - t0
  print(f"\nload: {os.getloadavg()}; demo wall {total:.1f} s")
  print("| phase | seconds | share |\n|---|---|---|")
  for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]):
    print(f"| {k} | {v:.1f} | {v / total:.0%} |")


if __name__ == "__main__":
  main()
