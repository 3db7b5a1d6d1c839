"""The two vocabulary alignments of the paper (REFERENCE 2.4): where teacher and student outputs meet.

Both alignments implement one interface, so the training loop and the losses never branch on the
alignment's name:

* :meth:`Alignment.collate` (numpy, in the data step) records for a batch which teacher positions are
  *aligned* (``t_index``: flat indices into ``batch x teacher_length``) and what the student side
  needs to produce one row per aligned position.
* :meth:`Alignment.student_outputs` returns the student forward pass whose logits / hidden states meet
  the teacher: ``match`` reuses the student's masked pass over its own tokenisation; ``reduce`` runs
  a second, unmasked pass over the teacher sequence rewritten in student tokens (what the released
  code does).
* :meth:`Alignment.kl` / :meth:`Alignment.kl_topk` compute ``KL x T^2`` over the alignment's support
  from full teacher logits or from a cached top-k; :meth:`Alignment.teacher_topk` builds that cache.
* :meth:`Alignment.student_rows` / :meth:`Alignment.teacher_rows` pick the aligned hidden states.

``match``: monotonic greedy matching of identical token strings (:func:`match_positions`); the KL is
over the vocabulary intersection, both distributions renormalised over it.

``reduce``: the teacher sequence is rewritten in student tokens through the token map; the student's
log-probabilities (at temperature ``T``) over the pieces of each teacher position are pooled
(``sum`` / ``mean`` / ``logsumexp``), then mapped into the teacher vocabulary: the score of teacher
token ``t`` is the same pooling of the pooled log-probabilities of ``t``'s pieces. The KL runs over the
covered teacher tokens. With a 120K teacher vocabulary the ``(positions, teacher_vocab)`` matrices are
built chunk by chunk under activation checkpointing (recomputed in the backward pass), so memory stays
at one chunk; the sum/mean map is an ``embedding_bag`` over the padded teacher-to-student matrix, the
logsumexp map a gather from it: no dense one-hot matrix anywhere.
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distilrubert.losses import kl_log_probs
from distilrubert.teacher_head import as_teacher_scores

__all__ = ["ALIGNMENTS", "POOLINGS", "Alignment", "MatchAlignment", "ReduceAlignment", "make_alignment",
           "match_positions", "match_positions_ids", "pool_rows"]

ALIGNMENTS = ("match", "reduce")
POOLINGS = ("sum", "mean", "logsumexp")
FUSED_MODES = ("auto", "native", "compile", "off", "on")  # "on": the earlier name of "compile"


def match_positions(teacher_tokens: Sequence[Any], student_tokens: Sequence[Any]) -> list[tuple[int, int]]:
    """Monotonic greedy matching of identical tokens between two tokenisations of one text.

    Walk the teacher tokens in order; for each, take the first identical student token after the last
    matched student position; a teacher token with no such student token is skipped.

    Args:
        teacher_tokens: The teacher's tokens (strings, or ids in a shared id space).
        student_tokens: The student's tokens.

    Returns:
        ``(teacher_position, student_position)`` pairs, increasing in both.

    >>> match_positions(["[CLS]", "при", "##вет", "мир", "[SEP]"], ["[CLS]", "привет", "мир", "[SEP]"])
    [(0, 0), (3, 2), (4, 3)]
    """
    where: dict[Any, list[int]] = {}
    for j, tok in enumerate(student_tokens):
        where.setdefault(tok, []).append(j)
    pairs: list[tuple[int, int]] = []
    last = -1
    for i, tok in enumerate(teacher_tokens):
        places = where.get(tok)
        if not places:
            continue
        k = bisect.bisect_right(places, last)
        if k < len(places):
            last = places[k]
            pairs.append((i, last))
    return pairs


def match_positions_ids(teacher_ids: np.ndarray, student_ids: np.ndarray,
                        teacher_to_shared: np.ndarray) -> list[tuple[int, int]]:
    """:func:`match_positions` on ids: ``teacher_to_shared[t]`` is the student id spelled like ``t`` or -1."""
    shared = teacher_to_shared[np.asarray(teacher_ids, dtype=np.int64)]  # (lt,) student ids or -1
    return match_positions([int(x) if x >= 0 else None for x in shared], [int(x) for x in student_ids])


def pool_rows(values: torch.Tensor, owner: torch.Tensor, n_rows: int, pooling: str) -> torch.Tensor:
    """Pool rows of ``values`` into ``n_rows`` groups: ``out[g] = pool(values[owner == g])``.

    Args:
        values: ``(n, d)`` rows (e.g. student log-probabilities of each piece).
        owner: ``(n,)`` int64 group of each row, ``-1`` = ignore.
        n_rows: Number of groups.
        pooling: ``sum`` | ``mean`` | ``logsumexp``.

    Returns:
        ``(n_rows, d)``; groups without rows are zeros (``-inf`` for ``logsumexp``).
    """
    keep = owner >= 0
    values, owner = values[keep], owner[keep]  # (n', d), (n',)
    d = values.shape[-1]
    if pooling in ("sum", "mean"):
        out = values.new_zeros(n_rows, d).index_add(0, owner, values)  # (n_rows, d)
        if pooling == "mean":
            counts = torch.bincount(owner, minlength=n_rows).clamp_min(1).to(values.dtype)  # (n_rows,)
            out = out / counts[:, None]
        return out
    if pooling == "logsumexp":
        # Stable log-sum-exp per group: subtract the group's max before exponentiating.
        neg_inf = torch.full((n_rows, d), float("-inf"), dtype=values.dtype, device=values.device)
        top = neg_inf.scatter_reduce(0, owner[:, None].expand_as(values), values.detach(), "amax")  # (n_rows, d)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        summed = values.new_zeros(n_rows, d).index_add(0, owner, (values - top[owner]).exp())  # (n_rows, d)
        return summed.log() + top
    raise ValueError(f"--pooling: unknown pooling {pooling!r} (sum, mean, logsumexp)")


_EXP_FLOOR = -87.0  # exp(-87) ~ 1.6e-38, just above the smallest normal float32 (1.18e-38)
FUSED_MIN_VOCAB = 32768  # ``fused="auto"`` compiles the block kernels for teacher vocabularies at least this large


# The reduce KL's block kernels, compiled by :func:`fused_kernels`. Each is one pass over a (teacher_vocab, c)
# block and none allocates one: a graph that both writes a block and reduces it makes inductor materialise a
# fresh 16 MB temporary per call, and those page faults cost more than the fusion saves.
def _teacher_max_kernel(scaled: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``(1, c)`` column maxima of teacher logits / T over the covered tokens (``bias``: 0, else -inf)."""
    return (scaled + bias).amax(0, keepdim=True)


