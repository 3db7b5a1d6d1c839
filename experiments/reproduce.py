"""The CPU-scale reproduction of the paper's comparison (writes docs/results.md with its charts).

At an equal training budget, on the embedded sample corpus and the reference teacher:

  (a) the 5K student distilled with ``match``       (b) ... with ``reduce``
  (c) the 5K student, random init, MLM only          (d) the 5K student, teacher init, MLM only
  (e) a student with the teacher's full vocabulary, distilled with plain KL (identical tokenisations:
      ``match`` aligns every position and the KL runs over the whole vocabulary)

each for every seed, then the probe suite (encodechka tasks of ../shared/data/encodechka) on every model,
the teacher and the untrained random students, and CPU speed (one text at a time, one thread) measured
one model after the other on a quiet machine. Every step is a ``distilrubert`` command (logged in
``OUTPUT/commands.txt``) and is skipped when its output exists, so an interrupted run resumes.

    python experiments/reproduce.py --output runs/experiment --steps 600 --seeds 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "a": "5K, distilled (match)",
    "b": "5K, distilled (reduce)",  # with --pooling (default sum)
    "c": "5K, random init, MLM only",
    "d": "5K, teacher init, MLM only",
    "e": "full vocabulary, distilled (plain KL)",
}
PAPER_COMPRESSION = 49


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/experiment", help="Working directory (resumable).")
    parser.add_argument("--teacher", default=None, help="Teacher directory (default: the embedded reference teacher).")
    parser.add_argument("--corpus", default=str(ROOT / "data" / "sample_corpus.jsonl.gz"))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "encodechka"))
    parser.add_argument("--steps", type=int, default=600, help="Training steps of every student (equal budget).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--pooling", default="sum", choices=["sum", "mean", "logsumexp"],
                        help="reduce: pooling of the student's scores over a teacher token's pieces (config b).")
    parser.add_argument("--kl-positions", default="aligned", choices=["aligned", "masked-words"],
                        help="distill --kl-positions of the distilled configs (a, b): aligned (the released code) or "
                        "masked-words (the same words masked in both tokenisations, KL only there).")
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (each with 2 // jobs threads).")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"), help="Markdown report to write.")
    parser.add_argument("--notes", default=None, help="A hand-written discussion (markdown) appended to the report.")
    return parser.parse_args(argv)


class Runner:
    """Runs ``distilrubert`` commands (skipping finished ones), logging each command and its output."""

    def __init__(self, out: Path, jobs: int) -> None:
        self.out, self.jobs = out, jobs
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.commands = out / "commands.txt"
        self.lock = threading.Lock()  # parallel runs share commands.txt and seconds.json

    def run(self, name: str, args: list[str], done: Path, threads: int | None = None) -> None:
        if done.exists():
            return
        threads = threads or max(1, 2 // self.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = ["distilrubert", "--log-level", "WARNING", *args]
        with self.lock, self.commands.open("a", encoding="utf-8") as handle:
            handle.write(f"{name}: OMP_NUM_THREADS={threads} {shlex.join(command)}\n")
        start = time.perf_counter()
        with (self.out / "logs" / f"{name}.log").open("w", encoding="utf-8") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
        if code:
            raise RuntimeError(f"{name} failed (exit {code}); see {self.out / 'logs' / (name + '.log')}")
        with self.lock:
            path = self.out / "seconds.json"
            seconds = json.loads(path.read_text()) if path.is_file() else {}
            seconds[name] = round(time.perf_counter() - start, 1)
            path.write_text(json.dumps(seconds, indent=1))

    def parallel(self, tasks: list[tuple[str, list[str], Path]], desc: str) -> None:
        todo = [t for t in tasks if not t[2].exists()]
        with ThreadPoolExecutor(self.jobs) as pool, tqdm(total=len(tasks), initial=len(tasks) - len(todo),
                                                        desc=desc, unit="run") as bar:
            futures = [pool.submit(self.run, *t) for t in todo]
            for future in futures:
                future.result()
                bar.update()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from distilrubert.reference import reference_model

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = str(Path(args.teacher).resolve()) if args.teacher else str(reference_model("teacher"))
    runner = Runner(out, args.jobs)
    cache = str(out / "cache")
    vocab = out / "vocab-5k"
    runner.run("vocab-5k", ["build-vocab", "--corpus", args.corpus, "--vocab-size", "5000", "--output", str(vocab)],
               vocab)
    inits = []
    for seed in args.seeds:
        for name, extra in ((f"init-5k-s{seed}", ["--vocab", str(vocab)]),
                            (f"random-5k-s{seed}", ["--vocab", str(vocab), "--init", "random"]),
                            (f"init-full-s{seed}", ["--vocab", teacher])):
            inits.append((name, ["init-student", "--teacher", teacher, *extra, "--seed", str(seed),
                                 "--output", str(out / name)], out / name))
    runner.parallel(inits, "students")
    train = ["--corpus", args.corpus, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--cache-dir", cache, "--eval-every", str(max(args.steps // 6, 1)),
             "--save-every", str(max(args.steps // 6, 1)), "--no-progress", "--no-tensorboard"]
    runs = []
    for seed in args.seeds:
        for config in args.configs:
            name = f"{config}-s{seed}"
            if config in ("a", "b", "e"):
                student = out / (f"init-full-s{seed}" if config == "e" else f"init-5k-s{seed}")
                alignment = "reduce" if config == "b" else "match"
                command = ["distill", "--teacher", teacher, "--student", str(student), "--alignment", alignment]
                if config == "b":
                    command += ["--pooling", args.pooling]
                if args.kl_positions != "aligned" and config in ("a", "b"):
                    command += ["--kl-positions", args.kl_positions]
            else:
                student = out / (f"random-5k-s{seed}" if config == "c" else f"init-5k-s{seed}")
                command = ["pretrain", "--init-from", str(student)]
            runs.append((name, [*command, *train, "--seed", str(seed), "--output", str(out / name)],
                         out / name / "run.json"))
    runner.parallel(runs, "training")
    models = {"teacher": teacher, **{f"random-5k-s{s}": str(out / f"random-5k-s{s}") for s in args.seeds},
              **{name: str(out / name) for name, _, _ in runs}}
    evals = [(f"eval-{name}", ["evaluate", "--model", path, "--data-dir", args.data_dir, "--no-speed",
                               "--output", str(out / "eval" / f"{name}.json")], out / "eval" / f"{name}.json")
             for name, path in models.items()]
    runner.parallel(evals, "probes")
    # Speed one model after the other, alone on the machine, one thread (the encodechka protocol).
    speed_models = {"teacher": teacher, "5k": str(out / runs[0][0]),
                    "full-vocab": next((str(out / n) for n, _, _ in runs if n.startswith("e-")), None)}
    for name, path in speed_models.items():
        if path:
            runner.run(f"speed-{name}", ["evaluate", "--model", path, "--data-dir", args.data_dir, "--tasks", "CPU",
                                         "--threads", "1", "--output", str(out / "speed" / f"{name}.json")],
                       out / "speed" / f"{name}.json", threads=1)
    write_results(args, out, teacher, models)
    return 0


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------

def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _size(model: str) -> tuple[int, int]:
    """Encoder parameters and fp32 bytes of every stored tensor (the MLM head included)."""
    from distilrubert.demo import model_size

    size = model_size(model)
    return size["parameters"], size["fp32_bytes"]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _label(config: str, args: argparse.Namespace) -> str:
    label = f"5K, distilled (reduce, {args.pooling} pooling)" if config == "b" else CONFIGS[config]
    if args.kl_positions != "aligned" and config in ("a", "b"):
        label = label[:-1] + f", KL at {args.kl_positions})"
    return label


def write_results(args: argparse.Namespace, out: Path, teacher: str, models: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = {name: _load(out / "eval" / f"{name}.json") for name in models}
    tasks = sorted({code for e in evals.values() for code in e["model"]["tasks"]})
    sentence_tasks = [t for t in tasks if not t.startswith("NE")]
    speed = {name: _load(out / "speed" / f"{name}.json")["model"]["speed"]["ms_per_text"]
             for name in ("teacher", "5k", "full-vocab") if (out / "speed" / f"{name}.json").is_file()}
    seconds = _load(out / "seconds.json")

    def scores(name: str) -> dict[str, float]:
        found = evals[name]["model"]
        out = {t: found["tasks"][t]["score"] for t in tasks if t in found["tasks"]}
        # encodechka's two aggregates: "Mean S" (sentence tasks) and "Mean S+W" (with the token-level NER)
        return out | {"mean": found["mean_sentence_tasks"], "mean_sw": statistics.fmean(out.values())}

    def valid_mlm(name: str) -> float | None:
        report = out / name / "train_report.json"
        if not report.is_file():
            return None
        history = _load(report).get("validation") or [{}]
        return history[-1].get("valid_mlm")

    teacher_scores = scores("teacher")
    groups: dict[str, dict] = {}
    for config in args.configs:
        names = [f"{config}-s{s}" for s in args.seeds]
        per_seed = [scores(n) for n in names]
        groups[config] = {
            "label": _label(config, args),
            "names": names, "per_seed": per_seed,
            "stats": {k: _mean_sd([p[k] for p in per_seed]) for k in per_seed[0]},
            "valid_mlm": [valid_mlm(n) for n in names],
            "train_s": [_load(out / n / "train_report.json").get("seconds") for n in names],
            "size": _size(str(out / names[0])),
        }
    random_rows = [scores(f"random-5k-s{s}") for s in args.seeds]
    t_params, t_disk = _size(teacher)
    s_params, s_disk = groups[args.configs[0]]["size"]
    speed_ratio = speed["teacher"] / speed["5k"] if "teacher" in speed and "5k" in speed else None

    lines = ["# Results: distillation with vocabulary reduction at CPU scale", "",
             f"Regenerate (about {sum(seconds.values()) / 60 / args.jobs:.0f} minutes on the 2-core machine):",
             "", "```", f"python experiments/reproduce.py --output {args.output} --steps {args.steps} --seeds "
             f"{' '.join(map(str, args.seeds))} --jobs {args.jobs}"
             + (f" --pooling {args.pooling}" if args.pooling != "sum" else "")
             + (f" --kl-positions {args.kl_positions}" if args.kl_positions != "aligned" else "")
             + (f" --configs {' '.join(args.configs)}" if args.configs != list(CONFIGS) else "")
             + (f" --results {args.results}" if Path(args.results).resolve() != ROOT / "docs" / "results.md" else "")
             + (f" --teacher {args.teacher}" if args.teacher
                                                                     else "")
             + (f" --notes {args.notes}" if args.notes else ""), "```", "",
             f"Teacher: `{Path(teacher).name}` ({t_params:,} encoder parameters). Corpus: the embedded sample corpus. "
             f"Every student: {args.steps} steps of {args.batch_size} sequences (equal budget), seeds "
             f"{', '.join(map(str, args.seeds))}. Probes: encodechka tasks available offline ({', '.join(tasks)}); "
             f"probe mean = mean of {', '.join(sentence_tasks)}. Each cell: mean over seeds (± standard deviation).",
             "", "| student | " + " | ".join(tasks) + " | probe mean (S) | mean S+W | retention (S) | held-out MLM "
             "| encoder params | fp32 MB | train min/run |", "|:--|" + "--:|" * (len(tasks) + 7)]
    lines.append("| teacher | " + " | ".join(f"{teacher_scores.get(t, float('nan')):.3f}" for t in tasks)
                 + f" | {teacher_scores['mean']:.3f} | {teacher_scores['mean_sw']:.3f} | 100% | | {t_params:,} "
                 f"| {t_disk / 2**20:.1f} | |")
    for config, group in groups.items():
        stats = group["stats"]
        mlm = [v for v in group["valid_mlm"] if v is not None]
        mlm_cell = f"{statistics.fmean(mlm):.3f}" if mlm and config != "e" else ("(16K vocab) " + (
            f"{statistics.fmean(mlm):.3f}" if mlm else ""))
        train_min = [s for s in group["train_s"] if s]
        lines.append(f"| ({config}) {group['label']} | " + " | ".join(
            f"{stats[t][0]:.3f} ± {stats[t][1]:.3f}" for t in tasks)
            + f" | **{stats['mean'][0]:.3f}** ± {stats['mean'][1]:.3f} "
            f"| {stats['mean_sw'][0]:.3f} ± {stats['mean_sw'][1]:.3f} | {stats['mean'][0] / teacher_scores['mean']:.0%}"
            f" | {mlm_cell} | {group['size'][0]:,} | {group['size'][1] / 2**20:.1f} | "
            f"{statistics.fmean(train_min) / 60 if train_min else float('nan'):.1f} |")
    random_mean = _mean_sd([r["mean"] for r in random_rows])
    lines.append("| random init, untrained (reference) | " + " | ".join(
        f"{statistics.fmean(r[t] for r in random_rows):.3f}" for t in tasks)
        + f" | {random_mean[0]:.3f} ± {random_mean[1]:.3f} | {statistics.fmean(r['mean_sw'] for r in random_rows):.3f} "
        f"| {random_mean[0] / teacher_scores['mean']:.0%} | | | | |")
    lines += ["", "## Which differences are larger than run-to-run noise", ""]
    lines += ["A difference counts when it exceeds twice the larger of the two seed standard deviations (a crude "
              "rule with 2 seeds).", ""]
    for key, title in (("mean", "probe mean (S)"), ("mean_sw", "mean S+W"), ("NE1", "NE1 (token-level NER probe)")):
        if key in groups[args.configs[0]]["stats"]:
            lines += [f"**{title}**", "", *_noise_statements(groups, key), ""]
    lines += [f"Untrained random encoders score {random_mean[0]:.3f} on the probe mean (S), above every trained "
              "model here." if all(g["stats"]["mean"][0] < random_mean[0] for g in groups.values()) else
              f"Untrained random encoders score {random_mean[0]:.3f} on the probe mean (S)."]
    if args.notes:
        lines += ["", Path(args.notes).read_text(encoding="utf-8").strip()]
    lines += ["", "## Size and speed", "",
              f"- Parameters: teacher {t_params:,} vs 5K student {s_params:,}: **{t_params / s_params:.1f}x** fewer "
              f"(the paper: {PAPER_COMPRESSION}x, RuBERT-base-conversational 177M vs 3.6M).",
              f"- Weights in fp32 (MLM head included): {t_disk / 2**20:.1f} MB vs {s_disk / 2**20:.1f} MB "
              f"({t_disk / s_disk:.1f}x)."]
    if speed_ratio:
        lines.append(f"- CPU speed, one text at a time, one thread (encodechka protocol on sentences_sample.txt): "
                     f"teacher {speed['teacher']:.2f} ms/text, 5K student {speed['5k']:.2f} ms/text: "
                     f"**{speed_ratio:.1f}x** faster" + (f"; full-vocabulary student {speed['full-vocab']:.2f} ms/text"
                                                         if "full-vocab" in speed else "") + ".")
    shape = json.loads((Path(teacher) / "config.json").read_text(encoding="utf-8"))
    lines += ["", f"Our teacher is itself small ({shape.get('num_hidden_layers')} x {shape.get('hidden_size')}, "
              f"{shape.get('vocab_size'):,} vocabulary), so the compression is far below the paper's 49x; the student "
              "has the paper's shape (3 x 264, 5K vocabulary).", ""]
    chart = Path(args.results).parent / f"{Path(args.results).stem}_probe_mean.png"
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"({c}) {g['label']}" for c, g in groups.items()]
    for i, group in enumerate(groups.values()):
        values = [p["mean"] for p in group["per_seed"]]
        ax.bar(i, statistics.fmean(values), color="C0", alpha=0.6)
        ax.scatter([i] * len(values), values, color="k", zorder=3, s=14)
    ax.axhline(teacher_scores["mean"], color="C3", ls="--", label="teacher")
    ax.axhline(random_mean[0], color="C7", ls=":", label="random init, untrained")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    lows = [min(p["mean"] for p in g["per_seed"]) for g in groups.values()] + [random_mean[0]]
    ax.set_ylim(min(lows) - 0.02, max(teacher_scores["mean"], *[max(p["mean"] for p in g["per_seed"])
                                                              for g in groups.values()]) + 0.02)
    ax.set(ylabel="probe mean", title=f"probe mean per student ({args.steps} steps; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(chart, dpi=110)
    plt.close(fig)
    lines += ["![probe mean per student](" + chart.name + ")", ""]
    curves = Path(args.results).parent / f"{Path(args.results).stem}_training.png"
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (config, group) in enumerate(groups.items()):
        if config == "e":
            continue  # a different vocabulary: its MLM loss is not comparable
        for n in group["names"]:
            rows = [json.loads(x) for x in (out / n / "metrics.jsonl").read_text().splitlines() if x.strip()]
            valid = [r for r in rows if r.get("split") == "valid"]
            ax.plot([r["step"] for r in valid], [r["valid_mlm"] for r in valid], color=f"C{i}", marker="o",
                    label=f"({config}) {group['label']}" if n == group["names"][0] else None)
    ax.set(xlabel="step", ylabel="held-out MLM loss (5K vocabulary)", title="held-out MLM loss during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    lines += ["![held-out MLM loss](" + curves.name + ")", ""]
    Path(args.results).write_text("\n".join(lines), encoding="utf-8")
    summary = {"groups": groups, "teacher": teacher_scores, "random": random_rows, "speed_ms": speed,
               "params": {"teacher": t_params, "student": s_params}, "seconds": seconds}
    Path(args.results).with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    print(Path(args.results))


def _noise_statements(groups: dict[str, dict], key: str) -> list[str]:
    """Each student vs (c) no distillation, and match vs reduce, on one score, with the noise rule."""
    out = []

    def compare(x: str, y: str, text: str) -> str:
        (m1, s1), (m0, s0) = groups[x]["stats"][key], groups[y]["stats"][key]
        noise = 2 * max(s1, s0, 1e-9)
        verdict = "**larger than**" if abs(m1 - m0) > noise else "within"
        return (f"- {text}: {m1:.3f} vs {m0:.3f} ({'+' if m1 >= m0 else ''}{m1 - m0:.3f}), {verdict} the noise "
                f"({noise:.3f}).")

    if "c" in groups:
        out += [compare(c, "c", f"({c}) {g['label']} vs (c) no distillation") for c, g in groups.items() if c != "c"]
    if "a" in groups and "b" in groups:
        out.append(compare("a", "b", "(a) match vs (b) reduce"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
