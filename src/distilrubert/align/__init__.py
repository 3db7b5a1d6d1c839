"""The vocabulary alignments of the paper (REFERENCE 2.4): where teacher and student outputs meet.

Every alignment implements one interface (:class:`Alignment`, whose docstring has the table of what a batch
holds and what each method returns), so the training loop and the losses never branch on its name.

========================  ==========================================================================
module                    what
========================  ==========================================================================
``base``                  the contracts: :class:`Alignment` and the reduce KL's ``ReduceKL`` backend
``positions``             :func:`match_positions` (greedy matching), :func:`pool_rows`, padding
``piecemap``              ``PieceMap``: the token map as one frozen CSR, the views every path reads
``match``                 :class:`MatchAlignment`: identical tokens, KL over the vocabulary intersection
``reduce``                :class:`ReduceAlignment`: the teacher sequence rewritten in student tokens,
                          pooled student scores mapped into the teacher vocabulary; the KL backend choice
``kl_eager``              the reduce KL in torch (the linear map by blocks; the dense path)
``kl_compiled``           its block kernels compiled with ``torch.compile``
``kl_native``             its C++ kernels (:mod:`distilrubert.native`)
``span``                  ``--alignment span``: character-offset groups of two tokenisations (any tokenizer
                          families), group pooling and the span hidden loss. Not an output-distribution
                          alignment: ``distill`` runs it through :mod:`distilrubert.represent` on whole
                          texts, so it is not in :data:`ALIGNMENT_CLASSES`
========================  ==========================================================================

Adding an alignment of output distributions: a subclass of :class:`Alignment` in its own module and one
line in :data:`ALIGNMENT_CLASSES`.
"""

from __future__ import annotations

import importlib

from distilrubert.align.base import Alignment, ReduceKL
from distilrubert.align.match import MatchAlignment
from distilrubert.align.piecemap import PieceMap
from distilrubert.align.positions import match_positions, match_positions_ids, pool_rows
from distilrubert.align.reduce import DEFAULT_POOLING, KL_KERNELS, POOLINGS, ReduceAlignment, kl_kernel_from_fused

__all__ = ["ALIGNMENTS", "ALIGNMENT_CLASSES", "DEFAULT_POOLING", "KL_KERNELS", "POOLINGS", "Alignment",
           "MatchAlignment", "PieceMap", "ReduceAlignment", "ReduceKL", "kl_kernel_from_fused", "make_alignment",
           "match_positions", "match_positions_ids", "pool_rows"]

# name -> "module:Class" (imported when built, as the CLI's verb table): one line per alignment.
ALIGNMENT_CLASSES = {
    "match": "distilrubert.align.match:MatchAlignment",
    "reduce": "distilrubert.align.reduce:ReduceAlignment",
}
ALIGNMENTS = tuple(ALIGNMENT_CLASSES)


def make_alignment(name: str, token_map, student_pad_id: int, pooling: str = DEFAULT_POOLING,
                   kl_kernel: str = "auto", *, fused: str | None = None) -> Alignment:
    """Build the alignment called ``name`` (:data:`ALIGNMENTS`).

    Args:
        name: ``match`` or ``reduce``.
        token_map: The :class:`distilrubert.tokenmap.TokenMap`.
        student_pad_id: The student's ``[PAD]`` id.
        pooling: ``reduce``: how piece scores are pooled (:data:`POOLINGS`).
        kl_kernel: ``reduce``: the KL backend (:data:`KL_KERNELS`).
        fused: Deprecated spelling of ``kl_kernel`` (``off`` = eager, ``on`` = compile).
    """
    target = ALIGNMENT_CLASSES.get(name)
    if target is None:
        raise ValueError(f"--alignment: unknown alignment {name!r} ({', '.join(ALIGNMENTS)})")
    module, _, cls = target.partition(":")
    alignment_cls: type[Alignment] = getattr(importlib.import_module(module), cls)
    options = {"pooling": pooling, "kl_kernel": kl_kernel, **({"fused": fused} if fused is not None else {})}
    return alignment_cls.from_options(token_map, student_pad_id, **options)
