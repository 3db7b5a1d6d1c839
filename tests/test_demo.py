"""`distilrubert demo` end to end on a tiny teacher and corpus; the embedded reference-model lookup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distilrubert.cli import main


@pytest.fixture
def wide_teacher(_teacher_dir, tmp_path) -> Path:
    """A 2-layer BERT as wide as the default student (264 hidden, 12 heads), with the tiny teacher's tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    out = tmp_path / "wide-teacher"
    shutil.copytree(_teacher_dir, out)
    config = BertConfig.from_pretrained(out)
    config.update({"hidden_size": 264, "num_attention_heads": 12, "intermediate_size": 528})
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(out)
    return out


def test_demo_runs_every_step_writes_report_and_resumes(wide_teacher, tiny_corpus, tmp_path, caplog):
    out = tmp_path / "demo"
    argv = ["demo", "--output", str(out), "--teacher", str(wide_teacher), "--corpus", str(tiny_corpus),
            "--vocab-size", "300", "--steps", "3", "--batch-size", "8", "--data-dir", str(tmp_path / "absent"),
            "--max-examples", "60", "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    names = [row["name"] for row in results["rows"]]
    assert names == ["teacher", "distill-match", "distill-reduce", "mlm-only", "student-random"]
    for row in results["rows"]:
        assert set(row["scores"]) == {"REG"}  # no encodechka directory: the built-in held-out probe
        assert 0.0 <= row["scores"]["REG"] <= 1.0 and row["ms_per_text"] > 0
    trained = {row["name"]: row for row in results["rows"] if row["valid_mlm"] is not None}
    assert set(trained) == {"distill-match", "distill-reduce", "mlm-only"}
    assert {json.loads((out / n / "run.json").read_text())["steps"] for n in trained} == {3}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 5K student, distilled (reduce) |" in report and "## Verdict" in report
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "quality_speed_size.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["command"] == "demo"

    # Rerun after losing one evaluation: finished steps are skipped, only the missing one runs again.
    (out / "eval" / "mlm-only.json").unlink()
    before = (out / "distill-match" / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="distilrubert.demo"):
        assert main(argv) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("done already" in m for m in messages) == 10
    assert any(m.startswith("[10/11] evaluate mlm-only ->") for m in messages)
    assert (out / "distill-match" / "model.safetensors").stat().st_mtime_ns == before
    assert (out / "eval" / "mlm-only.json").is_file()


def test_demo_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


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
