"""`distill` and `pretrain` end to end on a tiny teacher: learning, resume after SIGKILL, DDP, cache, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distilrubert.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, _teacher_dir, _student_vocab_dir) -> tuple[Path, Path]:
    """A tiny teacher with a peaked output distribution (a random one is near-uniform) and its student."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from distilrubert.student_init import InitStudentConfig, init_student

    root = tmp_path_factory.mktemp("distill-models")
    teacher = AutoModelForMaskedLM.from_pretrained(str(_teacher_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bias = teacher.cls.predictions.bias
        bias.copy_(torch.randn(bias.shape, generator=generator) * 3.0)
    teacher.save_pretrained(root / "teacher")
    AutoTokenizer.from_pretrained(str(_teacher_dir)).save_pretrained(root / "teacher")
    init_student(InitStudentConfig(teacher=str(root / "teacher"), vocab=str(_student_vocab_dir),
                                   output=str(root / "student"), dim=16, heads=2, ffn=40, layers=2,
                                   max_position_embeddings=128))
    return root / "teacher", root / "student"


def _args(models, corpus, output, cache, *extra) -> list[str]:
    teacher, student = models
    return ["distill", "--teacher", str(teacher), "--student", str(student), "--corpus", str(corpus),
            "--output", str(output), "--cache-dir", str(cache), "--batch-size", "8", "--max-length", "64",
            "--valid-fraction", "0.1", "--lr", "3e-3", "--no-progress", *extra]


def _metrics(output: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in lines if "split" not in r], [r for r in lines if r.get("split") == "valid"]


@pytest.mark.parametrize("alignment", ["match", "reduce"])
def test_distill_learns_with_each_alignment(tmp_path, models, tiny_corpus, alignment):
    out = tmp_path / "out"
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", alignment, "--max-steps", "40",
                      "--log-every", "1", "--eval-every", "20", "--save-every", "20")) == 0
    train, valid = _metrics(out)
    assert [r["step"] for r in valid] == [0, 20, 40]
    assert valid[-1]["valid_kl"] < valid[0]["valid_kl"]
    first = sum(r["loss"] for r in train[:5]) / 5
    last = sum(r["loss"] for r in train[-5:]) / 5
    assert last < first
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(str(out))
    assert model.config.model_type == "distilbert"
    AutoTokenizer.from_pretrained(str(out))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"`{alignment}`" in card and "Final validation" in card and "valid_kl" in card
    report = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert report["steps"] == 40 and report["alignment"] == alignment
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["command"] == "distill"
    # A finished run is not overwritten by accident.
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--max-steps", "2")) == 1


def test_native_reduce_kernel_trains_like_the_torch_kernels(tmp_path, models, tiny_corpus):
    finals = {}
    for kernel in ("native", "off"):
        out = tmp_path / kernel
        assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", "reduce", "--max-steps", "12",
                          "--eval-every", "6", "--save-every", "0", "--fused-kl", kernel)) == 0
        report = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
        assert report["kl_kernel"] == ("native" if kernel == "native" else "eager")
        _, valid = _metrics(out)
        assert valid[-1]["valid_kl"] < valid[0]["valid_kl"]
        finals[kernel] = valid[-1]
    # Same seed, same data: the two kernels differ only by float rounding.
    assert finals["native"]["valid_kl"] == pytest.approx(finals["off"]["valid_kl"], rel=1e-3)
    assert finals["native"]["valid_loss"] == pytest.approx(finals["off"]["valid_loss"], rel=1e-3)


