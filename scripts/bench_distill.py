"""Distillation throughput, alignment/loss overhead, reduce-alignment memory and teacher-cache speed-up.

A synthetic setup of the paper's scale: a random 12-layer, 768-hidden BERT teacher with a
119,547-token vocabulary and the 5K student (DistilBERT 3 x 264, 12 heads, FFN 792). The two
vocabularies are synthetic but shaped like the real pair: the teacher vocabulary holds every student
token (the intersection) plus words spelled with 2-4 student pieces. A batch is 32 sequences; each
teacher sequence is drawn (85% shared single-piece tokens, 15% multi-piece words) until its rewrite
in student tokens reaches 128 pieces, and the student reads that rewrite (its own tokenisation of
the same text), so both sides are ~128 tokens long.

Measured in the same process, per step (minimum over ``--steps`` interleaved rounds after a warm-up round):

* ``teacher``: teacher forward (eval, no grad).
* ``student``: the student passes the method needs (``match``: the masked pass; ``reduce``: the
  masked pass and the unmasked pass over the rewritten teacher sequence), forward + MLM loss
  (a plain mean of the second pass's logits for ``reduce``) + backward.
* ``full``: the real distillation step (teacher forward + ``DistillModule`` forward with KL, MLM and
  hidden losses + backward).
* overhead = ``full - teacher - student``, reported as a share of ``teacher + student``.

``--memory`` runs the ``reduce`` step alone and reports the peak resident memory it adds on top of
the loaded models (``ru_maxrss``). ``--cache`` times a step that fills the top-k teacher cache and a
step that reads it (an epoch is a sequence of such steps, so the ratio is the epoch speed-up).

Usage (numbers in docs/distillation.md):
    python scripts/bench_distill.py --alignment match reduce --steps 3
    python scripts/bench_distill.py --memory
    python scripts/bench_distill.py --cache --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import string
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distilrubert.align import KL_KERNELS, kl_kernel_from_fused, make_alignment
from distilrubert.distill import DistillConfig, DistillModule
from distilrubert.losses import layer_pairs, mlm_loss
from distilrubert.teacher_head import supports_lazy_head, teacher_forward
from distilrubert.tokenmap import TokenMap
from distilrubert.trainer import tune_malloc

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя" + "АБВГДЕЖЗИКЛМНОПРСТ" + string.digits


def synthetic_vocabs(student_size: int, teacher_size: int, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Student and teacher ``token -> id`` maps and the ids of the teacher's multi-piece words."""
    rng = np.random.default_rng(seed)
    student = list(SPECIALS) + list(LETTERS) + ["##" + c for c in LETTERS]
    seen = set(student)
    while len(student) < student_size:
        body = "".join(rng.choice(list(LETTERS[:33]), size=int(rng.integers(2, 6))))
        token = body if rng.random() < 0.45 else "##" + body
        if token not in seen:
            seen.add(token)
            student.append(token)
    initial = [t for t in student[5:] if not t.startswith("##")]
    cont = [t for t in student[5:] if t.startswith("##")]
    teacher = list(student)
    tseen = set(teacher)
    while len(teacher) < teacher_size:
        n = int(rng.integers(2, 5))
        word = initial[int(rng.integers(len(initial)))] + "".join(
            cont[int(rng.integers(len(cont)))][2:] for _ in range(n - 1))
        if word not in tseen:
            tseen.add(word)
            teacher.append(word)
    return ({t: i for i, t in enumerate(teacher)}, {t: i for i, t in enumerate(student)},
            np.arange(len(student), len(teacher)))


def synthetic_batch(tmap: TokenMap, alignment, multi_ids: np.ndarray, batch: int, length: int, seed: int):
    """One collated batch (torch tensors) as the data pipeline would produce it."""
    rng = np.random.default_rng(seed)
    shared = np.arange(5 + len(LETTERS) * 2, len(tmap.student_tokens))
    t_seqs, s_seqs = [], []
    for _ in range(batch):
        ids, pieces = [2], 1
        while True:
            tok = int(rng.choice(multi_ids) if rng.random() < 0.15 else rng.choice(shared))
            if pieces + tmap.lengths[tok] + 1 > length:
                break
            ids.append(tok)
            pieces += int(tmap.lengths[tok])
        ids.append(3)
        t_ids = np.asarray(ids, dtype=np.int64)
        t_seqs.append(t_ids)
        s_seqs.append(tmap.rewrite(t_ids)[0])
    t_width, s_width = max(map(len, t_seqs)), max(map(len, s_seqs))
    out = {"teacher_input_ids": np.zeros((batch, t_width), np.int64), "input_ids": np.zeros((batch, s_width), np.int64)}
    out["teacher_attention_mask"] = np.zeros_like(out["teacher_input_ids"])
    out["attention_mask"] = np.zeros_like(out["input_ids"])
    for b, (t, s) in enumerate(zip(t_seqs, s_seqs, strict=True)):
        out["teacher_input_ids"][b, : len(t)] = t
        out["teacher_attention_mask"][b, : len(t)] = 1
        out["input_ids"][b, : len(s)] = s
        out["attention_mask"][b, : len(s)] = 1
    chosen = (rng.random(out["input_ids"].shape) < 0.15) & (out["attention_mask"] == 1)
    labels = np.where(chosen, out["input_ids"], -100)
    out["labels"] = labels
    out["input_ids"] = np.where(labels != -100, 4, out["input_ids"])
    out["seq_index"] = np.arange(batch)
    out.update(alignment.collate(t_seqs, s_seqs, t_width, s_width))
    return {k: torch.as_tensor(v) for k, v in out.items()}, t_seqs


