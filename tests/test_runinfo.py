"""Output directories: ``--overwrite`` replaces only what this tool wrote, never the working directory,
one of its parents or the home directory, and a refused or failed run leaves no temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from distilrubert.cli import main
from distilrubert.run_output import prepare_output
from distilrubert.runinfo import atomic_output_dir, check_output_dir, run_info, write_json
from distilrubert.trainer import TrainOptions


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "thesis.tex").write_text("chapter 1")
    return path


def _tool_output(path: Path) -> Path:
    with atomic_output_dir(path) as tmp:
        (tmp / "vocab.txt").write_text("old")
        write_json(tmp / "run.json", run_info("build-vocab", {}))
    return path


def test_overwrite_refuses_a_directory_the_tool_did_not_write(tmp_path):
    user = _user_dir(tmp_path / "docs")
    before = _files(tmp_path)
    refused = r"^--output .*docs: not written by distilrubert \(no run\.json"
    with pytest.raises(ValueError, match=refused), atomic_output_dir(user, overwrite=True) as tmp:
        (tmp / "x").write_text("x")
    # A run.json that is not this tool's record does not count either.
    (user / "run.json").write_text('{"name": "someone else"}')
    with pytest.raises(ValueError, match="not written by distilrubert"), atomic_output_dir(user, overwrite=True):
        pass
    (user / "run.json").unlink()
    assert _files(tmp_path) == before  # intact, and no .partial sibling left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_overwrite_replaces_a_directory_the_tool_wrote(tmp_path):
    out = _tool_output(tmp_path / "vocab")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "vocab.txt").write_text("new")
        write_json(tmp / "run.json", run_info("build-vocab", {}))
    assert (out / "vocab.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab"]


def test_build_vocab_refuses_the_working_directory_without_leaving_a_partial(tmp_path, monkeypatch, capsys):
    cwd = _tool_output(tmp_path / "here")  # even a directory this tool wrote
    monkeypatch.chdir(cwd)
    before = _files(tmp_path)
    assert main(["build-vocab", "--output", ".", "--overwrite", "--vocab-size", "300"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("distilrubert build-vocab: error: --output .: is the working directory or one of its parents; "
                   "it is never replaced (name a new directory)")
    assert _files(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


@pytest.mark.parametrize("output", ["..", "../.."])
def test_a_parent_of_the_working_directory_is_refused(tmp_path, monkeypatch, output):
    parent = _tool_output(tmp_path / "runs")
    (parent / "sub").mkdir()
    monkeypatch.chdir(parent / "sub")
    before = _files(tmp_path)
    refused = "is the working directory or one of its parents"
    with pytest.raises(ValueError, match=refused), atomic_output_dir(output, overwrite=True):
        pass
    assert _files(tmp_path) == before


def test_the_filesystem_root_is_refused_before_anything_is_written():
    # Only the check, never atomic_output_dir("/"): on a broken build that would write into / itself.
    with pytest.raises(ValueError, match="is the working directory or one of its parents"):
        check_output_dir("/", overwrite=True)


def test_the_home_directory_is_refused(tmp_path, monkeypatch):
    home = _tool_output(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    refused = "is the home directory; it is never replaced"
    with pytest.raises(ValueError, match=refused), atomic_output_dir(home, overwrite=True):
        pass
    assert (home / "vocab.txt").read_text() == "old"


def test_training_overwrite_replaces_only_runs_of_the_tool(tmp_path):
    user = _user_dir(tmp_path / "data")
    options = TrainOptions(corpus=["c.txt"], output=str(user), overwrite=True)
    with pytest.raises(ValueError, match="not written by distilrubert"):
        prepare_output(options)
    assert _files(user) == {"notes.txt": "my notes", "sub/thesis.tex": "chapter 1"}
    # An interrupted run (checkpoints only) and a finished one (run.json) are replaced.
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    assert prepare_output(TrainOptions(corpus=["c.txt"], output=str(run), overwrite=True)) is None
    assert not run.exists()
    finished = _tool_output(tmp_path / "finished")
    prepare_output(TrainOptions(corpus=["c.txt"], output=str(finished), overwrite=True))
    assert not finished.exists()