@pytest.mark.parametrize("alignment", ["match", "reduce"])
def test_masked_words_variant_learns(tmp_path, models, tiny_corpus, alignment, capsys):
    # --kl-positions masked-words: the teacher reads the same words masked, the KL only there.
    out = tmp_path / "out"
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", alignment, "--max-steps", "30",
                      "--log-every", "1", "--eval-every", "15", "--save-every", "30",
                      "--kl-positions", "masked-words")) == 0
    train, valid = _metrics(out)
    assert sum(r["loss"] for r in train[-5:]) < sum(r["loss"] for r in train[:5])
    assert sum(r["kl"] > 0 for r in train) > len(train) // 2  # KL rows at masked words in most steps
    assert valid[-1]["valid_kl"] < valid[0]["valid_kl"]
    report = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    # The tiny tokenizers pre-tokenise alike, so every sequence pairs its words ([UNK] counts as a word).
    assert report["kl_positions"] == "masked-words" and report["unpaired_sequences_seen"] == 0
    with pytest.raises(SystemExit, match=r"^2$"):  # the teacher's masked outputs cannot be cached
        main(_args(models, tiny_corpus, tmp_path / "o2", tmp_path / "cache", "--kl-positions", "masked-words",
                   "--cache-teacher", "top-k", "--alpha-hidden", "0"))
    assert "--kl-positions masked-words: the teacher reads masked input" in capsys.readouterr().err


def test_teacher_cache_skips_the_teacher_after_the_first_epoch(tmp_path, models, tiny_corpus):
    out = tmp_path / "out"
    # 180 training sequences / 8 = 23 batches an epoch; 30 steps = 1 epoch + 7 cached steps.
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", "reduce", "--max-steps", "30",
                      "--cache-teacher", "top-k", "--cache-top-k", "16", "--alpha-hidden", "0",
                      "--eval-every", "0", "--save-every", "0")) == 0
    report = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert report["teacher_cache"] == {"hits": 7, "misses": 23, "k": 16}
    train, _ = _metrics(out)
    assert all(r["kl"] >= 0 for r in train)


@pytest.mark.parametrize("alignment", ["match", "reduce"])
def test_kl_support_teacher_top_k_is_the_full_kl_when_k_covers_the_support(tmp_path, models, tiny_corpus, alignment,
                                                                            capsys):
    def first_kl(name: str, *extra: str) -> tuple[float, float]:
        out = tmp_path / name
        assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", alignment, "--max-steps", "2",
                          "--log-every", "1", "--eval-every", "2", "--save-every", "0", *extra)) == 0
        train, valid = _metrics(out)
        return train[0]["kl"], valid[-1]["valid_kl"]

    full_kl, full_valid = first_kl("full")
    wide_kl, wide_valid = first_kl("wide", "--kl-support", "teacher-top-k", "--kl-top-k", "1000000")
    narrow_kl, _ = first_kl("narrow", "--kl-support", "teacher-top-k", "--kl-top-k", "4")
    assert wide_kl == pytest.approx(full_kl, rel=1e-4)
    assert narrow_kl != pytest.approx(full_kl, rel=1e-3)  # an approximation on 4 tokens
    assert narrow_kl >= 0
    assert wide_valid == pytest.approx(full_valid, rel=1e-4)  # validation always takes the full KL
    with pytest.raises(SystemExit, match=r"^2$"):
        main(_args(models, tiny_corpus, tmp_path / "bad", tmp_path / "cache", "--kl-top-k", "0"))
    assert "--kl-top-k: must be >= 1" in capsys.readouterr().err


def test_cache_requires_no_hidden_loss(tmp_path, models, tiny_corpus, capsys):
    with pytest.raises(SystemExit, match=r"^2$"):  # argparse error: invalid combination
        main(_args(models, tiny_corpus, tmp_path / "o", tmp_path / "c", "--cache-teacher", "top-k"))
    assert "--cache-teacher top-k stores only output distributions: set --alpha-hidden 0" in capsys.readouterr().err


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("DISTILRUBERT_TEST_SIGKILL_AT_STEP", None)
    return env