def build_models(teacher_vocab: int, student_vocab: int, teacher_layers: int, teacher_dim: int):
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=teacher_vocab, hidden_size=teacher_dim,
                                         num_hidden_layers=teacher_layers, num_attention_heads=12,
                                         intermediate_size=4 * teacher_dim)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = DistilBertForMaskedLM(DistilBertConfig(vocab_size=student_vocab, dim=264, n_layers=3, n_heads=12,
                                                     hidden_dim=792))
    return teacher, student


def timed_round_robin(functions: dict, rounds: int) -> dict[str, float]:
    """Best (minimum) seconds of each function over ``rounds`` interleaved rounds after one warm-up round.

    Interleaving and the minimum make the comparison robust to other jobs loading the shared CPU: every
    quantity gets the same chances to run on a quiet machine.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(rounds + 1):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            if round_index:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def materialise_teacher_logits(alignment, scores, approximate: bool) -> None:
    """Compute (and drop) the teacher logits the alignment's KL reads, in the blocks it reads them."""
    if alignment.name == "match":
        scores.rows(0, len(scores), columns=alignment.inter_teacher)
        return
    step = alignment.projection_rows
    for start in range(0, len(scores), step):
        stop = min(start + step, len(scores))
        if approximate or alignment.linear_map is None:  # teacher_topk or the dense (logsumexp) KL: row blocks
            scores.rows(start, stop)
        elif alignment.linear_map.native is not None:  # the native kernel's row-permuted projection
            alignment.linear_map.native_logits(scores, start, stop, 1.0)
        else:  # the exact reduce KL: (vocab, positions) blocks, into the buffer the KL reuses
            buffer = alignment.linear_map.buffer("teacher", (scores.vocab_size, stop - start), scores.device)
            scores.rows_t(start, stop, out=buffer)


def bench_alignment(name: str, args, teacher, student, tmap, multi_ids, kl_support: str = "full") -> dict:
    config = DistillConfig(teacher="synthetic", student="synthetic", corpus=["synthetic"], output="unused",
                           alignment=name, kl_support=kl_support, kl_top_k=args.kl_top_k)
    alignment = make_alignment(name, tmap, 0, config.pooling, args.kl_kernel)
    pairs = layer_pairs(config.layer_mapping, 3, args.teacher_layers)
    module = DistillModule(student, alignment, config, pairs, args.teacher_dim)
    module._teacher_layers = args.teacher_layers
    batch, _ = synthetic_batch(tmap, alignment, multi_ids, args.batch_size, args.length, seed=1)
    assert supports_lazy_head(teacher)

    def teacher_lazy():  # the encoder; the output projection is applied where the loss reads it
        return teacher_forward(teacher, batch, output_hidden_states=True)

    def teacher_step():  # what the teacher costs in a step: encoder + projection at the aligned rows
        out = teacher_lazy()
        materialise_teacher_logits(alignment, out.logits, kl_support != "full")
        return out

    def teacher_full_head():  # for reference: the plain forward, logits at every position and token
        with torch.no_grad():
            return teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                           output_hidden_states=True)

    def student_only():
        module.zero_grad(set_to_none=True)
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = mlm_loss(out.logits, batch["labels"])
        if name == "reduce":
            second = student(input_ids=batch["reduce_input_ids"], attention_mask=batch["reduce_attention_mask"],
                             output_hidden_states=True)
            loss = loss + second.logits.float().mean()
        loss.backward()

    def full_step():
        module.zero_grad(set_to_none=True)
        t_out = teacher_lazy()
        losses = module(batch, teacher_logits=t_out.logits, teacher_hidden=t_out.hidden_states)
        losses["loss"].backward()

    functions = {"teacher": teacher_step, "student": student_only, "full": full_step}
    if args.full_head:
        functions["teacher_full_head"] = teacher_full_head
    best = timed_round_robin(functions, args.steps)
    t_teacher, t_student, t_full = best["teacher"], best["student"], best["full"]
    tokens = int(batch["attention_mask"].sum())
    overhead = t_full - t_teacher - t_student
    result = {
        "alignment": name, "pooling": config.pooling if name == "reduce" else None,
        "kl_kernel": alignment.linear_map.kernel_name if name == "reduce" else None,
        "kl_support": kl_support if kl_support == "full" else f"{kl_support} (k={args.kl_top_k})",
        "teacher_shape": list(batch["teacher_input_ids"].shape),
        "student_shape": list(batch["input_ids"].shape), "aligned_positions": len(batch["t_index"]),
        "teacher_forward_s": round(t_teacher, 3), "student_fwd_bwd_s": round(t_student, 3),
        "full_step_s": round(t_full, 3), "overhead_s": round(overhead, 3),
        "overhead_share": round(overhead / (t_teacher + t_student), 3),
        "student_tokens_per_s": round(tokens / t_full, 1),
    }
    if args.full_head:
        result["teacher_forward_full_head_s"] = round(best["teacher_full_head"], 3)
    if kl_support != "full":
        result.update(kl_difference(module, alignment, batch, teacher_lazy(), config))
    return result


