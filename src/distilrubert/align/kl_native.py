"""The ``reduce`` KL in the native C++ kernels (:mod:`distilrubert.native`, ``csrc/reduce_kl.cpp``).

:class:`NativeKL` is the ``sum``/``mean`` map of :class:`distilrubert.align.kl_eager.LinearMapKL` (its work
buffers included) whose pooled log-softmax and KL run in the extension module: one autograd node from the
student's piece logits to the summed KL (:class:`_NativeReduceKL`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from distilrubert.align.kl_eager import LinearMapKL
from distilrubert.align.piecemap import PieceMap

__all__ = ["NativeKL"]


class _NativePooledLogSoftmax(torch.autograd.Function):
    """:class:`distilrubert.align.kl_eager._PooledLogSoftmax` in the native kernels (``pooled_forward`` /
    ``pooled_backward``)."""

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


def _segments_by_length(piece_map: PieceMap) -> tuple[torch.Tensor, ...]:
    """The map as the native kernel reads it: covered teacher tokens sorted by piece count, then by pieces.

    Returns ``(order, pieces, segments)``: ``(ntok,)`` teacher ids, their pieces concatenated (int32),
    and ``(nseg, 2)`` int64 rows ``(piece count, number of tokens)``. Tokens of one count are contiguous, so
    the kernel's loops over pieces have fixed lengths; sorting by pieces makes neighbours share their first
    pieces (cached reads and writes).
    """
    lengths, padded = piece_map.lengths, piece_map.padded  # (tv,) 0 = uncovered; (tv, width) -1 padded
    width = max(int(lengths.max(initial=0)), 1)
    order = np.lexsort([padded[:, k] for k in reversed(range(width))] + [lengths])  # by count, then pieces
    order = order[lengths[order] > 0]
    counts = np.bincount(lengths[order], minlength=width + 1)
    segments = np.array([(n, counts[n]) for n in range(1, width + 1) if counts[n]], dtype=np.int64).reshape(-1, 2)
    flat = np.concatenate([padded[order[lengths[order] == n], :n].ravel() for n, _ in segments] or [np.zeros(0)])
    return torch.as_tensor(order, dtype=torch.long), torch.as_tensor(flat.astype(np.int32)), torch.as_tensor(segments)


class NativeKL(LinearMapKL):
    """The ``sum``/``mean`` reduce KL in the native kernels (CPU only).

    Args:
        piece_map, pooling, block, teacher_block: as :class:`LinearMapKL` (the native kernel projects the
            teacher ``teacher_block`` positions at a time).
        native: The extension module (:func:`distilrubert.native.reduce_kl_kernel`).
    """

    kernel_name = "native"

    def __init__(self, piece_map: PieceMap, pooling: str, block: int, teacher_block: int, native: Any) -> None:
        super().__init__(piece_map, pooling, block, teacher_block)
        self.native = native
        self._permuted: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def to(self, device: torch.device) -> NativeKL:
        super().to(device)
        self._permuted = {}
        return self

    def pooled(self, logits: torch.Tensor, rows: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
        return _NativePooledLogSoftmax.apply(logits, rows, n, temperature, self.pooling == "mean", self.native)

    def kl_sum(self, logits: torch.Tensor, rows: torch.Tensor, n: int, teacher: Any,
               temperature: float) -> torch.Tensor:
        return _NativeReduceKL.apply(logits, rows, n, self, teacher, temperature, self.teacher_block)

    @functools.cached_property
    def native_map(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The map in the native kernel's order (CPU, made on first use): teacher ids, pieces, segments.

        See :func:`_segments_by_length`.
        """
        return _segments_by_length(self.piece_map)

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


class _NativeReduceKL(torch.autograd.Function):
    """The ``sum``/``mean`` reduce KL from the student's piece logits in the native kernels (``csrc/reduce_kl.cpp``).

    The same value and gradient as the pooled log-softmax followed by the mapped KL of
    :mod:`distilrubert.align.kl_eager`, in three passes: the pooled log-softmax of the pieces per aligned
    position (``pooled_forward``), the KL and its gradient with respect to the pooled scores per block of
    positions against the teacher projection computed block by block (``reduce_kl``), and the gradient with
    respect to the piece logits (``pooled_backward``), kept for the backward pass. The pooled scores and their
    gradient live in reused buffers.
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
                               "use --kl-kernel compile for that")
        del ctx.grad_x
        return grad_x.mul_(grad_output).to(ctx.logits_dtype), None, None, None, None, None, None
