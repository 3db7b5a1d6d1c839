"""The console script end to end on tiny inputs (subprocess for --help, in-process for the verbs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distilrubert.cli import COMMANDS, main


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "distilrubert", "--help"], capture_output=True, text=True,
                            check=True)
    for command in COMMANDS:
        assert command.name in result.stdout


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_each_command_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    # Every verb that writes files takes --output; `serve` writes nothing and takes --model / --port.
    assert ("--port" in out) if command == "serve" else ("--output" in out)


def test_build_vocab_and_init_student_end_to_end(tiny_corpus, teacher_dir, tmp_path):
    vocab = tmp_path / "vocab"
    assert main(["build-vocab", "--corpus", str(tiny_corpus), "--vocab-size", "250", "--min-frequency", "1",
                 "--sizes", "230,300", "--output", str(vocab)]) == 0
    assert len((vocab / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 250
    assert [r["vocab_size"] for r in json.loads((vocab / "vocab_report.json").read_text())["sizes"]] == [230, 250, 300]
    student = tmp_path / "student"
    assert main(["init-student", "--teacher", str(teacher_dir), "--vocab", str(vocab), "--output", str(student),
                 "--layers", "2", "--dim", "24", "--heads", "4", "--ffn", "48", "--max-position-embeddings",
                 "64"]) == 0
    config = json.loads((student / "config.json").read_text())
    assert (config["model_type"], config["dim"], config["n_layers"], config["vocab_size"]) == ("distilbert", 24, 2, 250)
    # The acceptance one-liner, offline, in a fresh interpreter.
    code = (f"from transformers import AutoModel, AutoTokenizer; m=AutoModel.from_pretrained({str(student)!r}); "
            f"t=AutoTokenizer.from_pretrained({str(student)!r}); "
            "print(m(**t('Привет, мир', return_tensors='pt')).last_hidden_state.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert out.strip().startswith("torch.Size([1,") and out.strip().endswith(", 24])")


def test_recipe_file_and_flag_override(tiny_corpus, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"corpus: [{tiny_corpus}]\nvocab-size: 220\nmin_frequency: 1\noutput: {tmp_path / 'a'}\n")
    assert main(["build-vocab", "--config", str(recipe), "--vocab-size", "230"]) == 0
    assert len((tmp_path / "a" / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 230


def test_unknown_recipe_key_and_missing_option(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("vocab_sise: 10\n")
    with pytest.raises(SystemExit) as exc:
        main(["build-vocab", "--config", str(recipe), "--corpus", "x", "--output", "y"])
    assert exc.value.code == 2
    assert "unknown option 'vocab_sise'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["build-vocab", "--corpus", "x"])
    assert "build-vocab: missing required option(s): --output" in capsys.readouterr().err


def test_bad_corpus_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    assert main(["build-vocab", "--corpus", str(bad), "--output", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err
    assert not (tmp_path / "v").exists()
