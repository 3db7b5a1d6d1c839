"""``reduce``: the teacher sequence rewritten in student tokens; student scores pooled and mapped (REFERENCE 2.4).

The student's log-probabilities (at temperature ``T``) over the pieces of each teacher position are pooled
(``sum`` / ``mean`` / ``logsumexp``), then mapped into the teacher vocabulary: the score of teacher token
``t`` is the same pooling of the pooled log-probabilities of ``t``'s pieces. The KL runs over the covered
teacher tokens. With a 120K teacher vocabulary no ``(positions, teacher_vocab)`` matrix is kept: the KL's
arithmetic is one of the :class:`distilrubert.align.base.ReduceKL` backends, chosen once when the alignment
is built (and again only when it moves to another kind of device):

==========  ======================================  =====================================================
kernel      module                                  when
==========  ======================================  =====================================================
``native``  :mod:`~distilrubert.align.kl_native`    ``sum``/``mean`` on CPU: ``--kl-kernel native``, or
                                                    ``auto`` for teacher vocabularies >= ``AUTO_MIN_VOCAB``
``compile`` :mod:`~distilrubert.align.kl_compiled`  ``--kl-kernel compile``; ``native``/``auto`` when the
                                                    C++ build fails (or off CPU for ``native``)
``eager``   :mod:`~distilrubert.align.kl_eager`     ``--kl-kernel eager``, small vocabularies, or when
                                                    compiling fails
``dense``   :mod:`~distilrubert.align.kl_eager`     ``logsumexp`` pooling (not linear), whatever the kernel
==========  ======================================  =====================================================

Every backend gives the same result up to float rounding; :meth:`ReduceAlignment.kl` is one backend call
and the ``T^2 / n`` scaling.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from distilrubert.align.base import Alignment, ReduceKL
from distilrubert.align.kl_eager import DenseKL, LinearMapKL
from distilrubert.align.piecemap import PieceMap
from distilrubert.align.positions import pad_rows, pool_rows
from distilrubert.losses import kl_div_topk
from distilrubert.teacher_head import as_teacher_scores

logger = logging.getLogger(__name__)

__all__ = ["AUTO_MIN_VOCAB", "DEFAULT_POOLING", "KL_KERNELS", "POOLINGS", "ReduceAlignment", "choose_reduce_kl",
           "kl_kernel_from_fused"]

POOLINGS = ("sum", "mean", "logsumexp")
DEFAULT_POOLING = "mean"  # as `distill --pooling` (docs/results-reduce-mean.md); the released code: sum
KL_KERNELS = ("auto", "native", "compile", "eager")
AUTO_MIN_VOCAB = 32768  # ``auto`` picks native (else compiled) kernels on CPU for teacher vocabularies this large
_FUSED_KL = {"auto": "auto", "native": "native", "compile": "compile", "off": "eager", "on": "compile"}


def kl_kernel_from_fused(value: str) -> str:
    """The ``--kl-kernel`` value of a value of the deprecated ``--fused-kl`` (``off`` = eager, ``on`` = compile).

    Warns (``DeprecationWarning`` and the log) that the old spelling is deprecated.
    """
    if value not in _FUSED_KL:
        raise ValueError(f"--fused-kl: unknown mode {value!r} (auto, native, compile, off; it is deprecated: "
                         f"--kl-kernel {'|'.join(KL_KERNELS)})")
    kernel = _FUSED_KL[value]
    message = f"--fused-kl {value} is deprecated and will be removed: use --kl-kernel {kernel}"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    logger.warning(message)
    return kernel


def choose_reduce_kl(kl_kernel: str, piece_map: PieceMap, pooling: str, device: torch.device, block: int,
                     teacher_block: int) -> LinearMapKL:
    """The ``sum``/``mean`` reduce KL backend for ``kl_kernel`` on ``device`` (the module docstring's table).

    A kernel that cannot be built falls back to the next one with a warning (from the builder); the choice
    is logged.
    """
    large_cpu = device.type == "cpu" and piece_map.n_teacher >= AUTO_MIN_VOCAB
    backend: LinearMapKL | None = None
    if device.type == "cpu" and (kl_kernel == "native" or (kl_kernel == "auto" and large_cpu)):
        from distilrubert.native import reduce_kl_kernel

        module = reduce_kl_kernel()
        if module is not None:
            from distilrubert.align.kl_native import NativeKL

            backend = NativeKL(piece_map, pooling, block, teacher_block, module)
    if backend is None and (kl_kernel in ("native", "compile") or (kl_kernel == "auto" and large_cpu)):
        from distilrubert.align.kl_compiled import CompiledKL, compiled_kernels

        kernels = compiled_kernels()
        if kernels is not None:
            backend = CompiledKL(piece_map, pooling, block, teacher_block, kernels)
    if backend is None:
        backend = LinearMapKL(piece_map, pooling, block, teacher_block)
    logger.info("reduce KL kernel: %s (--kl-kernel %s, pooling %s, %s, teacher vocabulary %d)",
                backend.kernel_name, kl_kernel, pooling, device.type, piece_map.n_teacher)
    return backend.to(device)


class ReduceAlignment(Alignment):
    """``reduce``: the teacher sequence rewritten in student tokens; student scores pooled and mapped.

    Args:
        token_map: The token map.
        student_pad_id: The student's ``[PAD]`` id.
        pooling: ``mean`` (the default, as ``distill``'s), ``sum`` (the released code) or ``logsumexp``
            (log of summed probabilities).
        chunk_elements: Upper bound of ``positions x teacher_vocab`` elements reduced at once (small
            enough to stay in cache).
        projection_elements: Upper bound of ``positions x teacher_vocab`` teacher logits computed at once
            from the teacher's output projection (large enough to read its weight rarely).
        kl_kernel: The KL backend: ``auto``, ``native``, ``compile`` or ``eager`` (module docstring).
        fused: Deprecated spelling of ``kl_kernel`` (``off`` = eager, ``on`` = compile); warns.

    Attributes:
        kl_backend: The chosen :class:`distilrubert.align.base.ReduceKL`.
        linear_map: The same object when it is a ``sum``/``mean`` linear-map backend (its work buffers), else
            ``None``.
    """

    name = "reduce"
    reads_teacher_sequence = True

    def __init__(self, token_map, student_pad_id: int, pooling: str = DEFAULT_POOLING,
                 chunk_elements: int = 2**22, projection_elements: int = 2**25, kl_kernel: str = "auto",
                 fused: str | None = None) -> None:
        super().__init__(token_map, student_pad_id)
        if pooling not in POOLINGS:
            raise ValueError(f"--pooling: unknown pooling {pooling!r} ({', '.join(POOLINGS)})")
        if fused is not None:
            kl_kernel = kl_kernel_from_fused(fused)
        if kl_kernel not in KL_KERNELS:
            raise ValueError(f"--kl-kernel: unknown kernel {kl_kernel!r} ({', '.join(KL_KERNELS)})")
        self.pooling, self.kl_kernel = pooling, kl_kernel
        self.piece_map = PieceMap.from_token_map(token_map)
        self.covered_np = self.piece_map.covered
        if not self.covered_np.any():
            raise ValueError("--alignment reduce: no teacher token can be spelled with student tokens")
        n_teacher, max_pieces = self.piece_map.n_teacher, self.piece_map.max_pieces
        if pooling == "logsumexp":  # a (rows, teacher_vocab, max_pieces) gather per chunk
            self.chunk_rows = max(1, 4 * chunk_elements // (n_teacher * max_pieces))
        else:
            self.chunk_rows = max(1, chunk_elements // n_teacher)
        # A multiple of 32 positions: whole 16-position groups for the native kernel, split evenly over threads.
        self.projection_rows = max(self.chunk_rows, projection_elements // n_teacher // 32 * 32)
        self.cov_ids = torch.as_tensor(self.piece_map.covered_ids)
        self.uncovered = torch.as_tensor(self.piece_map.uncovered_ids)
        self.n_student = self.piece_map.n_student
        # The explicit map (covered-token scores): the logsumexp path, map_to_teacher and the top-k scores.
        self.dense = DenseKL(self.piece_map, pooling, self.chunk_rows)
        self._choose(torch.device("cpu"))

    @classmethod
    def from_options(cls, token_map, student_pad_id: int, **options) -> ReduceAlignment:
        return cls(token_map, student_pad_id, pooling=options.get("pooling", DEFAULT_POOLING),
                   kl_kernel=options.get("kl_kernel", "auto"), fused=options.get("fused"))

    def _choose(self, device: torch.device) -> None:
        self.device_type = device.type
        if self.pooling == "logsumexp":
            self.kl_backend: ReduceKL = self.dense  # not linear: the explicit map, whatever --kl-kernel says
            logger.info("reduce KL kernel: dense (pooling logsumexp; --kl-kernel %s does not apply)", self.kl_kernel)
        else:
            self.kl_backend = choose_reduce_kl(self.kl_kernel, self.piece_map, self.pooling, device,
                                               self.chunk_rows, self.projection_rows)
        self.linear_map = self.kl_backend if isinstance(self.kl_backend, LinearMapKL) else None

    def to(self, device: torch.device) -> ReduceAlignment:
        device = torch.device(device)
        for name in ("cov_ids", "uncovered"):
            setattr(self, name, getattr(self, name).to(device))
        self.dense.to(device)
        if device.type != self.device_type:  # the best kernel depends on the kind of device: choose again
            self._choose(device)
        else:
            self.kl_backend.to(device)
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
            "reduce_input_ids": pad_rows(rewritten, self.student_pad_id),
            "reduce_attention_mask": pad_rows([np.ones(len(r), dtype=np.int64) for r in rewritten], 0),
            "reduce_owner": pad_rows(owners, -1),
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
        rows, n = self._piece_rows(batch)
        return self.kl_backend.pooled(student_logits.reshape(-1, student_logits.shape[-1]), rows, n, temperature)

    def map_to_teacher(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(n, n_covered)`` scores of the covered teacher tokens from ``(n, student_vocab)`` pooled scores."""
        return self.dense.map_to_teacher(pooled)

    def _kl_dense(self, pooled: torch.Tensor, teacher_rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """Summed ``KL x T^2`` of ``(c, student_vocab)`` pooled scores against ``(c, teacher_vocab)`` logits
        with autograd: the reference the kernels are tested against."""
        return self.dense.block_kl(pooled, teacher_rows, temperature) * temperature**2

    def kl(self, batch, student_logits, teacher_logits, temperature):
        rows, n = self._piece_rows(batch)
        if n == 0:
            return student_logits.sum() * 0.0
        total = self.kl_backend.kl_sum(student_logits.reshape(-1, student_logits.shape[-1]), rows, n,
                                       as_teacher_scores(teacher_logits, batch["t_index"]), temperature)
        return total * temperature**2 / n  # mean over aligned positions of KL x T^2, for every backend

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
        pooled = self._pooled_logp(batch, student_logits, temperature)  # (n, student_vocab)
        if pooled.shape[0] == 0:
            return student_logits.sum() * 0.0
        # Scores of the teacher's k cached tokens only (both distributions renormalised over them): no
        # (positions, teacher_vocab) tensor at all, which is what makes cached epochs cheap.
        pad = 0.0 if self.pooling in ("sum", "mean") else float("-inf")
        padded = torch.cat([pooled, pooled.new_full((pooled.shape[0], 1), pad)], dim=1)  # (n, sv + 1)
        pieces = self.dense.gather_index[topk_ids]  # (n, k, max_pieces) student ids, pad -> the extra column
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