def _load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, models, tiny_corpus):
    # The plateau schedule with patience 0: its state (best, counter, scale) must survive the kill too.
    common = _args(models, tiny_corpus, "OUT", tmp_path / "cache", "--alignment", "reduce", "--max-steps", "12",
                   "--save-every", "4", "--eval-every", "2", "--log-every", "1", "--schedule", "plateau",
                   "--plateau-patience", "0")

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "distilrubert", *[str(out) if a == "OUT" else a for a in common]]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), env=_env(), check=True, capture_output=True)

    resumed = tmp_path / "resumed"
    killed = subprocess.run(command(resumed), env={**_env(), "DISTILRUBERT_TEST_SIGKILL_AT_STEP": "6"},
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert (resumed / "checkpoints" / "step-00000004").is_dir() and not (resumed / "run.json").exists()
    done = subprocess.run(command(resumed), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr

    a, b = _load_weights(straight), _load_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6, name
    train_a, valid_a = _metrics(straight)
    train_b, valid_b = _metrics(resumed)
    assert [r["step"] for r in train_b] == list(range(1, 13))
    assert [r["loss"] for r in train_a] == pytest.approx([r["loss"] for r in train_b], abs=1e-6)
    assert [r["valid_kl"] for r in valid_a] == pytest.approx([r["valid_kl"] for r in valid_b], abs=1e-6)
    assert [r["lr"] for r in train_a] == pytest.approx([r["lr"] for r in train_b], rel=1e-9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ranks_agree(tmp_path, models, tiny_corpus):
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "distilrubert"]
    args = _args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", "match", "--max-steps", "6",
                 "--batch-size", "4", "--save-every", "3", "--eval-every", "3")
    done = subprocess.run([*launch, *args], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text(encoding="utf-8"))
    assert report["processes"] == 2
    digests = report["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    before, after = _load_weights(models[1]), _load_weights(out)
    assert any((before[k] - after[k]).abs().max() > 0 for k in after if k in before)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, models, tiny_corpus, monkeypatch, capsys):
    import torch

    from distilrubert import distill

    calls = {"n": 0}
    real = distill.mlm_loss

    def flaky(logits, labels):
        calls["n"] += 1
        value = real(logits, labels)
        return value * float("nan") if calls["n"] >= 5 else value

    monkeypatch.setattr(distill, "mlm_loss", flaky)
    out = tmp_path / "out"
    code = main(_args(models, tiny_corpus, out, tmp_path / "cache", "--max-steps", "10", "--save-every", "2",
                      "--eval-every", "0"))
    assert code == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 5" in err and "step-00000004" in err
    assert (out / "checkpoints" / "step-00000004").is_dir() and not (out / "run.json").exists()
    assert torch.isfinite(_load_weights(out / "checkpoints" / "step-00000004")["student.vocab_transform.weight"]).all()


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_pretrain_from_scratch(tmp_path, tiny_corpus, _student_vocab_dir, model_type):
    out = tmp_path / "pre"
    assert main(["pretrain", "--vocab", str(_student_vocab_dir), "--model-type", model_type, "--layers", "2",
                 "--dim", "32", "--heads", "2", "--ffn", "64", "--max-position-embeddings", "64",
                 "--corpus", str(tiny_corpus), "--output", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--max-steps", "30", "--batch-size", "8", "--max-length", "64", "--lr", "3e-3",
                 "--valid-fraction", "0.1", "--eval-every", "15", "--no-progress"]) == 0
    _, valid = _metrics(out)
    assert valid[-1]["valid_mlm"] < valid[0]["valid_mlm"]
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(str(out)).config.model_type == model_type


def test_every_recipe_parses():
    from distilrubert.config import load_recipe, resolve
    from distilrubert.distill import DistillConfig
    from distilrubert.pretrain import PretrainConfig

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert any(p.name == "distilrubert-tiny-5k.yaml" for p in recipes)
    for path in recipes:
        verb = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# verb:").strip()
        cls = {"distill": DistillConfig, "pretrain": PretrainConfig}[verb]
        config = resolve(cls, {}, load_recipe(path), recipe_name=str(path))
        assert config.max_steps > 0
    paper = yaml.safe_load((ROOT / "recipes" / "distilrubert-tiny-5k.yaml").read_text(encoding="utf-8"))
    assert paper["teacher"] == "DeepPavlov/rubert-base-cased-conversational"
    assert (paper["alpha_kl"], paper["alpha_mlm"], paper["alpha_hidden"], paper["temperature"]) == (2.0, 0.5, 0.1, 2.0)


def test_missing_student_is_a_one_line_error(tmp_path, models, tiny_corpus, capsys):
    teacher, _ = models
    code = main(_args((teacher, tmp_path / "nope"), tiny_corpus, tmp_path / "o", tmp_path / "c", "--max-steps", "1"))
    assert code == 1
    assert "--student" in capsys.readouterr().err


def test_attention_loss_and_explicit_layer_pairs(tmp_path, models, tiny_corpus, capsys):
    out = tmp_path / "out"
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--alignment", "match", "--max-steps", "4",
                      "--alpha-attention", "1.0", "--layer-mapping", "0:0,1:1,2:1+2", "--hidden-loss", "cosine",
                      "--eval-every", "0", "--save-every", "0", "--log-every", "1")) == 0
    train, _ = _metrics(out)
    assert all(r["attention"] > 0 and r["hidden"] > 0 for r in train)
    with pytest.raises(SystemExit, match=r"^2$"):  # the attention loss needs `match`
        main(_args(models, tiny_corpus, tmp_path / "o2", tmp_path / "cache", "--alignment", "reduce",
                   "--alpha-attention", "1.0"))
    assert "--alpha-attention: the attention loss needs --alignment match" in capsys.readouterr().err


