"""The ``reduce`` KL's block kernels compiled with ``torch.compile`` (``--kl-kernel compile``).

:class:`CompiledKL` is :class:`distilrubert.align.kl_eager.LinearMapKL` with the passes over each
``(teacher_vocab, c)`` block and the pooled log-softmax compiled (:func:`compiled_kernels`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from distilrubert.align.kl_eager import EXP_FLOOR, LinearMapKL, _pooled_grad_kernel, _row_logsumexp_kernel
from distilrubert.align.piecemap import PieceMap

__all__ = ["CompiledKL", "compiled_kernels"]


# Each block kernel is one pass over a (teacher_vocab, c) block and none allocates one: a graph that both writes
# a block and reduces it makes inductor materialise a fresh 16 MB temporary per call, and those page faults cost
# more than the fusion saves.
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
    out.copy_(((mapped - shift).clamp_min(EXP_FLOOR) + bias).exp())


_COMPILED: dict[str, Any] = {}


def compiled_kernels() -> dict[str, Any] | None:
    """The reduce KL's kernels compiled with ``torch.compile``, or ``None`` when compiling fails.

    The ``teacher_*`` / ``student_*`` block kernels make four passes over a ``(teacher_vocab, c)`` block of
    what were ten eager kernels, into a reused buffer; ``lse`` / ``pooled_grad`` make the
    student's pooled log-softmax and its gradient single passes over the ``(pieces, student_vocab)``
    logits. With a 120K teacher on the 2-core CPU the reduce overhead fell from ~26% to ~18-21%
    (``scripts/bench_distill.py``; docs/distillation.md). The
    result (or the failure, e.g. no C++ compiler) is kept for the process; torch caches the compiled
    code on disk, so later runs start fast.
    """
    if "kernels" not in _COMPILED:
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
            _COMPILED["kernels"] = kernels
        except Exception as error:  # any backend failure means: stay eager
            warnings.warn(f"reduce KL: torch.compile of the block kernels failed ({type(error).__name__}: "
                          f"{str(error)[:200]}); using the eager kernels (slower, same result)", stacklevel=2)
            _COMPILED["kernels"] = None
    return _COMPILED["kernels"]


class CompiledKL(LinearMapKL):
    """:class:`LinearMapKL` with the compiled kernels (build them first: :func:`compiled_kernels`)."""

    def __init__(self, piece_map: PieceMap, pooling: str, block: int, teacher_block: int,
                 kernels: dict[str, Any]) -> None:
        super().__init__(piece_map, pooling, block, teacher_block, kernels=kernels)
