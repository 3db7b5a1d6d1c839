"""``distilrubert demo``: the whole pipeline on the embedded default, with a report and charts.

Steps (each writes its own sub-directory of ``--output``; rerunning the command skips finished steps
and resumes an interrupted training from its last checkpoint):

1. ``vocab-5k``: a 5K WordPiece vocabulary from the embedded sample corpus (``build-vocab``).
2. ``student-init`` / ``student-random``: the 3 x 264 student initialised from the reference teacher,
   and the same architecture with random weights (``init-student``).
3. ``distill-match`` / ``distill-reduce``: the student distilled with each vocabulary alignment;
   ``mlm-only``: the random student trained with MLM only for the same number of steps ("no
   distillation", the baseline the distilled students must beat).
4. ``eval/*.json``: the probe suite (encodechka tasks from ``--data-dir`` when present, else the built-in
   held-out probe) and CPU ms/text for the teacher, every student and the untrained random student.
5. ``report.md`` with ``training_curves.png`` and ``quality_speed_size.png``.

Example:
    distilrubert demo --output /tmp/demo
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilrubert.config import option, to_dict
from distilrubert.runinfo import atomic_write_text, run_info, write_json

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "demo", "run"]

TRAINED = ("distill-match", "distill-reduce", "mlm-only")
LABELS = {
    "teacher": "teacher",
    "distill-match": "5K student, distilled (match)",
    "distill-reduce": "5K student, distilled (reduce)",
    "mlm-only": "5K student, MLM only (no distillation)",
    "student-random": "5K student, random init, untrained",
}


@dataclass
class DemoConfig:
    """Options of ``distilrubert demo``."""

    output: str = option("distilrubert-demo", "Output directory; rerun the same command to resume.", metavar="DIR")
    teacher: str | None = option(None, "Teacher directory or Hub id (default: the embedded reference teacher).",
                                 metavar="ID_OR_DIR")
    corpus: list[str] = option([], "Corpus files (default: the embedded sample corpus).")
    steps: int = option(300, "Training steps of each student (both distillations and the MLM-only baseline).")
    batch_size: int = option(32, "Sequences per training step.")
    max_length: int = option(128, "Maximum sequence length in tokens.")
    vocab_size: int = option(5000, "Student vocabulary size.")
    data_dir: str = option("../shared/data/encodechka", "encodechka task files; when the directory is missing, "
                           "the built-in held-out probe is used instead.", metavar="DIR")
    max_examples: int | None = option(None, "Use at most N rows per probe task (quick checks; not comparable).")
    seed: int = option(42, "Seed of the student initialisation, data order and masking.")
    threads: int = option(0, "CPU threads for torch (0: torch's default, all cores).")
    cache_dir: str | None = option(None, "Tokenised-corpus cache (default: OUTPUT/cache).", metavar="DIR")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.vocab_size < 200:
            raise ValueError(f"--vocab-size must be >= 200, got {self.vocab_size}")


@dataclass
class _Step:
    name: str
    path: Path
    action: Callable[[], Any]
    done: Callable[[], bool]


def _steps(config: DemoConfig, out: Path, teacher: str, corpus: list[str]) -> list[_Step]:
    from distilrubert.distill import DistillConfig, distill
    from distilrubert.pretrain import PretrainConfig, pretrain
    from distilrubert.student_init import InitStudentConfig, init_student
    from distilrubert.vocab import BuildVocabConfig, build_vocab

    cache = config.cache_dir or str(out / "cache")
    train = {"corpus": corpus, "max_steps": config.steps, "batch_size": config.batch_size,
             "max_length": config.max_length, "seed": config.seed, "cache_dir": cache,
             "progress": config.progress, "eval_every": max(config.steps // 4, 1),
             "save_every": max(config.steps // 4, 1), "tensorboard": False}
    vocab = out / "vocab-5k"
    steps = [
        _Step("vocab-5k", vocab, lambda: build_vocab(BuildVocabConfig(
            output=str(vocab), corpus=corpus, vocab_size=config.vocab_size)), vocab.is_dir),
    ]
    for name, init in (("student-init", "teacher"), ("student-random", "random")):
        path = out / name
        steps.append(_Step(name, path, lambda path=path, init=init: init_student(InitStudentConfig(
            teacher=teacher, vocab=str(vocab), output=str(path), init=init, seed=config.seed)), path.is_dir))
    for alignment in ("match", "reduce"):
        path = out / f"distill-{alignment}"
        steps.append(_Step(path.name, path, lambda path=path, alignment=alignment: distill(DistillConfig(
            teacher=teacher, student=str(out / "student-init"), output=str(path), alignment=alignment, **train)),
            (path / "run.json").is_file))
    mlm = out / "mlm-only"
    steps.append(_Step(mlm.name, mlm, lambda: pretrain(PretrainConfig(
        init_from=str(out / "student-random"), output=str(mlm), **train)), (mlm / "run.json").is_file))
    models = {"teacher": teacher, **{name: str(out / name) for name in (*TRAINED, "student-random")}}
    for name, model in models.items():
        path = out / "eval" / f"{name}.json"
        steps.append(_Step(f"evaluate {name}", path, lambda model=model, path=path: evaluate_model(
            model, path, config.data_dir, config.max_examples),
                           path.is_file))
    return steps


def evaluate_model(model: str, path: str | Path, data_dir: str, max_examples: int | None = None) -> dict[str, Any]:
    """The probe suite (encodechka in ``data_dir``, else the built-in probe), saved to ``path``."""
    from distilrubert.evaluate import EvaluateConfig, run_suite

    builtin = not Path(data_dir).is_dir()
    if builtin:
        logger.info("%s not found: using the built-in held-out probe", data_dir)
    eval_config = EvaluateConfig(model=model, output=str(path), suite="builtin" if builtin else "encodechka",
                                 data_dir=data_dir if not builtin else ".", max_examples=max_examples)
    result = run_suite(model, eval_config, label=Path(model).name)
    write_json(path, result)
    return result


HEAD_PREFIXES = ("cls.", "vocab_", "pooler.")


def model_size(model: str) -> dict[str, int]:
    """Encoder parameters (MLM head and pooler excluded), weight bytes on disk and in fp32, vocabulary size.

    Read from the ``model.safetensors`` header of a local directory (no model is built); a Hub id falls
    back to loading the encoder (disk bytes then 0).
    """
    import math

    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model).vocab_size
    weights = Path(model) / "model.safetensors"
    if not weights.is_file():
        from transformers import AutoModel

        params = sum(p.numel() for n, p in AutoModel.from_pretrained(model).named_parameters()
                     if not n.startswith(HEAD_PREFIXES))
        return {"parameters": params, "disk_bytes": 0, "fp32_bytes": 4 * params, "vocab_size": vocab}
    from safetensors import safe_open

    with safe_open(str(weights), "np") as handle:
        shapes = {name: math.prod(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    params = sum(n for name, n in shapes.items() if not name.startswith(HEAD_PREFIXES))
    return {"parameters": params, "disk_bytes": weights.stat().st_size, "fp32_bytes": 4 * sum(shapes.values()),
            "vocab_size": vocab}


def demo(config: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every step, then write ``report.md`` and the charts; return the report data."""
    import torch

    from distilrubert.corpus import sample_corpus
    from distilrubert.reference import reference_model

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    teacher = config.teacher or str(reference_model("teacher"))
    corpus = config.corpus or [str(sample_corpus("train"))]
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    steps = _steps(config, out, teacher, corpus)
    started = time.perf_counter()
    for number, step in enumerate(steps, 1):
        if step.done():
            logger.info("[%d/%d] %s: done already (%s), skipped", number, len(steps), step.name, step.path)
            continue
        logger.info("[%d/%d] %s -> %s", number, len(steps), step.name, step.path)
        begin = time.perf_counter()
        step.action()
        timings[step.name] = timings.get(step.name, 0.0) + round(time.perf_counter() - begin, 1)
        write_json(timings_path, timings)
    report = write_report(config, out, teacher, corpus, timings)
    report["seconds_this_run"] = round(time.perf_counter() - started, 1)
    write_json(out / "run.json", run_info("demo", to_dict(config), teacher=teacher, corpus=corpus,
                                          timings=timings))
    return report


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def _probe_mean(result: dict[str, Any]) -> float | None:
    return result.get("mean_sentence_tasks")


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_report(config: DemoConfig, out: Path, teacher: str, corpus: list[str],
                 timings: dict[str, float]) -> dict[str, Any]:
    """``report.md``, ``training_curves.png``, ``quality_speed_size.png`` and ``results.json``."""
    results = {name: json.loads((out / "eval" / f"{name}.json").read_text(encoding="utf-8"))
               for name in LABELS if (out / "eval" / f"{name}.json").is_file()}
    training = {}
    for name in TRAINED:
        report_path = out / name / "train_report.json"
        if report_path.is_file():
            training[name] = json.loads(report_path.read_text(encoding="utf-8"))
    task_codes = sorted({code for r in results.values() for code in r.get("tasks", {})})
    teacher_result = results.get("teacher", {})
    teacher_ms = teacher_result.get("speed", {}).get("ms_per_text")
    teacher_mean = _probe_mean(teacher_result)
    rows = []
    for name, result in results.items():
        size = model_size(teacher if name == "teacher" else str(out / name))
        ms = result.get("speed", {}).get("ms_per_text")
        mean = _probe_mean(result)
        valid = (training.get(name, {}).get("validation") or [{}])[-1]
        rows.append({
            "name": name, "label": LABELS[name], "parameters": size["parameters"],
            "disk_mb": size["disk_bytes"] / 2**20, "vocab": size["vocab_size"],
            "scores": {c: result["tasks"][c]["score"] for c in result.get("tasks", {})},
            "mean": mean, "ms_per_text": ms,
            "speedup": teacher_ms / ms if teacher_ms and ms else None,
            "retention": mean / teacher_mean if mean is not None and teacher_mean else None,
            "valid_mlm": valid.get("valid_mlm"), "train_seconds": training.get(name, {}).get("seconds"),
        })
    charts = _charts(out, rows, training)
    verdict = _verdict(rows)
    lines = [
        "# distilrubert demo report", "",
        f"Teacher: `{teacher}`. Corpus: {', '.join(f'`{c}`' for c in corpus)}. Each student trained for "
        f"{config.steps} steps of {config.batch_size} sequences (max length {config.max_length}), seed {config.seed}. "
        f"Probe suite: {_suite_name(results)}. Speed: CPU ms per text, one text at a time "
        f"(encodechka protocol), {_threads(results)} thread(s), transformers eager.", "",
        "| model | parameters | weights on disk MB | vocab | " + " | ".join(task_codes)
        + " | probe mean | retention | CPU ms/text | speed-up | valid MLM | train s |",
        "|:--|--:|--:|--:|" + "--:|" * len(task_codes) + "--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        cells = [f"{row['scores'][c]:.3f}" if c in row["scores"] else "" for c in task_codes]
        lines.append(
            f"| {row['label']} | {_fmt(row['parameters'], ',')} | {row['disk_mb']:.1f} | {_fmt(row['vocab'], ',')} | "
            + " | ".join(cells)
            + f" | {_fmt(row['mean'], '.3f')} | {_fmt(row['retention'], '.0%')} | {_fmt(row['ms_per_text'], '.2f')} "
            f"| {_fmt(row['speedup'], '.1f')}{'x' if row['speedup'] else ''} | {_fmt(row['valid_mlm'], '.3f')} "
            f"| {_fmt(row['train_seconds'], '.0f')} |")
    lines += ["", "Probe mean: mean of the sentence-level tasks (" + ", ".join(
        c for c in task_codes if c not in ("NE1", "NE2")) + "); retention: probe mean / the teacher's; valid MLM: "
        "held-out masked-LM loss of the student's own vocabulary (comparable between the three trained students). "
        "The embedded reference teacher is stored in fp16 (half its fp32 size).",
        "", "## Verdict", "", verdict, "",
        "A random untrained encoder is a strong baseline for linear probes (REFERENCE section 6): a short run "
        "can score below it; read the trained rows against it.", ""]
    for title, file in charts:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Step times (seconds, summed over resumed runs)", "", "| step | seconds |", "|:--|--:|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    lines += ["", f"Total: {sum(timings.values()) / 60:.1f} min. Regenerate: `distilrubert demo --output {out}`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    data = {"rows": rows, "verdict": verdict, "timings": timings}
    write_json(out / "results.json", data)
    return data


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _suite_name(results: dict[str, Any]) -> str:
    suites = {r.get("suite", "encodechka") for r in results.values()}
    return ", ".join(sorted(suites)) or "none"


def _threads(results: dict[str, Any]) -> str:
    values = {r.get("speed", {}).get("threads") for r in results.values()} - {None}
    return ", ".join(str(v) for v in sorted(values)) or "?"


def _verdict(rows: list[dict[str, Any]]) -> str:
    by_name = {row["name"]: row for row in rows}
    baseline = by_name.get("mlm-only", {}).get("mean")
    distilled = [(by_name[n]["mean"], n) for n in ("distill-match", "distill-reduce")
                 if n in by_name and by_name[n]["mean"] is not None]
    if baseline is None or not distilled:
        return "Not enough results for a verdict yet."
    best_mean, best = max(distilled)
    relation = "higher than" if best_mean > baseline else "NOT higher than"
    text = (f"The best distilled student ({LABELS[best]}) scores {best_mean:.3f} on the probe mean, {relation} the "
            f"no-distillation student of the same budget ({baseline:.3f}).")
    random_mean = by_name.get("student-random", {}).get("mean")
    if random_mean is not None:
        text += f" The untrained random encoder scores {random_mean:.3f}."
    for code, what in (("NE1", "token-level NER probe (NE1)"),):
        base = by_name.get("mlm-only", {}).get("scores", {}).get(code)
        best_code = by_name[best]["scores"].get(code)
        if base is not None and best_code is not None:
            text += (f" On the {what} the distilled student scores {best_code:.3f} against {base:.3f} without "
                     "distillation.")
    base_mlm, best_mlm = by_name.get("mlm-only", {}).get("valid_mlm"), by_name[best].get("valid_mlm")
    if base_mlm is not None and best_mlm is not None:
        text += (f" Held-out MLM loss: {best_mlm:.3f} distilled vs {base_mlm:.3f} without distillation "
                 "(lower is better).")
    return text


def _charts(out: Path, rows: list[dict[str, Any]], training: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []
    if training:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in training:
            metrics = _read_metrics(out / name / "metrics.jsonl")
            train = [m for m in metrics if m.get("split") != "valid" and "mlm" in m]
            valid = [m for m in metrics if m.get("split") == "valid" and "valid_mlm" in m]
            axes[0].plot([m["step"] for m in train], [m["mlm"] for m in train], label=LABELS[name])
            axes[1].plot([m["step"] for m in valid], [m["valid_mlm"] for m in valid], marker="o", label=LABELS[name])
        axes[0].set(title="training MLM loss (student vocabulary)", xlabel="step", ylabel="loss")
        axes[1].set(title="held-out MLM loss", xlabel="step", ylabel="loss")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        charts.append(("Training curves", "training_curves.png"))
    points = [r for r in rows if r["mean"] is not None and r["ms_per_text"]]
    if points:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        largest = max(r["parameters"] or 1 for r in points)
        for r in points:
            size = 60 + 1400 * (r["parameters"] or 0) / largest
            ax.scatter(r["ms_per_text"], r["mean"], s=size, alpha=0.55)
            ax.annotate(f"{r['label']}\n{(r['parameters'] or 0) / 1e6:.1f}M params, {r['disk_mb']:.0f} MB",
                        (r["ms_per_text"], r["mean"]), fontsize=7, xytext=(6, 6), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(title="quality vs speed vs size (bubble area ~ parameters)", xlabel="CPU ms per text (log)",
               ylabel="probe mean")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "quality_speed_size.png", dpi=110)
        plt.close(fig)
        charts.append(("Quality vs speed vs size", "quality_speed_size.png"))
    return charts


def run(config: DemoConfig) -> int:
    """CLI entry point of ``distilrubert demo``."""
    report = demo(config)
    print(Path(config.output) / "report.md")
    print(report["verdict"])
    return 0