def kl_difference(module, alignment, batch, t_out, config) -> dict:
    """The approximate (top-k) KL and its gradient against the exact ones on the same batch."""
    module.zero_grad(set_to_none=True)
    masked = module.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    aligned = alignment.student_outputs(module.student, batch, masked, False)
    logits = aligned.logits.detach().requires_grad_()
    exact = alignment.kl(batch, logits, t_out.logits, config.temperature)
    (grad_exact,) = torch.autograd.grad(exact, logits)
    ids, logp = alignment.teacher_topk(batch, t_out.logits, config.temperature, config.kl_top_k)
    approx = alignment.kl_topk(batch, logits, ids, logp, config.temperature)
    (grad_approx,) = torch.autograd.grad(approx, logits)
    cosine = torch.nn.functional.cosine_similarity(grad_exact.flatten(), grad_approx.flatten(), dim=0)
    mass = logp.float().exp().sum(-1)  # (n,) teacher probability mass inside the top-k
    return {"kl_exact": round(float(exact), 4), "kl_top_k": round(float(approx), 4),
            "kl_relative_difference": round(float(approx - exact) / float(exact), 4),
            "gradient_cosine": round(float(cosine), 4),
            "teacher_mass_in_top_k_mean": round(float(mass.mean()), 4),
            "teacher_mass_in_top_k_min": round(float(mass.min()), 4)}


def bench_memory(args, teacher, student, tmap, multi_ids) -> dict:
    config = DistillConfig(teacher="synthetic", student="synthetic", corpus=["synthetic"], output="unused",
                           alignment="reduce")
    alignment = make_alignment("reduce", tmap, 0, config.pooling)
    pairs = layer_pairs(config.layer_mapping, 3, args.teacher_layers)
    module = DistillModule(student, alignment, config, pairs, args.teacher_dim)
    batch, _ = synthetic_batch(tmap, alignment, multi_ids, args.batch_size, args.length, seed=1)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 - MiB on Linux
    supports_lazy_head(teacher)  # the one-off 4-token probe, before the baseline
    base = rss()
    t_out = teacher_forward(teacher, batch, output_hidden_states=True)  # the projection runs inside the KL
    after_teacher = rss()
    losses = module(batch, teacher_logits=t_out.logits, teacher_hidden=t_out.hidden_states)
    losses["loss"].backward()
    after_step = rss()
    n, vocab = len(batch["t_index"]), len(tmap.teacher_tokens)
    return {
        "models_and_batch_peak_mib": round(base), "teacher_forward_adds_mib": round(after_teacher - base),
        "full_reduce_step_adds_mib": round(after_step - base),
        "full_teacher_logits_would_be_mib": round(batch["teacher_input_ids"].numel() * vocab * 4 / 2**20),
        "one_dense_positions_x_teacher_vocab_fp32_mib": round(n * vocab * 4 / 2**20),
        "aligned_positions": n, "chunk_rows": alignment.chunk_rows,
        "projection_rows": alignment.projection_rows,
    }


class _Store:
    """The part of a SequenceStore the teacher cache reads."""

    def __init__(self, teacher: np.ndarray, teacher_offsets: np.ndarray) -> None:
        self.teacher = teacher
        self.teacher_offsets = teacher_offsets

    def __len__(self) -> int:
        return len(self.teacher_offsets) - 1


