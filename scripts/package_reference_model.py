"""Copy a trained model into models/ as an embedded reference model: fp16 weights, model card, provenance.

The model card states the exact command that produced the model (from its ``run.json``), the training
time and data (``train_report.json``), and the probe scores of an ``evaluate`` JSON when given.

    python scripts/package_reference_model.py --model runs/teacher-6x384 --name teacher-6x384-16k \
        --eval runs/eval-teacher.json --title "Reference teacher"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.txt", "run.json", "train_report.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Trained model directory (a pretrain/distill output).")
    parser.add_argument("--name", required=True, help="Directory name under models/.")
    parser.add_argument("--title", required=True, help="Model card title.")
    parser.add_argument("--eval", default=None, help="`distilrubert evaluate` JSON of this model.")
    parser.add_argument("--notes", default="", help="Extra paragraph for the model card (markdown).")
    parser.add_argument("--before", nargs="*", default=[],
                        help="Output directories of the steps that made the model's inputs (import-teacher, "
                        "build-vocab, init-student), in order: their run.json commands precede the training command.")
    parser.add_argument("--data", default="the embedded sample corpus `data/sample_corpus.jsonl.gz` (sources and "
                        "licenses in `data/README.md`)", help="What the model was trained on (markdown).")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from distilrubert.reference import save_half_precision

    source, target = Path(args.model), Path(args.models_dir) / args.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEEP:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    fp32 = (source / "model.safetensors").stat().st_size
    fp16 = save_half_precision(target)
    run = json.loads((source / "run.json").read_text(encoding="utf-8"))
    report = json.loads((source / "train_report.json").read_text(encoding="utf-8"))
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    argv_ = run.get("argv") or []
    command = "distilrubert " + shlex.join(argv_[1:]) if argv_ else "(called from Python)"
    for step in reversed(args.before):
        step_argv = json.loads((Path(step) / "run.json").read_text(encoding="utf-8")).get("argv") or []
        command = ("distilrubert " + shlex.join(step_argv[1:]) if step_argv else f"({step})") + "\n" + command
    valid = (report.get("validation") or [{}])[-1]
    lines = ["---", "language:", "- ru", "library_name: transformers", "pipeline_tag: fill-mask", "---", "",
             f"# {args.title}", "",
             f"`{config.get('model_type')}`: {config.get('num_hidden_layers', config.get('n_layers'))} layers x "
             f"{config.get('hidden_size', config.get('dim'))} hidden, vocabulary {config.get('vocab_size'):,}. "
             f"Weights stored in fp16 ({fp16 / 2**20:.1f} MB; {fp32 / 2**20:.1f} MB in fp32); `config.json` says "
             "`dtype: float32`, so `AutoModel.from_pretrained` loads it in fp32.", "",
             "## How it was made", "", "```", command, "```", "",
             f"- git commit: `{run.get('git_commit')}`; {run.get('time')}; host: {run.get('host', {}).get('cpus')} "
             f"CPUs ({run.get('host', {}).get('processor')}).",
             f"- training: {report.get('steps')} steps, {report.get('tokens', 0):,} tokens, "
             f"{report.get('seconds', 0) / 60:.0f} min wall-clock (the machine was shared with other work), "
             f"{report.get('train_sequences', 0):,} training / {report.get('valid_sequences', 0):,} held-out "
             "sequences.",
             *[f"- earlier training stage (`{Path(step).name}`, whose output this run continued): "
               f"{r.get('steps')} steps, {r.get('tokens', 0):,} tokens, {r.get('seconds', 0) / 60:.0f} min wall-clock."
               for step in args.before if (Path(step) / "train_report.json").is_file()
               for r in [json.loads((Path(step) / "train_report.json").read_text(encoding="utf-8"))]],
             f"- data: {args.data}.",
             "", "## Metrics", "",
             "Final held-out figures: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(valid.items())
                                                     if k != "step" and isinstance(v, float)) + "."]
    if args.eval:
        result = json.loads(Path(args.eval).read_text(encoding="utf-8"))
        found = result.get("model", result)
        tasks = found.get("tasks", {})
        lines += ["", "Probe suite (`distilrubert evaluate`, encodechka tasks available offline): "
                  + ", ".join(f"{code} {t['score']:.3f}" for code, t in sorted(tasks.items()))
                  + (f"; CPU {found['speed']['ms_per_text']:.2f} ms/text" if found.get("speed") else "") + "."]
    if args.notes:
        lines += ["", args.notes]
    (target / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"{target}: {size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
