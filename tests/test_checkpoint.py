"""Training checkpoints: no pickles run at resume, a corrupt newest checkpoint falls back, a changed run is refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from distilrubert.checkpoint import check_files, select_checkpoint
from distilrubert.cli import main

STEPS = ("step-00000002", "step-00000004", "step-00000006")


def _pretrain(vocab: Path, corpus: Path, out: Path, cache: Path, *extra: str) -> int:
    return main(["pretrain", "--vocab", str(vocab), "--model-type", "distilbert", "--layers", "1", "--dim", "16",
                 "--heads", "2", "--ffn", "32", "--max-position-embeddings", "64", "--corpus", str(corpus),
                 "--output", str(out), "--cache-dir", str(cache), "--batch-size", "8", "--max-length", "64",
                 "--lr", "3e-3", "--valid-fraction", "0.1", "--eval-every", "0", "--save-every", "2",
                 "--keep-checkpoints", "3", "--log-every", "1", "--no-progress", *extra])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, _student_vocab_dir, tiny_corpus) -> Path:
    """A 6-step run with checkpoints at 2, 4, 6 whose final files are gone (as if killed after the last one)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = root / "run"
    assert _pretrain(_student_vocab_dir, tiny_corpus, out, root / "cache", "--max-steps", "6") == 0
    for path in out.iterdir():
        if path.name not in ("checkpoints", "metrics.jsonl"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == list(STEPS)
    return out


@pytest.fixture
def run(interrupted, tmp_path, _student_vocab_dir, tiny_corpus):
    """A fresh copy of the interrupted run and a function that resumes it (returns the exit code)."""
    out = Path(shutil.copytree(interrupted, tmp_path / "run"))

    def resume(*extra: str) -> int:
        return _pretrain(_student_vocab_dir, tiny_corpus, out, tmp_path / "cache", "--max-steps", "6", *extra)

    return out, resume


class _Planted:
    """A pickle whose loading writes a marker file (what an attacker's object would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoints_hold_no_pickles(interrupted):
    for step in STEPS:
        files = sorted((interrupted / "checkpoints" / step).iterdir())
        assert {p.suffix for p in files} == {".json", ".safetensors"}
        assert all(not p.read_bytes().startswith(b"\x80") for p in files)  # pickle protocol 2+ magic
        manifest = json.loads((interrupted / "checkpoints" / step / "manifest.json").read_text())
        assert set(manifest["files"]) == {p.name for p in files} - {"manifest.json"}


def test_a_planted_pickle_is_refused_and_never_loaded(run, tmp_path, capsys):
    import torch

    out, resume = run
    marker = tmp_path / "marker"
    newest = out / "checkpoints" / STEPS[-1]
    torch.save(_Planted(marker), newest / "custom_checkpoint_0.pkl")  # accelerate's name for registered state
    assert resume() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "custom_checkpoint_0.pkl: not a file distilrubert checkpoints hold" in err[0]
    assert not marker.exists()
    assert not (out / "run.json").exists()
    with pytest.raises(ValueError, match=r"custom_checkpoint_0\.pkl: .*never pickles"):
        check_files(newest)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer_state.json"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(run, name, caplog):
    out, resume = run
    path = out / "checkpoints" / STEPS[-1] / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        assert resume() == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(STEPS[-1] in w and name in w and "falling back" in w for w in warnings), warnings
    assert any(f"resumed from {out / 'checkpoints' / STEPS[1]} (step 4)" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "run.json").read_text())["steps"] == 6
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if "split" not in r] == [1, 2, 3, 4, 5, 6]  # 5, 6 trained again


def test_no_usable_checkpoint_is_refused(run, capsys):
    out, resume = run
    for step in STEPS[:2]:
        (out / "checkpoints" / step / "manifest.json").unlink()
    (out / "checkpoints" / STEPS[2] / "optimizer.json").write_text("{}")
    assert resume() == 1
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "no manifest.json" in err and "optimizer.json has 2 bytes" in err
    assert "--overwrite" in err and not (out / "run.json").exists()
    with pytest.raises(ValueError, match="no usable checkpoint"):
        select_checkpoint(out)



def test_a_checkpoint_left_corrupt_is_dropped_not_kept_instead_of_good_ones(run):
    out, resume = run
    path = out / "checkpoints" / STEPS[-1] / "model.safetensors"
    path.write_bytes(b"")
    # Resumed from step 4 with one checkpoint kept: step 5's must survive, the corrupt step 6 go.
    assert resume("--max-steps", "5", "--save-every", "1", "--keep-checkpoints", "1") == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000005"]
    assert select_checkpoint(out) == out / "checkpoints" / "step-00000005"


def test_a_changed_run_is_refused_unless_forced(run, capsys, caplog):
    out, resume = run
    assert resume("--lr", "1e-2", "--seed", "7") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "other settings: lr 0.003 -> 0.01, seed 42 -> 7 (pass --force-resume" in err[0]
    assert not (out / "run.json").exists()
    with caplog.at_level(logging.INFO):
        assert resume("--lr", "1e-2", "--seed", "7", "--force-resume") == 0
    assert any("--force-resume" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    info = json.loads((out / "run.json").read_text())
    assert info["forced_resumes"] == [{"step": 6, "from": str(out / "checkpoints" / STEPS[-1]),
                                       "differences": {"lr": [0.003, 0.01], "seed": [42, 7]}}]


def test_run_control_options_may_change_at_resume(run):
    out, resume = run
    # --max-steps / --save-every / --log-every steer the run without defining it: no refusal, nothing forced.
    assert resume("--max-steps", "8", "--save-every", "4", "--log-every", "3") == 0
    info = json.loads((out / "run.json").read_text())
    assert info["steps"] == 8 and "forced_resumes" not in info
