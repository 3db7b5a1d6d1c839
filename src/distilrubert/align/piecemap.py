"""The ``reduce`` alignment's one representation of the token map: a frozen CSR with cached views.

Every consumer (the dense path's embedding bag and gather, the linear map's two directions, the native
kernel's length-sorted segments, the top-k scores) reads its form from one :class:`PieceMap`, so the
pieces of a teacher token are stored once and every view agrees by construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["PieceMap"]


@dataclass(frozen=True, eq=False)
class PieceMap:
    """Student pieces of each teacher token in CSR form; uncovered teacher tokens have no pieces.

    Args:
        offsets: ``(teacher_vocab + 1,)`` int64: the pieces of teacher token ``t`` are
            ``pieces[offsets[t]:offsets[t + 1]]``.
        pieces: ``(nnz,)`` int64 student ids, teacher tokens in id order.
        n_student: Student vocabulary size.
        max_pieces: Width of the token map's padded matrix (a bound on the pieces of any token).
    """

    offsets: np.ndarray
    pieces: np.ndarray
    n_student: int
    max_pieces: int

    @classmethod
    def from_token_map(cls, token_map) -> PieceMap:
        """From a :class:`distilrubert.tokenmap.TokenMap`'s ``teacher_to_student``, ``lengths`` and ``covered``."""
        covered = np.asarray(token_map.covered, dtype=bool)
        matrix = np.asarray(token_map.teacher_to_student)  # (tv, max_pieces), -1 padded
        lengths = np.where(covered, token_map.lengths, 0).astype(np.int64)
        rows = matrix[covered]
        pieces = rows[rows >= 0].astype(np.int64)  # row by row: each covered token's pieces in order
        if len(pieces) != int(lengths.sum()):
            raise ValueError("token map: teacher_to_student and lengths disagree on the number of pieces")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(offsets, pieces, len(token_map.student_tokens), int(matrix.shape[1]))

    @property
    def n_teacher(self) -> int:
        return len(self.offsets) - 1

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """``(teacher_vocab,)`` start of each teacher token's pieces (``embedding_bag`` offsets)."""
        return self.offsets[:-1]

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """``(teacher_vocab,)`` pieces of each teacher token (0 = uncovered)."""
        return np.diff(self.offsets)

    @functools.cached_property
    def covered(self) -> np.ndarray:
        """``(teacher_vocab,)`` bool: the teacher token can be spelled with student tokens."""
        return self.lengths > 0

    @functools.cached_property
    def covered_ids(self) -> np.ndarray:
        return np.flatnonzero(self.covered)

    @functools.cached_property
    def uncovered_ids(self) -> np.ndarray:
        return np.flatnonzero(~self.covered)

    @functools.cached_property
    def padded(self) -> np.ndarray:
        """``(teacher_vocab, max_pieces)`` int64 student ids, ``-1`` padded (uncovered rows: all -1)."""
        out = np.full((self.n_teacher, max(self.max_pieces, 1)), -1, dtype=np.int64)
        out[np.repeat(np.arange(self.n_teacher), self.lengths),
            np.arange(len(self.pieces)) - np.repeat(self.starts, self.lengths)] = self.pieces
        return out

    @functools.cached_property
    def token_of_piece(self) -> np.ndarray:
        """``(nnz,)`` teacher token of each entry of :attr:`pieces`."""
        return np.repeat(np.arange(self.n_teacher), self.lengths)

    @functools.cached_property
    def by_piece(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The transpose: ``(piece_starts (n_student,), piece_tokens (nnz,), order (nnz,))``.

        The teacher tokens containing student piece ``s`` are ``piece_tokens[piece_starts[s]:...]``
        (``order``: the stable permutation of :attr:`pieces` that sorts it by piece).
        """
        order = np.argsort(self.pieces, kind="stable")
        counts = np.bincount(self.pieces, minlength=self.n_student)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return starts, self.token_of_piece[order], order
