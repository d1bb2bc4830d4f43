"""``python -m jquant``: one module per subcommand.

Each subcommand module defines ``NAME``, ``HELP``, ``EPILOG`` (2-3 worked examples ending its ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``. To add
one (``demo``, ``quantize``, ``report``), create ``jquant/cli/<name>.py`` and list it in ``SUBCOMMANDS``.
Results go to stdout; progress and errors go to stderr; failures exit non-zero. Models are looked up in
``registry`` (one `ModelKind` per model kind); ``common`` builds methods and reads / writes checkpoint folders.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Module names under jquant.cli, in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = ("demo", "quantize", "eval", "report", "export", "fetch_assets")


EPILOG = """examples:
  make demo                                          # every method on SmolLM2: table + plot in demo_out/
  python -m jquant quantize --model smollm2 --method gptq --bits 4 --act-order --grid mse --out q/
  python -m jquant eval q/ && python -m jquant report q/ --budget-mb 80

'python -m jquant COMMAND --help' shows each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m jquant", description="jquant: quantize JAX/Flax models (see "
                                   "README.md).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for mod_name in SUBCOMMANDS:
    mod = importlib.import_module(f"jquant.cli.{mod_name}")
    p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, epilog=mod.EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(p)
    p.set_defaults(_run=mod.run)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses ``argv`` and runs the subcommand. Returns the exit code.

  ``ValueError``/``TypeError``/``RuntimeError``/``OSError`` raised by a subcommand are printed to stderr as
  ``error: ...`` with exit code 1 (argparse usage errors exit 2).
  """
  args = build_parser().parse_args(argv)
  try:
    return int(args._run(args) or 0)
  except (ValueError, TypeError, RuntimeError, OSError, NotImplementedError) as e:
    print(f"error: {_one_line(str(e))}", file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except  # still one line and exit 1, never a traceback
    print(f"error: unexpected {type(e).__name__}: {_one_line(str(e))} (please report this)", file=sys.stderr)
    return 1


def _one_line(msg: str) -> str:
  return " ".join(msg.split()) or "(no message)"