def test_a_truncated_student_or_a_foreign_vocabulary_is_one_line_before_any_work(tiny_student, tmp_path):
    import shutil

    from distilrubert.distill import load_student

    weights = tiny_student / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError, match=r"--student: cannot load a masked-LM model and tokenizer from .*: "
                                         r"Error while deserializing"):
        load_student(str(tiny_student))
    weights.write_bytes(good)
    from transformers import AutoModelForMaskedLM

    other = tmp_path / "bigger-vocab"
    shutil.copytree(tiny_student, other)
    model = AutoModelForMaskedLM.from_pretrained(str(other))
    model.resize_token_embeddings(290)
    model.save_pretrained(str(other))
    with pytest.raises(ValueError, match=r"has 290 embedding rows but its tokenizer 300 tokens"):
        load_student(str(other))


def test_report_to_logs_through_accelerate_trackers(tmp_path, models, tiny_corpus, monkeypatch, capsys):
    """TensorBoard event files and a real MLflow file store (no server), next to metrics.jsonl."""
    pytest.importorskip("tensorboardX")
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 prefers a database; the file store is real
    out = tmp_path / "tracked"
    assert main(_args(models, tiny_corpus, out, tmp_path / "cache", "--max-steps", "4", "--log-every", "2",
                      "--eval-every", "2", "--report-to", "tensorboard,mlflow")) == 0
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out) for p in out.rglob("*"))
    run = mlflow.search_runs(experiment_names=["distilrubert"], output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4]
    assert run.data.params["lr"] == "0.003"
    train, _ = _metrics(out)
    assert [r["step"] for r in train] == [2, 4]  # metrics.jsonl is always written
    capsys.readouterr()
    assert main(_args(models, tiny_corpus, tmp_path / "x", tmp_path / "cache", "--report-to", "nosuchtracker")) == 1
    assert "--report-to: Unsupported logging capability: nosuchtracker" in capsys.readouterr().err
    monkeypatch.setattr("accelerate.tracking.is_wandb_available", lambda: False)
    assert main(_args(models, tiny_corpus, tmp_path / "y", tmp_path / "cache", "--report-to", "wandb")) == 1
    assert "--report-to: wandb is not installed or not an accelerate tracker" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