def bench_cache(args, teacher, student, tmap, multi_ids) -> dict:
    from distilrubert.teacher_cache import TeacherCache

    config = DistillConfig(teacher="synthetic", student="synthetic", corpus=["synthetic"], output="unused",
                           alignment="reduce", alpha_hidden=0.0, cache_teacher="top-k")
    alignment = make_alignment("reduce", tmap, 0, config.pooling)
    module = DistillModule(student, alignment, config, [], args.teacher_dim)
    batch, t_seqs = synthetic_batch(tmap, alignment, multi_ids, args.batch_size, args.length, seed=1)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in t_seqs])])
    store = _Store(np.zeros(int(offsets[-1]), np.int32), offsets)
    with tempfile.TemporaryDirectory() as tmp:
        cache = TeacherCache(Path(tmp), store, config.cache_top_k, True, {"bench": 1})
        cache.open()

        def miss_step():  # first epoch: teacher forward, store the top-k, train on it
            cache.filled[:] = 0
            module.zero_grad(set_to_none=True)
            t_out = teacher_forward(teacher, batch)
            ids, logp = alignment.teacher_topk(batch, t_out.logits, config.temperature, cache.k)
            cache.put(batch, ids, logp)
            module(batch, topk=(ids, logp))["loss"].backward()

        def hit_step():  # later epochs: read the top-k from disk, no teacher
            module.zero_grad(set_to_none=True)
            cached = cache.get(batch)
            assert cached is not None
            module(batch, topk=cached)["loss"].backward()

        best = timed_round_robin({"miss": miss_step, "hit": hit_step}, args.steps)
        t_miss, t_hit = best["miss"], best["hit"]
    return {"first_epoch_step_s": round(t_miss, 3), "cached_epoch_step_s": round(t_hit, 3),
            "speedup": round(t_miss / t_hit, 2), "k": config.cache_top_k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alignment", nargs="+", default=["match", "reduce"])
    parser.add_argument("--steps", type=int, default=3, help="Timed rounds after one warm-up round.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--teacher-vocab", type=int, default=119547)
    parser.add_argument("--student-vocab", type=int, default=5000)
    parser.add_argument("--teacher-layers", type=int, default=12)
    parser.add_argument("--teacher-dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kl-kernel", default="auto", choices=list(KL_KERNELS),
                        help="reduce KL kernels (as distill --kl-kernel).")
    parser.add_argument("--fused-kl", default=None, choices=["auto", "native", "compile", "off", "on"],
                        help="Deprecated spelling of --kl-kernel (off = eager, on = compile).")
    parser.add_argument("--kl-support", nargs="+", default=["full"], choices=["full", "teacher-top-k"],
                        help="KL supports to time (teacher-top-k also reports its difference from the exact KL).")
    parser.add_argument("--kl-top-k", type=int, default=1024)
    parser.add_argument("--full-head", action="store_true",
                        help="Also time the plain teacher forward (logits at every position, whole vocabulary).")
    parser.add_argument("--memory", action="store_true", help="Only measure the reduce step's peak memory.")
    parser.add_argument("--cache", action="store_true", help="Only measure the teacher-cache speed-up.")
    parser.add_argument("--output", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    if args.fused_kl is not None:
        args.kl_kernel = kl_kernel_from_fused(args.fused_kl)
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc()  # as the training loop does on a CPU (the whole process: every quantity)
    start = time.perf_counter()
    teacher_vocab, student_vocab, multi_ids = synthetic_vocabs(args.student_vocab, args.teacher_vocab)
    tmap = TokenMap.from_vocabs(teacher_vocab, student_vocab)
    teacher, student = build_models(len(teacher_vocab), len(student_vocab), args.teacher_layers, args.teacher_dim)
    result = {"setup": {"teacher": f"BERT {args.teacher_layers}x{args.teacher_dim}, vocab {len(teacher_vocab)}",
                        "student": f"DistilBERT 3x264, vocab {len(student_vocab)}",
                        "batch": f"{args.batch_size} x <= {args.length}", "threads": args.threads,
                        "token_map": tmap.stats(), "kl_kernel": args.kl_kernel, "malloc_tuned": malloc_tuned}}
    if args.memory:
        result["memory"] = bench_memory(args, teacher, student, tmap, multi_ids)
    elif args.cache:
        result["cache"] = bench_cache(args, teacher, student, tmap, multi_ids)
    else:
        result["throughput"] = [bench_alignment(name, args, teacher, student, tmap, multi_ids, support)
                                for name in args.alignment for support in args.kl_support]
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
