"""bench end to end on tiny settings: a model directory and a preset, torch / onnx / onnx-int8."""

from __future__ import annotations

import json

import pytest

from distilrubert.bench import PRESETS, BenchConfig, model_flops
from distilrubert.cli import main


def test_bench_cli_writes_json_table_and_chart(tiny_student, sentence_file, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--models", f"{tiny_student},distilrubert-tiny-5k", "--backends", "torch,onnx,onnx-int8",
            "--output", str(out), "--sentences", str(sentence_file), "--tokenizer-corpus", str(sentence_file),
            "--seq-lengths", "16", "--batch-size", "4", "--corpus-size", "80", "--repeats", "2", "--warmup", "1",
            "--budget", "0.2", "--threads", "1"]
    assert main(args) == 0
    report = json.loads((out / "bench.json").read_text())
    assert [m["model"] for m in report["models"]] == [str(tiny_student), "distilrubert-tiny-5k"]
    assert report["threads"] == 1 and report["gemm"]["fp32_flops"] > 0 and "loadavg_start" in report
    assert report["versions"]["onnxruntime"]
    preset = report["models"][1]
    assert preset["parameters"] > 3_000_000 and preset["source"].startswith("preset")
    assert preset["export"]["max_abs_diff_fp32_vs_torch"] < 1e-4
    for entry in report["models"]:
        assert set(entry["backends"]) == {"torch", "onnx", "onnx-int8"}
        # The eager one-text reference ran before and after the backends; the faster run is the reference.
        runs = entry["baseline"]["encodechka_runs"]
        assert len(runs) == 2 and entry["baseline"]["encodechka"] == min(runs, key=lambda r: r["ms_per_text"])
        for result in entry["backends"].values():
            assert "error" not in result
            assert {(r["seq"], r["batch"]) for r in result["synthetic"]} == {(16, 1), (16, 4)}
            assert result["encodechka"]["texts"] >= 10 and result["corpus"]["texts"] >= 40
            assert result["encodechka"]["speedup_vs_eager"] > 0 and result["corpus"]["pct_fp32_matmul_limit"] > 0
    table = (out / "bench.md").read_text()
    assert "| distilrubert-tiny-5k | onnx-int8 |" in table and "eager (transformers)" in table
    assert (out / "bench.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["command"] == "bench"


def test_the_faster_eager_run_is_the_reference():
    from distilrubert.bench import use_faster_eager

    slow, fast = {"ms_per_text": 9.0, "median_ms": 5.0}, {"ms_per_text": 5.5, "median_ms": 5.1}
    for first, second in ((slow, fast), (fast, slow)):
        baseline = {"encodechka": first}
        use_faster_eager(baseline, second)
        assert baseline["encodechka"] is fast and baseline["encodechka_runs"] == [first, second]


def test_bench_config_validation(sentence_file, tmp_path):
    with pytest.raises(ValueError, match="--backends"):
        BenchConfig(output=str(tmp_path), backends=["tensorrt"], sentences=str(sentence_file))
    with pytest.raises(ValueError, match="--models"):
        BenchConfig(output=str(tmp_path), models=["no-such-preset"], sentences=str(sentence_file))
    with pytest.raises(ValueError, match="--sentences"):
        BenchConfig(output=str(tmp_path), sentences=str(tmp_path / "missing.txt"))
    config = BenchConfig(output=str(tmp_path), models=["teacher,rubert-tiny2"], sentences=str(sentence_file))
    assert config.models == ["teacher", "rubert-tiny2"]


def test_flops_of_the_5k_shape_match_the_issue():
    from transformers import DistilBertConfig

    config = DistilBertConfig(**PRESETS["distilrubert-tiny-5k"][1])
    # ~4.2 MFLOP per token in the dense layers, plus attention that grows with length.
    assert 4.1e6 < model_flops(config, 1) < 4.3e6
    assert model_flops(config, 64) > 64 * model_flops(config, 1)
