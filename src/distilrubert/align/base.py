"""The contracts of the alignment package: :class:`Alignment` and the reduce KL's :class:`ReduceKL` backend.

An alignment decides where teacher and student outputs meet (REFERENCE 2.4). The training loop, the
collator and the losses talk to it only through :class:`Alignment`, so they never branch on its name.
The batch arrays it records on the data side are what it reads back on the torch side:

=========================  ==============================  ====================================================
method                     reads                           returns
=========================  ==============================  ====================================================
``collate`` (numpy)        the batch's teacher / student   ``t_index``: ``(n_aligned,)`` flat indices into
                           id sequences, padded widths     ``batch x teacher_len``, plus what the student side
                                                           needs (``match``: ``s_index``; ``reduce``:
                                                           ``reduce_input_ids``, ``reduce_attention_mask``,
                                                           ``reduce_owner``)
``keep_rows`` (numpy)      ``collate``'s arrays, a         the same arrays with only the kept aligned rows
                           ``(n_aligned,)`` bool mask
``teacher_row_count``      one sequence pair               number of aligned teacher positions (reports)
``student_outputs``        the student, the batch, its     the student outputs whose logits / hidden states
                           masked-pass outputs             meet the teacher (``match``: the masked pass;
                                                           ``reduce``: a pass over ``reduce_input_ids``)
``kl``                     batch (``t_index`` and          scalar: mean over aligned positions of
                           ``collate``'s arrays,           ``KL(teacher || student) x T^2``
                           ``teacher_input_ids``),
                           student logits, teacher logits
                           or a lazy teacher head, ``T``
``teacher_topk``           batch, teacher logits, ``T``,   ``(ids, log_probs)``, each ``(n_aligned, k)``:
                           ``k``                           the teacher's top-k over the support (the cache)
``kl_topk``                batch, student logits, cached   the KL with both sides renormalised over those k
                           ``(ids, log_probs)``, ``T``
``student_rows`` /         batch, ``(batch, len, d)``      ``(n_aligned, d)`` hidden states at the aligned
``teacher_rows``           hidden states                   positions
``support_size``           -                               columns of the KL's support (top-k cache width)
``to``                     a device                        the alignment, its lookup tensors moved
=========================  ==============================  ====================================================

Teacher logits may be a full ``(batch, teacher_len, teacher_vocab)`` tensor or a lazy
:class:`distilrubert.teacher_head.TeacherScores` (the output projection applied at the aligned rows only).

A new alignment subclasses :class:`Alignment` in its own module and adds one line to
``distilrubert.align.ALIGNMENT_CLASSES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["Alignment", "ReduceKL"]


class Alignment:
    """Common interface of the alignments (see the module docstring for what each method reads and returns).

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

    @classmethod
    def from_options(cls, token_map, student_pad_id: int, **options: Any) -> Alignment:
        """Build from :func:`distilrubert.align.make_alignment`'s options (``pooling``, ``kl_kernel``, ...),
        taking those this alignment uses; the base takes none."""
        return cls(token_map, student_pad_id)

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

    def kl(self, batch: dict[str, torch.Tensor], student_logits: torch.Tensor, teacher_logits: Any,
           temperature: float) -> torch.Tensor:
        """Mean over aligned positions of ``KL(teacher || student) x T^2`` (scalar)."""
        raise NotImplementedError

    def teacher_topk(self, batch: dict[str, torch.Tensor], teacher_logits: Any, temperature: float,
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


class ReduceKL(Protocol):
    """One implementation of the ``reduce`` KL's arithmetic (``kl_eager``, ``kl_compiled``, ``kl_native``).

    :class:`distilrubert.align.reduce.ReduceAlignment` chooses one at construction and scales its sum by
    ``T^2 / n`` itself, so every backend returns the same unscaled quantity:

    ============  ==================================================  ==========================================
    method        reads                                               returns
    ============  ==================================================  ==========================================
    ``pooled``    ``logits`` ``(pieces, student_vocab)`` of the       ``(n, student_vocab)``: ``log_softmax(
                  rewritten sequence, ``rows`` ``(pieces,)`` aligned  logits / T)`` pooled over each aligned
                  row of each piece (``n`` = none), ``n``, ``T``      row's pieces, with autograd
    ``kl_sum``    the same, and the teacher scores at the ``n``       scalar: ``sum_rows KL(P_teacher ||
                  aligned rows (:class:`TeacherScores`)               P_student)`` at ``T``, without ``T^2``
    ``to``        a device                                            the backend on that device
    ============  ==================================================  ==========================================

    ``kernel_name`` says which arithmetic runs: ``native``, ``compile``, ``eager`` or ``dense``.
    """

    kernel_name: str

    def pooled(self, logits: torch.Tensor, rows: torch.Tensor, n: int, temperature: float) -> torch.Tensor: ...

    def kl_sum(self, logits: torch.Tensor, rows: torch.Tensor, n: int, teacher: Any,
               temperature: float) -> torch.Tensor: ...

    def to(self, device: torch.device) -> ReduceKL: ...