def _teacher_exp_kernel(scaled: torch.Tensor, bias: torch.Tensor, top: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` = the unnormalised teacher probabilities ``exp(scaled - top)``, 0 on uncovered tokens."""
    out.copy_((scaled + bias - top).exp())


def _teacher_sums_kernel(scaled: torch.Tensor, top: torch.Tensor,
                         probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column sums of ``probs`` and ``sum_t probs_t (scaled_t - top)`` (the entropy's numerator)."""
    return probs.sum(0), (probs * (scaled - top)).sum(0)


def _student_exp_kernel(mapped: torch.Tensor, shift: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` = ``exp(mapped - shift)`` on the covered tokens, 0 elsewhere (exponent floored as the eager path)."""
    out.copy_(((mapped - shift).clamp_min(_EXP_FLOOR) + bias).exp())


def _row_logsumexp_kernel(logits: torch.Tensor, inv_t: float) -> torch.Tensor:
    """``logsumexp(logits / T)`` of each row of ``(rows, vocab)`` logits."""
    return torch.logsumexp(logits * inv_t, -1)


def _pooled_grad_kernel(logits: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, grad_sum: torch.Tensor,
                        rows: torch.Tensor, inv_t: float) -> torch.Tensor:
    """Gradient of the pooled log-softmax (:class:`_PooledLogSoftmax`) with respect to the piece logits."""
    return (grad[rows] - torch.exp(logits * inv_t - lse[:, None]) * grad_sum[rows][:, None]) * inv_t


_EAGER_KERNELS = {"lse": _row_logsumexp_kernel, "pooled_grad": _pooled_grad_kernel}
_FUSED: dict[str, Any] = {}


def fused_kernels() -> dict[str, Any] | None:
    """The reduce KL's kernels compiled with ``torch.compile``, or ``None`` when compiling fails.

    The ``teacher_*`` / ``student_*`` block kernels make four passes over a ``(teacher_vocab, c)`` block of
    what were ten eager kernels, into a reused buffer; ``lse`` / ``pooled_grad`` make the
    student's pooled log-softmax and its gradient single passes over the ``(pieces, student_vocab)``
    logits. With a 120K teacher on the 2-core CPU the reduce overhead fell from ~26% to ~18-21%
    (``scripts/bench_distill.py``; docs/distillation.md). The
    result (or the failure, e.g. no C++ compiler) is kept for the process; torch caches the compiled
    code on disk, so later runs start fast.
    """
    if "kernels" not in _FUSED:
        try:
            # The block kernels with static shapes (dynamic ones were slower in a side check): the block width
            # is fixed (a narrower last block runs eagerly) and so is the vocabulary, so each compiles once.
            # The pooled log-softmax kernels see a new number of pieces every batch: dynamic (as fast there).
            static = {name: torch.compile(fn, dynamic=False) for name, fn in (
                ("teacher_max", _teacher_max_kernel), ("teacher_exp", _teacher_exp_kernel),
                ("teacher_sums", _teacher_sums_kernel), ("student_exp", _student_exp_kernel))}
            dynamic = {name: torch.compile(fn, dynamic=True) for name, fn in (
                ("lse", _row_logsumexp_kernel), ("pooled_grad", _pooled_grad_kernel))}
            kernels = {**static, **dynamic}
            # A tiny call now, so that a missing compiler shows here and not in the middle of a step.
            block, bias, out = -torch.rand(8, 3), torch.zeros(8, 1), torch.empty(8, 3)
            top = kernels["teacher_max"](block, bias)
            kernels["teacher_exp"](block, bias, top, out)
            kernels["teacher_sums"](block, top, out)
            kernels["student_exp"](block, torch.zeros(3), bias, out)
            _FUSED["kernels"] = kernels
        except Exception as error:  # any backend failure means: stay eager
            warnings.warn(f"reduce KL: torch.compile of the block kernels failed ({type(error).__name__}: "
                          f"{str(error)[:200]}); using the eager kernels (slower, same result)", stacklevel=2)
            _FUSED["kernels"] = None
    return _FUSED["kernels"]


class _PooledLogSoftmax(torch.autograd.Function):
    """``(n, student_vocab)``: ``log_softmax(logits / T)`` of the pieces summed (or averaged) per aligned row.

    The same as :func:`pool_rows` over a log-softmax, without the ``(pieces, student_vocab)`` log-softmax
    tensor: ``pooled[r] = (sum_i logits_i) / T - sum_i lse_i`` over the pieces ``i`` of row ``r``, and the
    gradient ``(g[r_i] - softmax_i * sum(g[r_i])) / T`` in one pass.
    """

    @staticmethod
    def forward(ctx, logits, rows, n, temperature, pooling, kernels):
        # logits: (pieces, sv); rows: (pieces,) aligned row of each piece, n = none (padding, unaligned)
        x = logits.float()
        lse = kernels["lse"](x, 1.0 / temperature)  # (pieces,)
        out = x.new_zeros(n + 1, x.shape[1]).index_add_(0, rows, x, alpha=1.0 / temperature)  # (n + 1, sv)
        out.sub_(lse.new_zeros(n + 1).index_add_(0, rows, lse)[:, None])
        counts = None
        if pooling == "mean":
            counts = torch.bincount(rows, minlength=n + 1).clamp_min(1).to(x.dtype)  # (n + 1,)
            out.div_(counts[:, None])
        ctx.save_for_backward(x, lse, rows, counts)
        ctx.temperature, ctx.kernels, ctx.logits_dtype = temperature, kernels, logits.dtype
        return out[:n]

    @staticmethod
    def backward(ctx, grad_output):
        x, lse, rows, counts = ctx.saved_tensors
        grad = torch.cat([grad_output.float(), grad_output.new_zeros(1, grad_output.shape[1])])  # (n + 1, sv)
        if counts is not None:
            grad.div_(counts[:, None])
        grad_x = ctx.kernels["pooled_grad"](x, lse, grad, grad.sum(-1), rows, 1.0 / ctx.temperature)
        return grad_x.to(ctx.logits_dtype), None, None, None, None, None


class _NativePooledLogSoftmax(torch.autograd.Function):
    """:class:`_PooledLogSoftmax` in the native kernels (``pooled_forward`` / ``pooled_backward``)."""

    @staticmethod
    def forward(ctx, logits, rows, n, temperature, mean, native):
        x = logits.float().contiguous()  # (pieces, sv)
        out = x.new_empty(n, x.shape[1])
        lse, counts = native.pooled_forward(x, rows, 1.0 / temperature, mean, out)
        ctx.save_for_backward(x, lse, rows, counts)
        ctx.temperature, ctx.mean, ctx.native, ctx.logits_dtype = temperature, mean, native, logits.dtype
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, lse, rows, counts = ctx.saved_tensors
        grad_x = torch.empty_like(x)
        ctx.native.pooled_backward(x, lse, rows, counts, grad_output.float().contiguous(), 1.0 / ctx.temperature,
                                   ctx.mean, grad_x)
        return grad_x.to(ctx.logits_dtype), None, None, None, None, None


class _LinearMap:
    """The linear (``sum`` / ``mean``) reduce map between student pieces and teacher tokens, and its two sides.

    ``M`` is the sparse ``(student_vocab, teacher_vocab)`` matrix with ``M[s, t]`` = the weight of piece ``s``
    in teacher token ``t`` (1, or ``1 / len(t)`` for ``mean``; 0 for uncovered tokens). A block of ``c``
    aligned positions with pooled student log-probabilities ``p`` (``(c, student_vocab)``) has mapped scores
    ``p @ M``; with teacher probabilities ``P`` (``(c, teacher_vocab)``, zero on uncovered tokens)

        KL = sum_t P log P - p . (P @ M^T) + logsumexp_t(p @ M)   (sum over covered t only)
        dKL/dp = softmax(p @ M) @ M^T - P @ M^T

    so the teacher side reduces to ``(c, student_vocab)`` masses and an entropy, the student side to a
    log-partition and a mass, and the two ``(teacher_vocab, c)`` blocks never meet: each is built once,
    reduced in place and dropped. Both run in the ``(teacher_vocab, c)`` layout: ``p @ M`` is an
    ``embedding_bag`` of the columns of ``p`` over each teacher token's pieces, ``X @ M^T`` one over each
    student piece's teacher tokens, and the teacher projection writes that layout directly.

    Args:
        token_pieces: ``(nnz,)`` student pieces of every teacher token, concatenated (uncovered: none).
        token_offsets: ``(teacher_vocab,)`` start of each teacher token's pieces in ``token_pieces``.
        piece_tokens, piece_offsets, piece_weights: the transpose: for each student piece, the teacher
            tokens that contain it and ``M[s, t]``.
        uncovered: ``(u,)`` teacher ids without a student spelling.
        max_pieces: Most pieces of one teacher token.
        pooling: ``sum`` or ``mean``.
    """

    def __init__(self, token_pieces: torch.Tensor, token_offsets: torch.Tensor, piece_tokens: torch.Tensor,
                 piece_offsets: torch.Tensor, piece_weights: torch.Tensor, uncovered: torch.Tensor,
                 max_pieces: int, pooling: str, fused: str = "auto") -> None:
        if fused not in FUSED_MODES:
            raise ValueError(f"--fused-kl: unknown mode {fused!r} ({', '.join(FUSED_MODES[:-1])})")
        self.fused = "compile" if fused == "on" else fused
        self.token_pieces, self.token_offsets = token_pieces, token_offsets
        self._permuted: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.native: Any = None  # the C++ kernel module (:mod:`distilrubert.native`) when chosen
        self.piece_tokens, self.piece_offsets, self.piece_weights = piece_tokens, piece_offsets, piece_weights
        self.uncovered = uncovered
        self.max_pieces = max_pieces
        self.pooling = pooling
        self.bias = torch.zeros(len(token_offsets), 1)  # (tv, 1): 0 on covered tokens, -inf on the others
        self.bias[uncovered] = float("-inf")
        self.kernels: dict[str, Any] | None = None  # compiled kernels (:func:`fused_kernels`), or eager
        self._kernels_for: str | None = None  # device type ``kernels`` was chosen for
        self.kernel_width = 0  # block width the compiled kernels take
        self._buffers: dict[tuple, torch.Tensor] = {}

    def to(self, device: torch.device) -> _LinearMap:
        for name in ("token_pieces", "token_offsets", "piece_tokens", "piece_offsets", "piece_weights", "uncovered",
                     "bias"):
            setattr(self, name, getattr(self, name).to(device))
        self._buffers, self._permuted = {}, {}
        return self

    def choose_kernels(self, device: torch.device, width: int) -> None:
        """The kernels for ``device``: native (C++), compiled or eager (``auto``: native, else compiled, on CPU
        for a large vocabulary; a kernel that cannot be built falls back to the next one with a warning).

        The compiled kernels take blocks of exactly ``width`` positions (static shapes); others run eagerly.
        """
        self.kernel_width = width
        if self._kernels_for == device.type:
            return
        large_cpu = device.type == "cpu" and len(self.token_offsets) >= FUSED_MIN_VOCAB
        self.native, self.kernels = None, None
        if device.type == "cpu" and (self.fused == "native" or (self.fused == "auto" and large_cpu)):
            from distilrubert.native import reduce_kl_kernel

            self.native = reduce_kl_kernel()
        if self.native is None and (self.fused in ("native", "compile") or (self.fused == "auto" and large_cpu)):
            self.kernels = fused_kernels()
        self._kernels_for = device.type

    @functools.cached_property
    def native_map(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The map in the native kernel's order (CPU, made on first use): teacher ids, pieces, segments.

        See :func:`_segments_by_length`.
        """
        return _segments_by_length(self.token_pieces.cpu().numpy(), self.token_offsets.cpu().numpy())

    @property
    def kernel_name(self) -> str:
        """The kernel in use after :meth:`choose_kernels`: ``native``, ``compile`` or ``eager``."""
        return "native" if self.native is not None else "compile" if self.kernels is not None else "eager"

    def buffer(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A reused work buffer (fresh large allocations cost page faults on every block)."""
        key = (name, device)
        held = self._buffers.get(key)
        if held is None or held.numel() < int(np.prod(shape)):
            numel = int(np.prod(shape))
            if device.type == "cpu" and numel >= 1 << 21:  # 8 MB and more: transparent huge pages (fewer TLB misses)
                from distilrubert.native import huge_page_buffer

                held = huge_page_buffer(numel)
            else:
                held = torch.empty(numel, device=device)
            self._buffers[key] = held
        return held[: int(np.prod(shape))].view(shape)

    def native_logits(self, teacher, start: int, stop: int, scale: float) -> torch.Tensor:
        """Teacher logits x ``scale`` of aligned rows ``start:stop`` for the native kernel, ``(tokens, w)``.

        Rows are the covered teacher tokens in the kernel's order (:func:`_segments_by_length`), so the kernel
        reads them front to back; with the lazy head that order is built into a row-permuted copy of the output
        projection (made once, uncovered rows dropped), otherwise the full logits are gathered. ``w`` is
        ``stop - start`` rounded up to 16 so every row starts on a cache line (the extra columns are not read).
        """
        order = self.native_map[0]
        c = stop - start
        width = -(-c // 16) * 16
        out = self.buffer("teacher", (len(order), width), teacher.device)
        if teacher.inputs is None:  # full logits were given (a custom head): gather the rows
            out[:, :c] = teacher.rows_t(start, stop, scale=scale).index_select(0, order)
            return out
        key = (teacher.weight.data_ptr(), tuple(teacher.weight.shape), teacher.weight.dtype)
        if key not in self._permuted:
            self._permuted = {key: (teacher.weight.index_select(0, order),
                                    None if teacher.bias is None else teacher.bias.index_select(0, order))}
        weight, bias = self._permuted[key]
        x = teacher.inputs[start:stop]  # (c, d)
        if width != c:
            x = torch.cat([x, x.new_zeros(width - c, x.shape[1])])
        target = out if weight.dtype == out.dtype else None  # a half-precision teacher: its dtype, then convert
        if bias is None:
            result = torch.mm(weight, x.t(), out=target).mul_(scale)
        else:
            result = torch.addmm(bias[:, None], weight, x.t(), beta=scale, alpha=scale, out=target)
        if target is None:
            out.copy_(result)
        return out

    def _to_pieces(self, columns: torch.Tensor) -> torch.Tensor:
        """``(student_vocab, c)`` = ``M @ columns`` for ``(teacher_vocab, c)`` columns."""
        weights = None if self.pooling == "sum" else self.piece_weights  # all 1 for sum: the unweighted path
        return F.embedding_bag(self.piece_tokens, columns, self.piece_offsets, mode="sum", per_sample_weights=weights)

    def teacher_side(self, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P @ M^T, sum P log P)``, ``(c, sv)`` and ``(c,)``, from ``(teacher_vocab, c)`` logits / T.

        ``scaled`` is modified in place (eager kernels) or only read (compiled kernels).
        """
        if self.kernels is not None and scaled.shape[1] == self.kernel_width:
            probs = self.buffer("probs", scaled.shape, scaled.device)
            top = self.kernels["teacher_max"](scaled, self.bias)  # (1, c)
            self.kernels["teacher_exp"](scaled, self.bias, top, probs)
            total, dot = self.kernels["teacher_sums"](scaled, top, probs)  # (c,), (c,)
            entropy = dot / total - total.log()
            return self._to_pieces(probs).div_(total).t(), entropy
        if len(self.uncovered):
            scaled.index_fill_(0, self.uncovered, float("-inf"))  # outside the support
        scaled.sub_(scaled.amax(0, keepdim=True))  # (tv, c) log-probabilities up to the log-partition
        probs = torch.exp(scaled, out=self.buffer("probs", scaled.shape, scaled.device))  # (tv, c) unnormalised
        total = probs.sum(0)  # (c,)
        if len(self.uncovered):
            scaled.index_fill_(0, self.uncovered, 0.0)  # 0 * -inf would be nan in the dot product below
        dot = torch.mul(probs, scaled, out=scaled).sum(0)  # (c,) sum_t e_t l_t (scaled is not needed after)
        entropy = dot / total - total.log()  # sum P log P with P = e / total, log P = l - log total
        mass = self._to_pieces(probs).div_(total).t()  # (c, sv) P @ M^T
        return mass, entropy

    def student_side(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(softmax(p @ M) @ M^T, logsumexp(p @ M))`` of ``(c, student_vocab)`` pooled scores ``p``."""
        columns = pooled.t().contiguous()  # (sv, c)
        top = columns.amax(0)  # (c,)
        # A shift >= every mapped score (a sum of <= max_pieces scores <= top, or their mean), so exp never
        # overflows without a pass to find the exact maximum. Pooled log-probabilities are <= 0, so the
        # shift is 0 and not even subtracted; columns where it is so loose that the sum underflows are redone
        # below with the exact maximum.
        shift = top.clamp_min(0.0) * (1 if self.pooling == "mean" else self.max_pieces)
        mass, lse = self._student_block(columns, shift)
        bad = ~(lse > shift.double() - 40.0)  # partition sum below e^-40 (or nan): redo exactly
        if bool(bad.any()):
            cols = bad.nonzero().squeeze(1)
            sub = columns[:, cols].contiguous()  # (sv, r)
            exact = F.embedding_bag(self.token_pieces, sub, self.token_offsets, mode=self.pooling)  # (tv, r)
            if len(self.uncovered):
                exact.index_fill_(0, self.uncovered, float("-inf"))
            mass[cols], lse[cols] = self._student_block(sub, exact.amax(0))
        return mass, lse

    def _student_block(self, columns: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = F.embedding_bag(self.token_pieces, columns, self.token_offsets, mode=self.pooling)  # (tv, c) p @ M
        if self.kernels is not None and columns.shape[1] == self.kernel_width:
            probs = self.buffer("probs", mapped.shape, mapped.device)
            self.kernels["student_exp"](mapped, shift, self.bias, probs)
            total = probs.sum(0)  # (c,)
            mass = self._to_pieces(probs).div_(total).t()  # (c, sv)
            return mass, total.log().double() + shift.double()
        if bool(shift.any()):
            mapped.sub_(shift)
        # Below e^-87 exp gives fp32 denormals, which make every later pass many times slower; flooring the
        # exponent there changes the partition sum by < teacher_vocab * e^-87, under 1e-15 of any sum kept
        # (smaller sums, < e^-40, are redone with the exact maximum).
        probs = mapped.clamp_min_(_EXP_FLOOR).exp_()  # (tv, c) unnormalised softmax, in place
        if len(self.uncovered):
            probs.index_fill_(0, self.uncovered, 0.0)
        total = probs.sum(0)  # (c,)
        mass = self._to_pieces(probs).div_(total).t()  # (c, sv)
        return mass, total.log().double() + shift.double()  # (c, sv), (c,) float64


def _segments_by_length(pieces: np.ndarray, offsets: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The map as the native kernel reads it: covered teacher tokens sorted by piece count, then by pieces.

    Returns ``(order, pieces, segments)``: ``(ntok,)`` teacher ids, their pieces concatenated (int32),
    and ``(nseg, 2)`` int64 rows ``(piece count, number of tokens)``. Tokens of one count are contiguous, so
    the kernel's loops over pieces have fixed lengths; sorting by pieces makes neighbours share their first
    pieces (cached reads and writes).
    """
    lengths = np.diff(offsets, append=len(pieces))  # (tv,) 0 = uncovered
    width = max(int(lengths.max(initial=0)), 1)
    padded = np.full((len(lengths), width), -1, dtype=np.int64)  # (tv, max pieces)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    padded[rows, np.arange(len(pieces)) - np.repeat(offsets, lengths)] = pieces
    order = np.lexsort([padded[:, k] for k in reversed(range(width))] + [lengths])  # by count, then pieces
    order = order[lengths[order] > 0]
    counts = np.bincount(lengths[order], minlength=width + 1)
    segments = np.array([(n, counts[n]) for n in range(1, width + 1) if counts[n]], dtype=np.int64).reshape(-1, 2)
    flat = np.concatenate([padded[order[lengths[order] == n], :n].ravel() for n, _ in segments] or [np.zeros(0)])
    return torch.as_tensor(order, dtype=torch.long), torch.as_tensor(flat.astype(np.int32)), torch.as_tensor(segments)


class _MappedKL(torch.autograd.Function):
    """Sum over aligned positions of ``KL(P_teacher || softmax(p @ M))``, its gradient made in the forward.

    Blocks of aligned positions: the teacher's logits of a block (computed on demand from its output
    projection, :class:`distilrubert.teacher_head.TeacherScores`) and the block's mapped student scores
    are each reduced to ``(block, student_vocab)`` (:class:`_LinearMap`); the gradient with respect to
    the pooled scores is kept for backward, nothing of size ``(positions, teacher_vocab)`` is.
    """

    @staticmethod
    def forward(ctx, pooled, linear_map, teacher, temperature, block, teacher_block):
        # pooled: (n, student_vocab) student log-probs pooled per aligned position; teacher: TeacherScores
        n = pooled.shape[0]
        linear_map.choose_kernels(pooled.device, block)
        loss = torch.zeros((), dtype=torch.float64, device=pooled.device)
        grad = torch.empty(pooled.shape, dtype=torch.float32, device=pooled.device)  # (n, student_vocab)
        for t_start in range(0, n, teacher_block):
            t_stop = min(t_start + teacher_block, n)
            # The teacher projection in large blocks (its weight is read once per block), the rest in small
            # blocks whose (teacher_vocab, block) tensors stay in cache.
            logits = teacher.rows_t(t_start, t_stop, scale=1.0 / temperature,
                                    out=linear_map.buffer("teacher", (teacher.vocab_size, t_stop - t_start),
                                                          pooled.device))  # (tv, tc)
            for start in range(t_start, t_stop, block):
                stop = min(start + block, t_stop)
                block_logits = logits[:, start - t_start:stop - t_start]  # (tv, c) strided view
                if block_logits.shape[1] != logits.shape[1]:  # a contiguous copy: strided reductions are slower
                    block_logits = linear_map.buffer("block", block_logits.shape, pooled.device).copy_(block_logits)
                t_mass, entropy = linear_map.teacher_side(block_logits)  # (c, sv), (c,)
                p = pooled[start:stop].float()  # (c, sv)
                s_mass, lse = linear_map.student_side(p)
                # KL = sum P log P - sum P mapped + lse; the last two nearly cancel for large scores: float64
                cross = torch.linalg.vecdot(p.double(), t_mass.double())  # (c,) sum_t P_t mapped_t
                loss += (entropy.double() - cross + lse).sum()
                torch.sub(s_mass, t_mass, out=grad[start:stop])
        ctx.save_for_backward(grad.to(pooled.dtype))
        return loss.to(torch.float32)

    @staticmethod
    def backward(ctx, grad_output):
        (grad_pooled,) = ctx.saved_tensors
        return grad_pooled * grad_output, None, None, None, None, None


class _NativeReduceKL(torch.autograd.Function):
    """The ``sum``/``mean`` reduce KL from the student's piece logits in the native kernels (``csrc/reduce_kl.cpp``).

    The same value and gradient as :class:`_PooledLogSoftmax` followed by :class:`_MappedKL`, in three passes:
    the pooled log-softmax of the pieces per aligned position (``pooled_forward``), the KL and its gradient
    with respect to the pooled scores per block of positions against the teacher projection computed block by
    block (``reduce_kl``), and the gradient with respect to the piece logits (``pooled_backward``), kept for
    the backward pass. The pooled scores and their gradient live in reused buffers.
    """

    @staticmethod
    def forward(ctx, logits, rows, n, linear_map, teacher, temperature, block):
        # logits: (pieces, sv); rows: (pieces,) aligned row of each piece (n = none); teacher: TeacherScores
        native, mean = linear_map.native, linear_map.pooling == "mean"
        x = logits.float().contiguous()
        shape = (n, x.shape[1])
        pooled = linear_map.buffer("pooled", shape, x.device)
        grad_pooled = linear_map.buffer("grad_pooled", shape, x.device)
        lse, counts = native.pooled_forward(x, rows, 1.0 / temperature, mean, pooled)
        loss = torch.zeros((), dtype=torch.float64)
        _, pieces, segments = linear_map.native_map
        for start in range(0, n, block):
            stop = min(start + block, n)
            # base-2 logits (x log2 e): the kernel's exponentials are exp2
            t_logits = linear_map.native_logits(teacher, start, stop, math.log2(math.e) / temperature)
            loss += native.reduce_kl(t_logits, pooled[start:stop], pieces, segments, mean,
                                     grad_pooled[start:stop]).sum()
        # Kept as a plain attribute and scaled in place by backward (no second (pieces, sv) tensor), so one backward
        # pass only: a second one (retain_graph) is refused. A fresh tensor every step: it is the gradient autograd
        # passes on. (Fresh huge-page mappings for it were slower: 15.5-18% overhead against 11-14%.)
        ctx.grad_x = torch.empty_like(x)
        native.pooled_backward(x, lse, rows, counts, grad_pooled, 1.0 / temperature, mean, ctx.grad_x)
        ctx.logits_dtype = logits.dtype
        return loss.to(torch.float32)

    @staticmethod
    def backward(ctx, grad_output):
        grad_x = getattr(ctx, "grad_x", None)
        if grad_x is None:
            raise RuntimeError("the native reduce KL supports one backward pass per forward (no retain_graph); "
                               "use --fused-kl compile for that")
        del ctx.grad_x
        return grad_x.mul_(grad_output).to(ctx.logits_dtype), None, None, None, None, None, None


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of each group in a concatenation of groups of ``lengths`` (``embedding_bag`` offsets)."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _pad(seqs: Sequence[np.ndarray], value: int) -> np.ndarray:
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), max(width, 1)), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


class Alignment:
    """Common interface of the alignments (see the module docstring).

    Args:
        token_map: A :class:`distilrubert.tokenmap.TokenMap` of the teacher and student vocabularies.
        student_pad_id: The student's ``[PAD]`` id.
    """

    name = "base"
    # Whether the student side reads the teacher's sequence rewritten in student tokens (so a masked teacher
    # sequence must be collated as such), rather than its own tokenisation.
    reads_teacher_sequence = False

    def __init__(self, token_map, student_pad_id: int) -> None:
        self.token_map = token_map
        self.student_pad_id = int(student_pad_id)

    # numpy side --------------------------------------------------------------------------------
    def collate(self, teacher_seqs: Sequence[np.ndarray], student_seqs: Sequence[np.ndarray],
                teacher_width: int, student_width: int) -> dict[str, np.ndarray]:
        """Extra batch arrays for this alignment (``t_index`` and what the student side needs)."""
        raise NotImplementedError

    def teacher_row_count(self, teacher_ids: np.ndarray, student_ids: np.ndarray) -> int:
        """Number of aligned teacher positions of one sequence (for reports)."""
        raise NotImplementedError

    def keep_rows(self, extra: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
        """``extra`` (from :meth:`collate`) with only the aligned rows where ``keep`` (``(n_aligned,)`` bool)."""
        return {**extra, "t_index": extra["t_index"][keep]}

    # torch side --------------------------------------------------------------------------------
    def to(self, device: torch.device) -> Alignment:
        """Move the alignment's lookup tensors to ``device``."""
        return self

    def student_outputs(self, student: torch.nn.Module, batch: dict[str, torch.Tensor], masked_outputs: Any,
                        output_hidden_states: bool, output_attentions: bool = False) -> Any:
        """The student outputs that meet the teacher."""
        raise NotImplementedError

    def support_size(self) -> int:
        """Number of columns of the KL's support (for the top-k cache)."""
        raise NotImplementedError

    def kl(self, batch: dict[str, torch.Tensor], student_logits: torch.Tensor, teacher_logits: torch.Tensor,
           temperature: float) -> torch.Tensor:
        """Mean over aligned positions of ``KL(teacher || student) x T^2`` (scalar)."""
        raise NotImplementedError

    def teacher_topk(self, batch: dict[str, torch.Tensor], teacher_logits: torch.Tensor, temperature: float,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, log_probs)``, each ``(n_aligned, k)``: the teacher's top-k over the support."""
        raise NotImplementedError

    def kl_topk(self, batch: dict[str, torch.Tensor], student_logits: torch.Tensor, topk_ids: torch.Tensor,
                topk_logp: torch.Tensor, temperature: float) -> torch.Tensor:
        """KL against a cached top-k teacher distribution, both renormalised over those k tokens."""
        raise NotImplementedError

    def student_rows(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """``(n_aligned, d)`` student states at the aligned positions from ``(batch, len, d)``."""
        raise NotImplementedError

    def teacher_rows(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """``(n_aligned, d)`` teacher states at the aligned positions from ``(batch, t_len, d)``."""
        return hidden.reshape(-1, hidden.shape[-1])[batch["t_index"]]


class MatchAlignment(Alignment):
    """``match``: identical tokens, KL over the vocabulary intersection, the student's masked pass."""

    name = "match"

    def __init__(self, token_map, student_pad_id: int) -> None:
        super().__init__(token_map, student_pad_id)
        inter = token_map.intersection  # (n, 2) teacher id, student id
        if len(inter) == 0:
            raise ValueError("--alignment match: the teacher and student vocabularies share no token")
        self.teacher_to_shared = np.full(len(token_map.teacher_tokens), -1, dtype=np.int64)
        self.teacher_to_shared[inter[:, 0]] = inter[:, 1]
        self.inter_teacher = torch.as_tensor(inter[:, 0])
        self.inter_student = torch.as_tensor(inter[:, 1])

    def to(self, device: torch.device) -> MatchAlignment:
        self.inter_teacher = self.inter_teacher.to(device)
        self.inter_student = self.inter_student.to(device)
        return self

    def collate(self, teacher_seqs, student_seqs, teacher_width, student_width):
        t_index, s_index = [], []
        for b, (t_ids, s_ids) in enumerate(zip(teacher_seqs, student_seqs, strict=True)):
            for i, j in match_positions_ids(t_ids, s_ids, self.teacher_to_shared):
                t_index.append(b * teacher_width + i)
                s_index.append(b * student_width + j)
        return {"t_index": np.asarray(t_index, dtype=np.int64), "s_index": np.asarray(s_index, dtype=np.int64)}

    def teacher_row_count(self, teacher_ids, student_ids):
        return len(match_positions_ids(teacher_ids, student_ids, self.teacher_to_shared))

    def keep_rows(self, extra, keep):
        return {**extra, "t_index": extra["t_index"][keep], "s_index": extra["s_index"][keep]}

    def student_outputs(self, student, batch, masked_outputs, output_hidden_states, output_attentions=False):
        return masked_outputs

    def support_size(self) -> int:
        return len(self.inter_teacher)

    def _teacher_support_logits(self, batch, teacher_logits):
        scores = as_teacher_scores(teacher_logits, batch["t_index"])
        # Only the intersection's columns: from the lazy head, a (n, d) x (d, support) product.
        return scores.rows(0, len(scores), columns=self.inter_teacher)  # (n, support)

    def _student_support_logits(self, batch, student_logits):
        rows = student_logits.reshape(-1, student_logits.shape[-1])[batch["s_index"]]  # (n, student_vocab)
        return rows[:, self.inter_student]  # (n, support)

    def kl(self, batch, student_logits, teacher_logits, temperature):
        s_rows = self._student_support_logits(batch, student_logits)  # (n, support)
        t_rows = self._teacher_support_logits(batch, teacher_logits)  # (n, support)
        if s_rows.shape[0] == 0:
            return student_logits.sum() * 0.0
        s_logp = F.log_softmax(s_rows.float() / temperature, dim=-1)  # (n, support)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)  # (n, support)
        return kl_log_probs(s_logp, t_logp, temperature)

    def teacher_topk(self, batch, teacher_logits, temperature, k):
        t_rows = self._teacher_support_logits(batch, teacher_logits)  # (n, support)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)  # (n, support)
        values, ids = t_logp.topk(min(k, t_logp.shape[-1]), dim=-1)  # (n, k)
        return ids, values

    def kl_topk(self, batch, student_logits, topk_ids, topk_logp, temperature):
        from distilrubert.losses import kl_div_topk

        s_rows = self._student_support_logits(batch, student_logits)  # (n, support)
        if s_rows.shape[0] == 0:
            return student_logits.sum() * 0.0
        # Both distributions renormalised over the teacher's top-k (the cached support).
        s_logp = F.log_softmax(s_rows.float().gather(1, topk_ids) / temperature, dim=-1)  # (n, k)
        return kl_div_topk(s_logp, topk_logp, temperature)

    def student_rows(self, batch, hidden):
        return hidden.reshape(-1, hidden.shape[-1])[batch["s_index"]]


class ReduceAlignment(Alignment):
    """``reduce``: the teacher sequence rewritten in student tokens; student scores pooled and mapped.

    Args:
        token_map: The token map.
        student_pad_id: The student's ``[PAD]`` id.
        pooling: ``sum`` (the released code), ``mean`` or ``logsumexp`` (log of summed probabilities).
        chunk_elements: Upper bound of ``positions x teacher_vocab`` elements reduced at once (small
            enough to stay in cache).
        projection_elements: Upper bound of ``positions x teacher_vocab`` teacher logits computed at once
            from the teacher's output projection (large enough to read its weight rarely).
        fused: ``sum``/``mean`` KL block kernels: ``on`` = ``torch.compile``d (fused passes), ``off`` = eager,
            ``auto`` = compiled on CPU for teacher vocabularies >= ``FUSED_MIN_VOCAB``. Compiled falls back
            to eager (with a warning) where compiling fails. Same result either way.
    """

    name = "reduce"
    reads_teacher_sequence = True

    def __init__(self, token_map, student_pad_id: int, pooling: str = "sum",
                 chunk_elements: int = 2**22, projection_elements: int = 2**25, fused: str = "auto") -> None:
        super().__init__(token_map, student_pad_id)
        if pooling not in POOLINGS:
            raise ValueError(f"--pooling: unknown pooling {pooling!r} ({', '.join(POOLINGS)})")
        self.pooling = pooling
        self.covered_np = np.asarray(token_map.covered, dtype=bool)
        cov_ids = np.flatnonzero(self.covered_np)
        if len(cov_ids) == 0:
            raise ValueError("--alignment reduce: no teacher token can be spelled with student tokens")
        matrix = token_map.teacher_to_student[cov_ids]  # (n_cov, max_pieces), -1 padded
        lengths = token_map.lengths[cov_ids]
        self.cov_ids = torch.as_tensor(cov_ids)
        self.bag_input = torch.as_tensor(matrix[matrix >= 0])  # flat pieces of every covered token
        self.bag_offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        n_student = len(token_map.student_tokens)
        # For logsumexp: pad index points at an extra -inf column appended to the student scores.
        self.gather_index = torch.as_tensor(np.where(matrix >= 0, matrix, n_student))  # (n_cov, max_pieces)
        self.n_student = n_student
        # The linear (sum / mean) map M over the whole teacher vocabulary (uncovered tokens: no pieces, masked
        # out of both softmaxes), as embedding-bag index lists in both directions.
        n_teacher = len(self.covered_np)
        all_lengths = np.where(self.covered_np, token_map.lengths, 0)
        pieces = token_map.teacher_to_student[self.covered_np]
        self.uncovered = torch.as_tensor(np.flatnonzero(~self.covered_np))
        token_of = np.repeat(np.arange(n_teacher), all_lengths)  # (nnz,) teacher token of each piece
        piece_of = pieces[pieces >= 0]  # (nnz,)
        weight = np.ones(len(piece_of)) if pooling != "mean" else 1.0 / np.repeat(all_lengths, all_lengths)
        order = np.argsort(piece_of, kind="stable")
        self.linear_map = _LinearMap(
            torch.as_tensor(piece_of), torch.as_tensor(_offsets(all_lengths)),
            torch.as_tensor(token_of[order]), torch.as_tensor(_offsets(np.bincount(piece_of, minlength=n_student))),
            torch.as_tensor(weight[order], dtype=torch.float32), self.uncovered, int(matrix.shape[1]), pooling,
            fused)
        if pooling == "logsumexp":  # a (rows, teacher_vocab, max_pieces) gather per chunk
            self.chunk_rows = max(1, 4 * chunk_elements // (n_teacher * matrix.shape[1]))
        else:
            self.chunk_rows = max(1, chunk_elements // n_teacher)
        # A multiple of 32 positions: whole 16-position groups for the native kernel, split evenly over threads.
        self.projection_rows = max(self.chunk_rows, projection_elements // n_teacher // 32 * 32)

    def to(self, device: torch.device) -> ReduceAlignment:
        for name in ("cov_ids", "bag_input", "bag_offsets", "gather_index", "uncovered"):
            setattr(self, name, getattr(self, name).to(device))
        self.linear_map.to(device)
        return self

    def collate(self, teacher_seqs, student_seqs, teacher_width, student_width):
        rewritten, owners, t_index = [], [], []
        for b, t_ids in enumerate(teacher_seqs):
            ids, owner = self.token_map.rewrite(t_ids)
            rewritten.append(ids)
            owners.append(owner + b * teacher_width)  # flat teacher position of each piece
            valid = np.flatnonzero(self.covered_np[np.asarray(t_ids, dtype=np.int64)])
            t_index.append(valid + b * teacher_width)
        return {
            "reduce_input_ids": _pad(rewritten, self.student_pad_id),
            "reduce_attention_mask": _pad([np.ones(len(r), dtype=np.int64) for r in rewritten], 0),
            "reduce_owner": _pad(owners, -1),
            "t_index": np.concatenate(t_index) if t_index else np.zeros(0, dtype=np.int64),
        }

    def teacher_row_count(self, teacher_ids, student_ids):
        return int(self.covered_np[np.asarray(teacher_ids, dtype=np.int64)].sum())

    def student_outputs(self, student, batch, masked_outputs, output_hidden_states, output_attentions=False):
        return student(input_ids=batch["reduce_input_ids"], attention_mask=batch["reduce_attention_mask"],
                       output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    def support_size(self) -> int:
        return len(self.cov_ids)

    @staticmethod
    def _piece_rows(batch) -> tuple[torch.Tensor, int]:
        """The aligned row of each piece of the rewritten sequence (``n`` = none: padding, unaligned) and ``n``."""
        t_index = batch["t_index"]
        n = len(t_index)
        position_row = torch.full((batch["teacher_input_ids"].numel() + 1,), n, dtype=torch.long,
                                  device=t_index.device)  # flat teacher position -> aligned row (n: none)
        position_row[t_index] = torch.arange(n, device=t_index.device)
        return position_row[batch["reduce_owner"].reshape(-1)], n  # owner -1 -> the extra last entry -> n

    def _pooled_logp(self, batch, student_logits, temperature):
        """``(n_aligned, student_vocab)``: student log-probs pooled over each aligned teacher position."""
        if self.pooling in ("sum", "mean"):
            rows, n = self._piece_rows(batch)
            self.linear_map.choose_kernels(student_logits.device, self.chunk_rows)
            flat = student_logits.reshape(-1, student_logits.shape[-1])  # (pieces, sv)
            if self.linear_map.native is not None:
                return _NativePooledLogSoftmax.apply(flat, rows, n, temperature, self.pooling == "mean",
                                                     self.linear_map.native)
            return _PooledLogSoftmax.apply(flat, rows, n, temperature, self.pooling,
                                           self.linear_map.kernels or _EAGER_KERNELS)
        logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (batch, len, student_vocab)
        n_teacher_rows = batch["teacher_input_ids"].numel()
        pooled = pool_rows(logp.reshape(-1, logp.shape[-1]), batch["reduce_owner"].reshape(-1), n_teacher_rows,
                           self.pooling)  # (batch * t_len, student_vocab)
        return pooled[batch["t_index"]]  # (n, student_vocab)

    def map_to_teacher(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(n, n_covered)`` scores of the covered teacher tokens from ``(n, student_vocab)`` pooled scores."""
        if self.pooling in ("sum", "mean"):
            # embedding_bag over the columns: row t of the result = pool of pooled[:, pieces(t)].
            mapped = F.embedding_bag(self.bag_input, pooled.t().contiguous(), self.bag_offsets,
                                     mode=self.pooling)  # (n_covered, n)
            return mapped.t()
        padded = torch.cat([pooled, pooled.new_full((pooled.shape[0], 1), float("-inf"))], dim=1)  # (n, sv + 1)
        return padded[:, self.gather_index].logsumexp(-1)  # (n, n_covered, pieces) -> (n, n_covered)

    def _kl_dense(self, pooled: torch.Tensor, teacher_rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """Summed KL of ``(c, student_vocab)`` pooled scores against ``(c, teacher_vocab)`` logits, with autograd."""
        s_logp = F.log_softmax(self.map_to_teacher(pooled), dim=-1)  # (c, n_covered)
        t_rows = teacher_rows.index_select(1, self.cov_ids)  # (c, n_covered)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)
        return kl_log_probs(s_logp, t_logp, temperature, reduction="sum")

    def kl(self, batch, student_logits, teacher_logits, temperature):
        if self.pooling in ("sum", "mean") and len(batch["t_index"]):
            self.linear_map.choose_kernels(student_logits.device, self.chunk_rows)
            if self.linear_map.native is not None:  # piece logits -> KL in native kernels, one autograd node
                rows, n = self._piece_rows(batch)
                total = _NativeReduceKL.apply(student_logits.reshape(-1, student_logits.shape[-1]), rows, n,
                                              self.linear_map, as_teacher_scores(teacher_logits, batch["t_index"]),
                                              temperature, self.projection_rows)
                return total * temperature**2 / n
        pooled = self._pooled_logp(batch, student_logits, temperature)  # (n, student_vocab)
        n = pooled.shape[0]
        if n == 0:
            return student_logits.sum() * 0.0
        scores = as_teacher_scores(teacher_logits, batch["t_index"])
        if self.pooling in ("sum", "mean"):
            total = _MappedKL.apply(pooled, self.linear_map, scores, temperature, self.chunk_rows,
                                    self.projection_rows)
            return total * temperature**2 / n
        # logsumexp (not linear): the (n, teacher_vocab) teacher logits at the aligned positions once, then
        # chunks under checkpointing.
        teacher_rows = scores.rows(0, n)  # (n, tv)
        total = pooled.new_zeros(())
        for start in range(0, n, self.chunk_rows):
            stop = start + self.chunk_rows
            # Recompute the (chunk, teacher_vocab) tensors in backward instead of keeping them all; the
            # checkpoint keeps only its inputs (views of pooled and of the teacher rows).
            total = total + checkpoint(self._kl_dense, pooled[start:stop], teacher_rows[start:stop], temperature,
                                       use_reentrant=False)
        return total / n

    def teacher_topk(self, batch, teacher_logits, temperature, k):
        scores = as_teacher_scores(teacher_logits, batch["t_index"])
        columns = self.cov_ids if len(self.uncovered) else None  # every token covered: no column copy
        ids_out, val_out = [], []
        for start in range(0, len(scores), self.projection_rows):
            rows = scores.rows(start, min(start + self.projection_rows, len(scores)), columns=columns)  # (c, cov)
            t_logp = F.log_softmax(rows.div_(temperature), dim=-1)
            values, ids = t_logp.topk(min(k, t_logp.shape[-1]), dim=-1)  # (c, k) ids into the covered list
            ids_out.append(ids)
            val_out.append(values)
        if not ids_out:
            return (torch.zeros((0, k), dtype=torch.long, device=scores.device),
                    torch.zeros((0, k), device=scores.device))
        return torch.cat(ids_out), torch.cat(val_out)

    def kl_topk(self, batch, student_logits, topk_ids, topk_logp, temperature):
        from distilrubert.losses import kl_div_topk

        pooled = self._pooled_logp(batch, student_logits, temperature)  # (n, student_vocab)
        if pooled.shape[0] == 0:
            return student_logits.sum() * 0.0
        # Scores of the teacher's k cached tokens only (both distributions renormalised over them): no
        # (positions, teacher_vocab) tensor at all, which is what makes cached epochs cheap.
        pad = 0.0 if self.pooling in ("sum", "mean") else float("-inf")
        padded = torch.cat([pooled, pooled.new_full((pooled.shape[0], 1), pad)], dim=1)  # (n, sv + 1)
        pieces = self.gather_index[topk_ids]  # (n, k, max_pieces) student ids, pad -> the extra column
        scores = padded.gather(1, pieces.flatten(1)).view(pieces.shape)  # (n, k, max_pieces)
        if self.pooling == "logsumexp":
            scores = scores.logsumexp(-1)
        else:
            scores = scores.sum(-1)  # (n, k)
            if self.pooling == "mean":
                scores = scores / (pieces < self.n_student).sum(-1).clamp_min(1)
        return kl_div_topk(F.log_softmax(scores, dim=-1), topk_logp, temperature)

    def student_rows(self, batch, hidden):
        # A teacher position's student state = mean of its pieces' states in the rewritten sequence.
        pooled = pool_rows(hidden.reshape(-1, hidden.shape[-1]), batch["reduce_owner"].reshape(-1),
                           batch["teacher_input_ids"].numel(), "mean")  # (batch * t_len, d)
        return pooled[batch["t_index"]]


def make_alignment(name: str, token_map, student_pad_id: int, pooling: str = "sum", fused: str = "auto") -> Alignment:
    """Build the alignment called ``name`` (``match`` or ``reduce``); ``fused``: the reduce KL's block kernels."""
    if name == "match":
        return MatchAlignment(token_map, student_pad_id)
    if name == "reduce":
        return ReduceAlignment(token_map, student_pad_id, pooling=pooling, fused=fused)
    raise ValueError(f"--alignment: unknown alignment {name!r} ({', '.join(ALIGNMENTS)})")
