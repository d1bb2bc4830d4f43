"""Atomic writes: a file or a whole directory is written beside its target and renamed into place.

Readers never see a half-written checkpoint, a failure leaves the target as it was and removes the temporary
copy, and files get the mode a plain ``open(..., "w")`` would give (0o666 minus the umask; directories 0o777 minus
the umask) instead of ``tempfile``'s private 0o600.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_file(path):
  """Yields a temporary file name beside ``path``; on success it is renamed to ``path`` (replacing it)."""
  path = Path(os.fspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def atomic_directory(path, *, overwrite: bool = False):
  """Yields a fresh temporary directory beside ``path``; on success it becomes ``path``.

  With ``overwrite`` an existing ``path`` is replaced as a whole (no stale files from the old contents survive);
  without it, an existing non-empty ``path`` is a ValueError (checked before yielding, i.e. before any work).
  """
  path = Path(os.fspath(path)).absolute()
  check_output_dir(path, overwrite=overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    if path.exists():
      old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
      os.rmdir(old)
      os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def check_output_dir(path, *, overwrite: bool = False) -> None:
  """ValueError if ``path`` exists and is a non-empty directory (unless ``overwrite``) or is not a directory."""
  path = Path(os.fspath(path))
  if path.exists() and not path.is_dir():
    raise ValueError(f"output {str(path)!r} exists and is not a directory; choose another --out.")
  if path.is_dir() and any(path.iterdir()) and not overwrite:
    raise ValueError(f"output directory {str(path)!r} is not empty; pass --overwrite to replace it (its old "
                     "contents are removed), or choose another --out.")
