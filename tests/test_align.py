"""The two alignments on hand-written token sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilrubert.align import MatchAlignment, ReduceAlignment, match_positions, pool_rows
from distilrubert.tokenmap import TokenMap

TEACHER = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "привет", "мир", "##ы", "中"])}
STUDENT = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "при", "##вет", "мир", "##ы"])}


@pytest.fixture
def token_map() -> TokenMap:
    return TokenMap.from_vocabs(TEACHER, STUDENT)


def test_match_positions_monotonic_greedy():
    teacher = ["[CLS]", "при", "##вет", ",", "мир", "!", "[SEP]"]
    student = ["[CLS]", "привет", ",", "ми", "##р", "!", "[SEP]"]
    assert match_positions(teacher, student) == [(0, 0), (3, 2), (5, 5), (6, 6)]
    # Monotonic: once "b" matched late, an earlier "a" cannot be matched.
    assert match_positions(["b", "a"], ["a", "b"]) == [(0, 1)]
    # Repeated tokens take the next occurrence after the last match.
    assert match_positions(["x", "x", "x"], ["x", "y", "x"]) == [(0, 0), (1, 2)]
    assert match_positions(["a"], ["b"]) == []


def test_match_alignment_collate(token_map):
    align = MatchAlignment(token_map, student_pad_id=0)
    t_seqs = [np.array([2, 5, 6, 3]), np.array([2, 6, 3])]  # [CLS] привет мир [SEP] / [CLS] мир [SEP]
    s_seqs = [np.array([2, 5, 6, 7, 3]), np.array([2, 7, 3])]
    out = align.collate(t_seqs, s_seqs, teacher_width=4, student_width=5)
    # "привет" is not a student token; [CLS], мир, [SEP] match.
    assert out["t_index"].tolist() == [0, 2, 3, 4 + 0, 4 + 1, 4 + 2]
    assert out["s_index"].tolist() == [0, 3, 4, 5 + 0, 5 + 1, 5 + 2]


def test_reduce_collate_rewrites_teacher_sequence(token_map):
    align = ReduceAlignment(token_map, student_pad_id=0)
    # [CLS] привет мир ##ы 中 [SEP]: 中 has no student spelling ([UNK], excluded from the KL).
    t_seqs = [np.array([2, 5, 6, 7, 8, 3]), np.array([2, 6, 3])]
    out = align.collate(t_seqs, [np.array([2]), np.array([2])], teacher_width=6, student_width=1)
    assert out["reduce_input_ids"][0].tolist() == [2, 5, 6, 7, 8, 1, 3]
    assert out["reduce_owner"][0].tolist() == [0, 1, 1, 2, 3, 4, 5]
    assert out["reduce_input_ids"][1].tolist() == [2, 7, 3, 0, 0, 0, 0]
    assert out["reduce_owner"][1].tolist() == [6, 7, 8, -1, -1, -1, -1]
    assert out["reduce_attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert out["t_index"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]


@pytest.mark.parametrize("pooling", ["sum", "mean", "logsumexp"])
def test_pool_rows_and_map_to_teacher_by_hand(token_map, pooling):
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling)
    values = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    pooled = pool_rows(values, torch.tensor([0, 0, 1]), 2, pooling)
    reduce = {"sum": lambda x: x.sum(0), "mean": lambda x: x.mean(0), "logsumexp": lambda x: x.logsumexp(0)}[pooling]
    assert torch.allclose(pooled[0], reduce(values[:2]))
    assert torch.allclose(pooled[1], values[2])

    scores = torch.randn(2, len(STUDENT))
    mapped = align.map_to_teacher(scores)  # (2, covered teacher tokens)
    covered = [t for t, i in sorted(TEACHER.items(), key=lambda kv: kv[1]) if token_map.covered[i]]
    assert "中" not in covered
    col = covered.index("привет")
    pieces = scores[:, [STUDENT["при"], STUDENT["##вет"]]]
    assert torch.allclose(mapped[:, col], reduce(pieces.t()), atol=1e-6)
    col = covered.index("мир")
    assert torch.allclose(mapped[:, col], scores[:, STUDENT["мир"]], atol=1e-6)


@pytest.mark.parametrize(("pooling", "fused"), [("sum", "off"), ("sum", "compile"), ("sum", "native"),
                                                ("mean", "native"), ("logsumexp", "off")])
def test_reduce_kl_matches_dense_computation(token_map, pooling, fused):
    torch.manual_seed(0)
    temperature = 2.0
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling, chunk_elements=8,  # several chunks
                            fused=fused)
    t_seqs = [np.array([2, 5, 6, 7, 8, 3]), np.array([2, 6, 3])]
    extra = align.collate(t_seqs, [np.array([2]), np.array([2])], teacher_width=6, student_width=1)
    batch = {k: torch.as_tensor(v) for k, v in extra.items()}
    batch["teacher_input_ids"] = torch.zeros(2, 6, dtype=torch.long)
    student_logits = torch.randn(2, batch["reduce_input_ids"].shape[1], len(STUDENT), requires_grad=True)
    teacher_logits = torch.randn(2, 6, len(TEACHER))
    got = align.kl(batch, student_logits, teacher_logits, temperature)
    got.backward()
    assert student_logits.grad is not None and torch.isfinite(student_logits.grad).all()

    # Dense reference: loop over teacher positions and teacher tokens.
    covered = np.flatnonzero(token_map.covered)
    owner = batch["reduce_owner"]
    total, n = 0.0, 0
    combine = {"sum": lambda x: x.sum(0), "mean": lambda x: x.mean(0), "logsumexp": lambda x: x.logsumexp(0)}[pooling]
    for b in range(2):
        for j in range(len(t_seqs[b])):
            if not token_map.covered[t_seqs[b][j]]:
                continue
            rows = (owner[b] == b * 6 + j).nonzero().flatten()
            logq = torch.log_softmax(student_logits[b, rows].detach() / temperature, dim=-1)
            pooled = combine(logq)  # (student_vocab,)
            pieces = [torch.as_tensor(token_map.teacher_to_student[t, : token_map.lengths[t]]) for t in covered]
            scores = torch.stack([combine(pooled[p]) for p in pieces])
            s_logp = torch.log_softmax(scores, dim=-1)
            t_logp = torch.log_softmax(teacher_logits[b, j, covered] / temperature, dim=-1)
            total += float((t_logp.exp() * (t_logp - s_logp)).sum()) * temperature**2
            n += 1
    assert float(got.detach()) == pytest.approx(total / n, rel=1e-5)


def test_reduce_topk_kl_is_full_kl_with_full_support(token_map):
    torch.manual_seed(1)
    align = ReduceAlignment(token_map, student_pad_id=0)
    extra = align.collate([np.array([2, 5, 6, 3])], [np.array([2])], teacher_width=4, student_width=1)
    batch = {k: torch.as_tensor(v) for k, v in extra.items()}
    batch["teacher_input_ids"] = torch.zeros(1, 4, dtype=torch.long)
    student_logits = torch.randn(1, batch["reduce_input_ids"].shape[1], len(STUDENT))
    teacher_logits = torch.randn(1, 4, len(TEACHER))
    ids, logp = align.teacher_topk(batch, teacher_logits, 2.0, k=align.support_size())
    full = align.kl(batch, student_logits, teacher_logits, 2.0)
    cached = align.kl_topk(batch, student_logits, ids, logp, 2.0)
    assert float(cached) == pytest.approx(float(full), rel=1e-5)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_fused_reduce_kl_value_and_gradient_match_autograd(token_map, pooling):
    torch.manual_seed(2)
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling, chunk_elements=16)
    pooled = torch.randn(5, len(STUDENT), requires_grad=True)
    teacher_logits = torch.randn(1, 5, len(TEACHER))
    batch = {"t_index": torch.arange(5), "reduce_owner": torch.arange(5)[None], "teacher_input_ids": torch.zeros(1, 5)}
    # Student "logits" whose log-softmax at T = 1 are the pooled scores' log-softmax: compare on the mapped KL.
    fused = align.kl(batch, pooled[None], teacher_logits, temperature=1.0)
    fused.backward()
    grad_fused = pooled.grad.clone()
    pooled.grad = None
    logp = torch.log_softmax(pooled, dim=-1)
    reference = torch.stack([align._kl_dense(logp[i:i + 1], teacher_logits[0, i:i + 1], 1.0)
                             for i in range(5)]).sum() / 5
    reference.backward()
    assert float(fused.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert torch.allclose(grad_fused, pooled.grad, atol=1e-5)


def _fused_and_dense(align, scores, teacher_rows, temperature):
    """The reduce KL as the alignment computes it (native, compiled or eager) and the autograd reference.

    One student piece per aligned row, with logits ``scores * T``: its pooled log-probabilities are
    ``log_softmax(scores)``. Values (without T^2) and gradients with respect to those logits.
    """
    from distilrubert.align.kl_eager import _MappedKL
    from distilrubert.align.kl_native import _NativeReduceKL
    from distilrubert.teacher_head import TeacherScores

    n = len(teacher_rows)
    logits = (scores * temperature).clone().requires_grad_()
    teacher = TeacherScores.from_logits(teacher_rows[None], torch.arange(n))
    if align.linear_map.native is not None:
        fused = _NativeReduceKL.apply(logits, torch.arange(n), n, align.linear_map, teacher, temperature,
                                      align.projection_rows)  # 37 positions: a full 32-position group + 5
    else:
        pooled = torch.log_softmax(logits / temperature, dim=-1)
        fused = _MappedKL.apply(pooled, align.linear_map, teacher, temperature, align.chunk_rows,
                                2 * align.chunk_rows)
    (grad_fused,) = torch.autograd.grad(fused, logits)
    pooled = torch.log_softmax(logits / temperature, dim=-1)
    dense = align._kl_dense(pooled, teacher_rows, temperature) / temperature**2  # the kernels have no T^2
    (grad_dense,) = torch.autograd.grad(dense, logits)
    return fused.detach(), grad_fused, dense.detach(), grad_dense


@pytest.mark.parametrize("fused", ["off", "on", "native"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_fused_reduce_kl_exact_when_the_shift_bound_underflows(token_map, pooling, fused):
    # Every pooled score is -100 except "при", which is in no single-piece teacher token: all mapped scores
    # are <= -100 below the cheap shift bound (0), so exp underflows and the rows are redone exactly.
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling, chunk_elements=20, fused=fused)
    pooled = torch.full((3, len(STUDENT)), -100.0)
    pooled[:, STUDENT["при"]] = 0.0
    pooled[1, STUDENT["мир"]] = -101.0
    teacher_rows = torch.randn(3, len(TEACHER), generator=torch.Generator().manual_seed(3))
    fused, grad_fused, dense, grad_dense = _fused_and_dense(align, pooled, teacher_rows, 2.0)
    assert torch.isfinite(fused) and torch.isfinite(grad_fused).all()
    assert float(fused) == pytest.approx(float(dense), rel=1e-4)  # fp32 rounding of scores of size 100
    assert torch.allclose(grad_fused, grad_dense, atol=1e-5)


@pytest.mark.parametrize("fused", ["off", "on", "native"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_fused_reduce_kl_with_uncovered_tokens_and_extreme_teacher_logits(token_map, pooling, fused):
    # "中" (uncovered) gets the teacher's largest logit: it must not leak into the covered distribution.
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling, chunk_elements=9 * 2, fused=fused)
    generator = torch.Generator().manual_seed(4)
    pooled = torch.log_softmax(torch.randn(5, len(STUDENT), generator=generator) * 3, dim=-1)
    teacher_rows = torch.randn(5, len(TEACHER), generator=generator) * 5
    teacher_rows[:, TEACHER["中"]] = 1e4
    fused, grad_fused, dense, grad_dense = _fused_and_dense(align, pooled, teacher_rows, 2.0)
    assert float(fused) == pytest.approx(float(dense), rel=1e-5)
    assert torch.allclose(grad_fused, grad_dense, atol=1e-5)


def _synthetic_token_map(n_student: int, n_teacher: int, seed: int) -> TokenMap:
    """A student vocabulary of 2-letter tokens and a teacher one of 1-4-piece words (some repeated pieces)."""
    rng = np.random.default_rng(seed)
    letters = "абвгдежзиклмнопрстуфх"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({a + b for a in letters for b in letters})[: n_student - len(specials)]
    half = len(words) // 2
    student = specials + words[:half] + ["##" + w for w in words[half:]]
    teacher = [*specials, "中"]  # "中": uncovered
    while len(teacher) < n_teacher:
        pieces = [words[rng.integers(half)], *(words[half + rng.integers(len(words) - half)]
                                               for _ in range(rng.integers(0, 4)))]
        word = "".join(pieces)
        if word not in teacher:
            teacher.append(word)
    return TokenMap.from_vocabs({t: i for i, t in enumerate(teacher)}, {t: i for i, t in enumerate(student)})


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_native_reduce_kl_matches_dense_on_many_positions(pooling):
    """Several 16-position groups and a partial one, a teacher block wider than a group, forced rescales."""
    tmap = _synthetic_token_map(300, 2000, seed=5)
    align = ReduceAlignment(tmap, student_pad_id=0, pooling=pooling, chunk_elements=2000 * 8, fused="native")
    generator = torch.Generator().manual_seed(6)
    pooled = torch.log_softmax(torch.randn(37, 300, generator=generator) * 4, dim=-1)
    teacher_rows = torch.randn(37, 2000, generator=generator) * 3
    # Logits rising along the vocabulary: the running shift must be raised (and the sums rescaled) many times.
    teacher_rows[:5] += torch.linspace(0, 400, 2000)
    fused, grad_fused, dense, grad_dense = _fused_and_dense(align, pooled, teacher_rows, 2.0)
    assert align.linear_map.kernel_name == "native"  # built and chosen, not a fallback
    assert float(fused) == pytest.approx(float(dense), rel=1e-5)
    assert torch.allclose(grad_fused, grad_dense, atol=1e-6)


@pytest.mark.parametrize("mean", [False, True])
def test_native_pooled_log_softmax_kernels_match_torch(mean):
    from distilrubert.native import reduce_kl_kernel

    native = reduce_kl_kernel()
    assert native is not None  # the build works wherever the tests run (CI included)
    generator = torch.Generator().manual_seed(7)
    # 37 columns: two 16-wide vectors and a scalar tail; 11 rows, row 4 without pieces, pieces of row 11 = none
    x = (torch.randn(50, 37, generator=generator) * 5).requires_grad_()
    rows = torch.randint(0, 12, (50,), generator=generator)
    rows[rows == 4] = 11
    out = torch.empty(11, 37)
    lse, counts = native.pooled_forward(x.detach(), rows, 0.5, mean, out)
    assert torch.allclose(lse, torch.logsumexp(x.detach() * 0.5, -1), atol=1e-5)
    expected = pool_rows(torch.log_softmax(x * 0.5, -1), torch.where(rows == 11, -1, rows), 11,
                         "mean" if mean else "sum")
    assert torch.allclose(out, expected.detach(), atol=1e-5)
    assert counts[4] == 0 and out[4].abs().sum() == 0
    upstream = torch.randn(11, 37, generator=generator)
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), x)
    got = torch.empty(50, 37)
    native.pooled_backward(x.detach(), lse, rows, counts, upstream, 0.5, mean, got)
    assert torch.allclose(got, grad_expected, atol=1e-5)
    assert got[rows == 11].abs().sum() == 0  # pieces of no aligned position get no gradient
    with pytest.raises(RuntimeError, match="out of range"):
        native.pooled_forward(x.detach(), rows + 1, 0.5, mean, out)


def test_native_reduce_kl_refuses_a_second_backward(token_map):
    from distilrubert.align.kl_native import _NativeReduceKL
    from distilrubert.teacher_head import TeacherScores

    align = ReduceAlignment(token_map, student_pad_id=0, fused="native")
    logits = torch.randn(3, len(STUDENT), requires_grad=True)
    teacher = TeacherScores.from_logits(torch.randn(1, 3, len(TEACHER)), torch.arange(3))
    loss = _NativeReduceKL.apply(logits, torch.arange(3), 3, align.linear_map, teacher, 2.0, align.projection_rows)
    (2 * loss).backward(retain_graph=True)
    first = logits.grad.clone()
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()
    logits.grad = None
    again = _NativeReduceKL.apply(logits, torch.arange(3), 3, align.linear_map, teacher, 2.0, align.projection_rows)
    again.backward()
    assert torch.allclose(first, 2 * logits.grad)  # the upstream gradient scales the kept one


def test_large_work_buffers_are_fresh_huge_page_mappings(token_map):
    from distilrubert.native import huge_page_buffer

    buffer = huge_page_buffer(3 << 20)
    assert buffer.dtype == torch.float32 and buffer.numel() == 3 << 20
    buffer.view(3, 1 << 20).fill_(2.0)
    assert float(buffer.sum()) == 2.0 * (3 << 20)
    align = ReduceAlignment(token_map, student_pad_id=0)
    big = align.linear_map.buffer("teacher", (1 << 10, 1 << 12), torch.device("cpu"))  # 16 MB
    small = align.linear_map.buffer("pooled", (4, 4), torch.device("cpu"))
    assert big.shape == (1 << 10, 1 << 12) and small.shape == (4, 4)
    # Reused, not reallocated, while it is large enough.
    assert align.linear_map.buffer("teacher", (1 << 10, 1 << 11), torch.device("cpu")).data_ptr() == big.data_ptr()


def test_native_kernel_build_failure_falls_back_with_a_warning(token_map, monkeypatch):
    import distilrubert.native as native

    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "SOURCE", native.SOURCE.with_name("missing.cpp"))
    monkeypatch.setattr(native, "cpu_capability", lambda: "TEST_MISSING")  # a fresh extension name
    with pytest.warns(UserWarning, match="native kernel failed"):  # the kernel is chosen when the alignment is built
        align = ReduceAlignment(token_map, student_pad_id=0, fused="native")
    assert align.linear_map.kernel_name in ("compile", "eager")
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("DISTILRUBERT_NO_NATIVE", "1")
    assert native.reduce_kl_kernel() is None


@pytest.mark.parametrize("alignment", ["match", "reduce"])
def test_kl_from_lazy_teacher_head_equals_kl_from_full_logits(token_map, alignment):
    from distilrubert.teacher_head import TeacherScores

    generator = torch.Generator().manual_seed(5)
    t_seqs = [np.array([2, 5, 6, 7, 8, 3]), np.array([2, 6, 3])]
    s_seqs = [np.array([2, 5, 6, 7, 8, 3]), np.array([2, 7, 3])]
    align = (MatchAlignment(token_map, 0) if alignment == "match"
             else ReduceAlignment(token_map, 0, chunk_elements=2 * len(TEACHER)))
    extra = align.collate(t_seqs, s_seqs, teacher_width=6, student_width=6)
    batch = {k: torch.as_tensor(v) for k, v in extra.items()}
    batch["teacher_input_ids"] = torch.zeros(2, 6, dtype=torch.long)
    width = batch["reduce_input_ids"].shape[1] if alignment == "reduce" else 6
    student_logits = torch.randn(2, width, len(STUDENT), generator=generator)
    inputs = torch.randn(2, 6, 4, generator=generator)
    weight, bias = torch.randn(len(TEACHER), 4, generator=generator), torch.randn(len(TEACHER), generator=generator)
    full = inputs @ weight.t() + bias  # (2, 6, teacher_vocab)
    lazy = TeacherScores(inputs.reshape(-1, 4)[batch["t_index"]], weight, bias)
    a, b = student_logits.clone().requires_grad_(), student_logits.clone().requires_grad_()
    kl_full = align.kl(batch, a, full, 2.0)
    kl_lazy = align.kl(batch, b, lazy, 2.0)
    kl_full.backward()
    kl_lazy.backward()
    assert float(kl_lazy.detach()) == pytest.approx(float(kl_full.detach()), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    ids_full, logp_full = align.teacher_topk(batch, full, 2.0, k=3)
    ids_lazy, logp_lazy = align.teacher_topk(batch, lazy, 2.0, k=3)
    assert torch.equal(ids_full, ids_lazy) and torch.allclose(logp_full, logp_lazy, atol=1e-5)


@pytest.mark.parametrize("fused", ["off", "on", "native"])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_pooled_log_softmax_matches_pool_rows_of_log_softmax(token_map, pooling, fused):
    # The one-pass pooled log-softmax (and its gradient) against pool_rows over a plain log-softmax.
    align = ReduceAlignment(token_map, student_pad_id=0, pooling=pooling, fused=fused)
    t_seqs = [np.array([2, 5, 6, 7, 8, 3]), np.array([2, 6, 3])]  # 中 is uncovered: its piece is unaligned
    extra = align.collate(t_seqs, [np.array([2]), np.array([2])], teacher_width=6, student_width=1)
    batch = {k: torch.as_tensor(v) for k, v in extra.items()}
    batch["teacher_input_ids"] = torch.zeros(2, 6, dtype=torch.long)
    generator = torch.Generator().manual_seed(6)
    logits = (torch.randn(2, batch["reduce_input_ids"].shape[1], len(STUDENT), generator=generator) * 3
              ).requires_grad_()
    upstream = torch.randn(len(batch["t_index"]), len(STUDENT), generator=generator)
    got = align._pooled_logp(batch, logits, 2.0)
    (grad_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    logp = torch.log_softmax(logits / 2.0, dim=-1).reshape(-1, len(STUDENT))
    expected = pool_rows(logp, batch["reduce_owner"].reshape(-1), 12, pooling)[batch["t_index"]]
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), logits)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(grad_got, grad_expected, atol=1e-6)
    assert grad_got[0, 5].abs().sum() == 0  # the uncovered token's piece gets no gradient


def test_fused_kl_flag_is_validated(token_map):
    with pytest.raises(ValueError, match="--fused-kl"):
        ReduceAlignment(token_map, student_pad_id=0, fused="maybe")
