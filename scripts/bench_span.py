"""Span distillation from a representation teacher: loss overhead and the teacher-cache speed-up.

The real setup of issue 14: the imported multilingual-e5-small teacher (``import-teacher``), a 5K
student initialised from it (``init-student``), real corpus texts. A batch is ``--batch-size`` texts
long enough for ``--length`` student tokens (the first ones of the corpus that are), truncated there;
the teacher reads ``"passage: " + text`` in its own tokenisation.

Measured in one process, per step (minimum over ``--steps`` interleaved rounds after a warm-up round):

* ``teacher``: teacher forward with the hidden states the span loss pools (eval, no grad);
* ``student``: the student passes the method needs (the unmasked pass, and the masked MLM pass unless
  ``--alpha-mlm 0``),
  forward + a plain mean of the outputs + backward;
* ``full``: the real step without cache (teacher forward + :class:`RepresentationModule` with the span,
  sentence, relation and MLM losses + backward);
* ``cached``: the same step with the teacher's outputs read from a filled cache (later epochs);
* overhead = ``full - teacher - student`` as a share of ``teacher + student``; speed-up = ``full / cached``.

    python scripts/bench_span.py --teacher runs/e5 --student runs/s5k --output docs/bench_span.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def texts_of_length(student_tok, corpus: list[str], length: int, n: int) -> list[str]:
    from distilrubert.corpus import Corpus

    out = []
    for doc in Corpus(corpus):
        if len(student_tok(doc, add_special_tokens=True)["input_ids"]) >= length:
            out.append(doc)
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} corpus texts have {length} student tokens")


def timed_round_robin(functions: dict, rounds: int) -> dict[str, float]:
    for fn in functions.values():  # warm-up
        fn()
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="An imported e5 directory (import-teacher).")
    parser.add_argument("--student", required=True, help="A 5K student initialised from it (init-student).")
    parser.add_argument("--corpus", nargs="+", default=[str(ROOT.parent / "shared/data/corpus/docs_ru.jsonl")])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha-mlm", type=float, default=0.5,
                        help="Weight of the student's MLM loss (0: no masked pass, one student pass per step).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from distilrubert.distill import DistillConfig, load_student, resolve_for_teacher
    from distilrubert.loading import load_teacher
    from distilrubert.represent import RepresentationTask, TextCollator
    from distilrubert.teacher_spec import read_teacher_spec
    from distilrubert.textunits import build_text_units

    teacher, teacher_tok = load_teacher(args.teacher)
    student, student_tok = load_student(args.student)
    spec = read_teacher_spec(args.teacher)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "texts.jsonl"
        texts = texts_of_length(student_tok, args.corpus, args.length, args.batch_size)
        corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                          encoding="utf-8")
        config = resolve_for_teacher(DistillConfig(
            teacher=args.teacher, student=args.student, corpus=[str(corpus)], output=str(Path(tmp) / "out"),
            cache_dir=str(Path(tmp) / "cache"), max_length=args.length, layer_mapping="last", alpha_mlm=args.alpha_mlm,
            progress=False), False)
        units = build_text_units([corpus], student_tok, teacher_tok, args.length, 512, spec.prompt,
                                 Path(tmp) / "cache", span=True, progress=False)
        probs = np.full(student.config.vocab_size, 1.0 / student.config.vocab_size)
        collator = TextCollator(units, student_tok, probs, seed=0, teacher_pad_id=teacher_tok.pad_token_id)
        batch = {k: torch.as_tensor(v) for k, v in collator(np.arange(len(units)), step=0).items()}
        task = RepresentationTask(config, teacher, student, units, spec, {}, None)
        accelerator = Accelerator(cpu=True)
        task.setup(accelerator)
        module = task.module.train()
        cache_parts = (task.sentence_cache, task.group_cache)

        def teacher_step():
            task.sentence_cache = task.group_cache = None
            task._teacher_outputs(batch)

        def student_only():
            base = module.student.base_model
            out = base(input_ids=batch["student_input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).last_hidden_state.mean()
            if args.alpha_mlm > 0:
                out = out + module.student(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits.mean()
            out.backward()
            module.zero_grad(set_to_none=True)

        def full_step():
            task.sentence_cache = task.group_cache = None
            task.step_losses(module, batch)["loss"].backward()
            module.zero_grad(set_to_none=True)

        def cached_step():
            task.sentence_cache, task.group_cache = cache_parts
            task.step_losses(module, batch)["loss"].backward()
            module.zero_grad(set_to_none=True)

        task.sentence_cache, task.group_cache = cache_parts
        task.step_losses(module, batch)  # fills the cache
        times = timed_round_robin({"teacher": teacher_step, "student": student_only, "full": full_step,
                                   "cached": cached_step}, args.steps)
    base = times["teacher"] + times["student"]
    result = {"batch": [args.batch_size, args.length], "threads": args.threads, "alpha_mlm": args.alpha_mlm,
              "seconds": times,
              "student_tokens": int(batch["attention_mask"].sum()),
              "teacher_tokens": int(batch["teacher_attention_mask"].sum()), "groups": int(batch["n_groups"]),
              "overhead": (times["full"] - base) / base, "cache_speedup": times["full"] / times["cached"]}
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
