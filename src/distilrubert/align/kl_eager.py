"""The ``reduce`` KL in torch: the linear (``sum``/``mean``) map's block reductions and the dense path.

* :class:`LinearMapKL` (``kernel_name`` ``eager``, or ``compile`` with the kernels of
  :mod:`distilrubert.align.kl_compiled`): the exact ``sum``/``mean`` KL by blocks of aligned positions,
  the teacher and student sides each reduced to ``(block, student_vocab)`` (:class:`_MappedKL`), after the
  student's pooled log-softmax in one pass (:class:`_PooledLogSoftmax`).
* :class:`DenseKL` (``dense``): the ``(positions, covered teacher tokens)`` student scores built chunk by
  chunk under activation checkpointing; the only path of ``logsumexp`` pooling (not linear) and the
  reference the kernel tests compare against.

Both sides of the map come from one :class:`distilrubert.align.piecemap.PieceMap`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distilrubert.align.piecemap import PieceMap
from distilrubert.align.positions import pool_rows
from distilrubert.losses import kl_log_probs

__all__ = ["EAGER_KERNELS", "DenseKL", "LinearMapKL"]

EXP_FLOOR = -87.0  # exp(-87) ~ 1.6e-38, just above the smallest normal float32 (1.18e-38)


def _row_logsumexp_kernel(logits: torch.Tensor, inv_t: float) -> torch.Tensor:
    """``logsumexp(logits / T)`` of each row of ``(rows, vocab)`` logits."""
    return torch.logsumexp(logits * inv_t, -1)


def _pooled_grad_kernel(logits: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, grad_sum: torch.Tensor,
                        rows: torch.Tensor, inv_t: float) -> torch.Tensor:
    """Gradient of the pooled log-softmax (:class:`_PooledLogSoftmax`) with respect to the piece logits."""
    return (grad[rows] - torch.exp(logits * inv_t - lse[:, None]) * grad_sum[rows][:, None]) * inv_t


EAGER_KERNELS = {"lse": _row_logsumexp_kernel, "pooled_grad": _pooled_grad_kernel}


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


class LinearMapKL:
    """The linear (``sum`` / ``mean``) reduce map between student pieces and teacher tokens, and its KL.

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
        piece_map: The token map.
        pooling: ``sum`` or ``mean``.
        block: Aligned positions reduced at once (their ``(teacher_vocab, block)`` tensors stay in cache).
        teacher_block: Aligned positions whose teacher logits are projected at once (the weight read rarely).
        kernels: The compiled block kernels (:func:`distilrubert.align.kl_compiled.compiled_kernels`); they
            take blocks of exactly ``block`` positions, others run eagerly. ``None``: eager.
    """

    native: Any = None  # the C++ kernel module of the native subclass

    def __init__(self, piece_map: PieceMap, pooling: str, block: int, teacher_block: int,
                 kernels: dict[str, Any] | None = None) -> None:
        self.piece_map, self.pooling = piece_map, pooling
        self.block, self.teacher_block = block, teacher_block
        self.kernels, self.kernel_width = kernels, block
        self.token_pieces = torch.as_tensor(piece_map.pieces)
        self.token_offsets = torch.as_tensor(piece_map.starts)
        piece_starts, piece_tokens, _ = piece_map.by_piece
        self.piece_tokens, self.piece_offsets = torch.as_tensor(piece_tokens), torch.as_tensor(piece_starts)
        weight = np.ones(len(piece_tokens)) if pooling != "mean" else 1.0 / piece_map.lengths[piece_tokens]
        self.piece_weights = torch.as_tensor(weight, dtype=torch.float32)
        self.uncovered = torch.as_tensor(piece_map.uncovered_ids)
        self.max_pieces = piece_map.max_pieces
        self.bias = torch.zeros(piece_map.n_teacher, 1)  # (tv, 1): 0 on covered tokens, -inf on the others
        self.bias[self.uncovered] = float("-inf")
        self._buffers: dict[tuple, torch.Tensor] = {}

    @property
    def kernel_name(self) -> str:
        return "compile" if self.kernels is not None else "eager"

    def to(self, device: torch.device) -> LinearMapKL:
        for name in ("token_pieces", "token_offsets", "piece_tokens", "piece_offsets", "piece_weights", "uncovered",
                     "bias"):
            setattr(self, name, getattr(self, name).to(device))
        self._buffers = {}
        return self

    # ReduceKL -------------------------------------------------------------------------------------
    def pooled(self, logits: torch.Tensor, rows: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
        return _PooledLogSoftmax.apply(logits, rows, n, temperature, self.pooling, self.kernels or EAGER_KERNELS)

    def kl_sum(self, logits: torch.Tensor, rows: torch.Tensor, n: int, teacher: Any,
               temperature: float) -> torch.Tensor:
        return _MappedKL.apply(self.pooled(logits, rows, n, temperature), self, teacher, temperature, self.block,
                               self.teacher_block)

    # the block arithmetic -------------------------------------------------------------------------
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
        probs = mapped.clamp_min_(EXP_FLOOR).exp_()  # (tv, c) unnormalised softmax, in place
        if len(self.uncovered):
            probs.index_fill_(0, self.uncovered, 0.0)
        total = probs.sum(0)  # (c,)
        mass = self._to_pieces(probs).div_(total).t()  # (c, sv)
        return mass, total.log().double() + shift.double()  # (c, sv), (c,) float64


class _MappedKL(torch.autograd.Function):
    """Sum over aligned positions of ``KL(P_teacher || softmax(p @ M))``, its gradient made in the forward.

    Blocks of aligned positions: the teacher's logits of a block (computed on demand from its output
    projection, :class:`distilrubert.teacher_head.TeacherScores`) and the block's mapped student scores
    are each reduced to ``(block, student_vocab)`` (:class:`LinearMapKL`); the gradient with respect to
    the pooled scores is kept for backward, nothing of size ``(positions, teacher_vocab)`` is.
    """

    @staticmethod
    def forward(ctx, pooled, linear_map, teacher, temperature, block, teacher_block):
        # pooled: (n, student_vocab) student log-probs pooled per aligned position; teacher: TeacherScores
        n = pooled.shape[0]
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


class DenseKL:
    """The reduce KL with explicit ``(positions, covered teacher tokens)`` student scores, chunk by chunk.

    The score of covered teacher token ``t`` is the pooling of the pooled student log-probabilities of its
    pieces: an ``embedding_bag`` for ``sum``/``mean``, a gather of the padded piece matrix (padding pointing
    at an extra ``-inf`` column) for ``logsumexp``. Chunks of ``block`` positions run under activation
    checkpointing (recomputed in backward), so memory stays at one chunk.
    """

    kernel_name = "dense"

    def __init__(self, piece_map: PieceMap, pooling: str, block: int) -> None:
        self.pooling, self.block, self.n_student = pooling, block, piece_map.n_student
        cov_ids = piece_map.covered_ids
        self.cov_ids = torch.as_tensor(cov_ids)
        self.bag_input = torch.as_tensor(piece_map.pieces)  # uncovered tokens have no pieces: all are covered ones
        self.bag_offsets = torch.as_tensor(piece_map.starts[cov_ids])
        padded = piece_map.padded[cov_ids]  # (n_cov, max_pieces), -1 padded
        self.gather_index = torch.as_tensor(np.where(padded >= 0, padded, piece_map.n_student))

    def to(self, device: torch.device) -> DenseKL:
        for name in ("cov_ids", "bag_input", "bag_offsets", "gather_index"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def map_to_teacher(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(n, n_covered)`` scores of the covered teacher tokens from ``(n, student_vocab)`` pooled scores."""
        if self.pooling in ("sum", "mean"):
            # embedding_bag over the columns: row t of the result = pool of pooled[:, pieces(t)].
            mapped = F.embedding_bag(self.bag_input, pooled.t().contiguous(), self.bag_offsets,
                                     mode=self.pooling)  # (n_covered, n)
            return mapped.t()
        padded = torch.cat([pooled, pooled.new_full((pooled.shape[0], 1), float("-inf"))], dim=1)  # (n, sv + 1)
        return padded[:, self.gather_index].logsumexp(-1)  # (n, n_covered, pieces) -> (n, n_covered)

    def block_kl(self, pooled: torch.Tensor, teacher_rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """Summed KL (no ``T^2``) of ``(c, student_vocab)`` pooled scores against ``(c, teacher_vocab)`` logits."""
        s_logp = F.log_softmax(self.map_to_teacher(pooled), dim=-1)  # (c, n_covered)
        t_rows = teacher_rows.index_select(1, self.cov_ids)  # (c, n_covered)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)
        return kl_log_probs(s_logp, t_logp, 1.0, reduction="sum")  # temperature 1: the caller scales by T^2

    # ReduceKL -------------------------------------------------------------------------------------
    def pooled(self, logits: torch.Tensor, rows: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
        logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (pieces, student_vocab)
        return pool_rows(logp, torch.where(rows < n, rows, -1), n, self.pooling)  # (n, student_vocab)

    def kl_sum(self, logits: torch.Tensor, rows: torch.Tensor, n: int, teacher: Any,
               temperature: float) -> torch.Tensor:
        pooled = self.pooled(logits, rows, n, temperature)  # (n, student_vocab)
        teacher_rows = teacher.rows(0, n)  # (n, tv): the aligned positions' teacher logits once
        total = pooled.new_zeros(())
        for start in range(0, n, self.block):
            stop = start + self.block
            # Recompute the (chunk, teacher_vocab) tensors in backward instead of keeping them all; the
            # checkpoint keeps only its inputs (views of pooled and of the teacher rows).
            total = total + checkpoint(self.block_kl, pooled[start:stop], teacher_rows[start:stop], temperature,
                                       use_reentrant=False)
        return total
