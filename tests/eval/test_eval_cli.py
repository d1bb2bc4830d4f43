"""``python -m jquant``: argument handling, errors to stderr with non-zero exit, metric lines on stdout."""

import pytest

from jquant import assets
from jquant.cli import main


def test_no_command_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as e:
    main([])
  assert e.value.code == 2
  assert "COMMAND" in capsys.readouterr().err


def test_eval_unknown_model_is_an_error_naming_the_choices(capsys):
  # --model takes a name or a Hugging Face folder, so an unknown name is one error line, not an argparse choice
  assert main(["eval", "--model", "gpt5"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: unknown model 'gpt5'") and "smollm2" in err and "Hugging Face model folder" in err


def test_eval_missing_text_file(tmp_path, capsys):
  rc = main(["eval", "--model", "smollm2", "--text", str(tmp_path / "nope.txt")])
  out = capsys.readouterr()
  assert rc == 1 and out.out == ""
  assert out.err.startswith("error: text file") and "does not exist" in out.err


def test_eval_bad_window_count(capsys):
  assert main(["eval", "--model", "smollm2", "--windows", "0"]) == 1
  assert "--windows must be >= 1" in capsys.readouterr().err


@pytest.mark.assets
def test_eval_minilm_on_a_small_file(tmp_path, capsys, rng):
  try:
    assets.minilm_dir()
  except assets.AssetError as e:
    pytest.skip(f"MiniLM asset unavailable: {e}")
  words = "the king is dead and the queen weeps while the prince broods alone tonight".split()
  text = "\n\n".join(" ".join(rng.choice(words, size=int(n))) for n in rng.integers(8, 30, size=5))
  (tmp_path / "t.txt").write_text(text)
  assert main(["eval", "--model", "minilm", "--text", str(tmp_path / "t.txt")]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "mean_cos 1.0000" and lines[2] == "top1_agree 1.000" and lines[3] == "paragraphs 5"


@pytest.mark.assets
def test_fetch_assets_is_a_fast_noop_when_present(capsys):
  try:
    assets.fetch_all()
  except assets.AssetError as e:
    pytest.skip(f"assets unavailable: {e}")
  capsys.readouterr()
  assert main(["fetch-assets"]) == 0
  out = capsys.readouterr()
  assert [l.split()[0] for l in out.out.splitlines()] == ["minilm", "smollm2", "shakespeare"]
  assert "fetching" not in out.err
