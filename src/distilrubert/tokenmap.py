"""Teacher-to-student token map: greedy split, inverse map, vocabulary intersection (REFERENCE 2.1).

Every teacher token is spelled with student tokens by greedy longest-prefix match, the way WordPiece
itself tokenises a word: a word-initial teacher token (``привет``) starts with a word-initial student
piece and continues with ``##`` pieces; a continuation teacher token (``##ами``) starts with a ``##``
piece. Special tokens map to the student's token of the same name (``[CLS]`` -> ``[CLS]``); a teacher
token that cannot be covered (a character missing from the student vocabulary, or a bracketed reserved
token such as ``[unused17]`` that the student lacks) maps to the student's ``[UNK]``.

From the split follow:

* :attr:`TokenMap.teacher_to_student`: a padded ``(teacher_vocab, max_pieces)`` int64 matrix of student
  ids (``-1`` = padding), with :attr:`TokenMap.lengths` and :attr:`TokenMap.covered` beside it: the form
  the ``reduce`` alignment gathers from, never a dense one-hot matrix.
* :attr:`TokenMap.student_to_teacher`: for each student id, the teacher ids whose split starts with it
  (the inverse map, used to initialise student embedding rows).
* :attr:`TokenMap.intersection`: ``(n, 2)`` pairs ``(teacher_id, student_id)`` of identically spelled
  tokens (the ``match`` alignment's KL support).

The split is computed once per distinct teacher string with a dictionary lookup per candidate
prefix, which handles a 120K-token teacher vocabulary in about a second (``scripts/bench_tokenmap.py``;
the measured time is in ``docs/tokenmap.md``).

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tmap = TokenMap.from_tokenizers(AutoTokenizer.from_pretrained("teacher"),
    ...                                 AutoTokenizer.from_pretrained("v5k"))  # doctest: +SKIP
    >>> tmap.split_teacher_token("приветствие")  # doctest: +SKIP
    ['привет', '##ств', '##ие']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SPECIALS", "TokenMap", "greedy_split"]

DEFAULT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"
# Reserved vocabulary entries such as [unused17], [UNK], <s>: never spelled out character by character.
_BRACKETED = re.compile(r"^(\[[A-Za-z_]+\d*\]|<[A-Za-z_/]+\d*>)$")


def greedy_split(token: str, student_vocab: Mapping[str, int] | set[str], max_len: int | None = None,
                 prefix: str = PREFIX) -> list[str] | None:
    """Greedy longest-prefix split of one teacher token into student tokens.

    Args:
        token: A teacher token; a leading ``prefix`` (``##``) marks a word continuation.
        student_vocab: The student tokens (a mapping or a set).
        max_len: Length of the longest student token (an upper bound for the prefix search).
        prefix: The continuation prefix.

    Returns:
        The student pieces, or ``None`` if some part of the token has no student piece.

    >>> greedy_split("abcd", {"ab", "a", "##cd", "##c", "##d"})
    ['ab', '##cd']
    >>> greedy_split("##xyz", {"##x", "##y", "##yz"})
    ['##x', '##yz']
    >>> greedy_split("aq", {"a", "##b"}) is None
    True
    """
    continuation = token.startswith(prefix) and len(token) > len(prefix)
    body = token[len(prefix):] if continuation else token
    if max_len is None:
        max_len = max((len(t) for t in student_vocab), default=0)
    pieces: list[str] = []
    start = 0
    while start < len(body):
        mark = prefix if (continuation or start > 0) else ""
        end = min(len(body), start + max_len)
        while end > start:
            candidate = mark + body[start:end]
            if candidate in student_vocab:
                pieces.append(candidate)
                break
            end -= 1
        else:
            return None
        start = end
    return pieces


class TokenMap:
    """The alignment of a teacher vocabulary onto a student vocabulary.

    Build it with :meth:`from_tokenizers` (two transformers tokenizers) or :meth:`from_vocabs` (two
    token-to-id mappings). All arrays are indexed by token id.

    Attributes:
        teacher_tokens: Teacher token strings by id (``None`` for unused ids).
        student_tokens: Student token strings by id.
        teacher_to_student: ``(teacher_vocab, max_pieces)`` int64 student ids, ``-1`` padded.
        lengths: ``(teacher_vocab,)`` number of pieces of each teacher token (1 for ``[UNK]``).
        covered: ``(teacher_vocab,)`` bool, whether the teacher token has a real mapping (not ``[UNK]``).
        student_to_teacher: list, for each student id, of the int64 teacher ids whose split starts with it.
        intersection: ``(n, 2)`` int64 pairs ``(teacher_id, student_id)`` of identically spelled tokens.
    """

    def __init__(self, teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int],
                 teacher_specials: Iterable[str] = DEFAULT_SPECIALS, student_unk: str = "[UNK]",
                 prefix: str = PREFIX) -> None:
        if student_unk not in student_vocab:
            raise ValueError(f"the student vocabulary has no unknown token {student_unk!r}")
        self.prefix = prefix
        self.student_vocab = dict(student_vocab)
        self.teacher_vocab = dict(teacher_vocab)
        self.student_unk_id = self.student_vocab[student_unk]
        self.teacher_specials = set(teacher_specials)
        n_teacher = max(self.teacher_vocab.values(), default=-1) + 1
        n_student = max(self.student_vocab.values(), default=-1) + 1
        self.teacher_tokens: list[str | None] = [None] * n_teacher
        for tok, i in self.teacher_vocab.items():
            self.teacher_tokens[i] = tok
        self.student_tokens: list[str | None] = [None] * n_student
        for tok, i in self.student_vocab.items():
            self.student_tokens[i] = tok
        self._max_len = max((len(t) for t in self.student_vocab), default=0)

        splits: list[list[int]] = []
        covered = np.zeros(n_teacher, dtype=bool)
        for t_id, token in enumerate(self.teacher_tokens):
            ids = self._split_ids(token) if token is not None else None
            if ids is None:
                splits.append([self.student_unk_id])
            else:
                splits.append(ids)
                covered[t_id] = True
        max_pieces = max((len(s) for s in splits), default=1)
        self.lengths = np.fromiter((len(s) for s in splits), dtype=np.int64, count=n_teacher)
        matrix = np.full((n_teacher, max_pieces), -1, dtype=np.int64)
        for t_id, ids in enumerate(splits):
            matrix[t_id, : len(ids)] = ids
        self.teacher_to_student = matrix
        self.covered = covered

        # Inverse map: student id -> teacher ids whose split starts with it (sorted, covered only).
        first = matrix[:, 0]
        order = np.argsort(first, kind="stable")
        order = order[covered[order]]
        bounds = np.searchsorted(first[order], np.arange(n_student + 1))
        self.student_to_teacher = [order[bounds[s]:bounds[s + 1]] for s in range(n_student)]

        shared = sorted((self.teacher_vocab[t], s) for t, s in self.student_vocab.items() if t in self.teacher_vocab)
        self.intersection = np.asarray(shared, dtype=np.int64).reshape(-1, 2)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def from_vocabs(cls, teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int],
                    teacher_specials: Iterable[str] = DEFAULT_SPECIALS) -> TokenMap:
        """Build from two ``token -> id`` mappings (e.g. read from ``vocab.txt`` files)."""
        return cls(teacher_vocab, student_vocab, teacher_specials=teacher_specials)

    @classmethod
    def from_tokenizers(cls, teacher_tokenizer: Any, student_tokenizer: Any) -> TokenMap:
        """Build from two transformers tokenizers (``get_vocab()``; special tokens taken from each)."""
        student_unk = getattr(student_tokenizer, "unk_token", None) or "[UNK]"
        specials = set(getattr(teacher_tokenizer, "all_special_tokens", DEFAULT_SPECIALS))
        return cls(teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab(), teacher_specials=specials,
                   student_unk=student_unk)

    # ---------------------------------------------------------------------------------------------
    def _split_ids(self, token: str) -> list[int] | None:
        if token in self.teacher_specials or _BRACKETED.match(token):
            # Special and reserved tokens map to themselves or to [UNK], never spelled out.
            return [self.student_vocab[token]] if token in self.student_vocab else None
        pieces = greedy_split(token, self.student_vocab, self._max_len, self.prefix)
        return None if pieces is None else [self.student_vocab[p] for p in pieces]

    def split_teacher_token(self, token: str) -> list[str]:
        """The student pieces of a teacher token string (``['[UNK]']`` if it cannot be covered).

        Works for any string, in the teacher vocabulary or not.
        """
        t_id = self.teacher_vocab.get(token)
        if t_id is not None:
            ids = self.teacher_to_student[t_id, : self.lengths[t_id]]
        else:
            ids = self._split_ids(token) or [self.student_unk_id]
        return [self.student_tokens[i] for i in ids]

    def teacher_tokens_for(self, student_token: str) -> list[str]:
        """The teacher tokens whose split starts with ``student_token`` (the inverse map), as strings."""
        s_id = self.student_vocab[student_token]
        return [self.teacher_tokens[i] for i in self.student_to_teacher[s_id]]

    def rewrite(self, teacher_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewrite a teacher id sequence as student ids (the ``reduce`` alignment's input).

        Returns:
            ``(student_ids, owner)``: the concatenated pieces and, for each piece, the index of the
            teacher position it came from.

        >>> tmap = TokenMap({"[UNK]": 0, "abc": 1}, {"[UNK]": 0, "ab": 1, "##c": 2})
        >>> [a.tolist() for a in tmap.rewrite([1, 1])]
        [[1, 2, 1, 2], [0, 0, 1, 1]]
        """
        teacher_ids = np.asarray(teacher_ids, dtype=np.int64)
        rows = self.teacher_to_student[teacher_ids]  # (n, max_pieces)
        mask = rows >= 0
        owner = np.broadcast_to(np.arange(len(teacher_ids))[:, None], rows.shape)[mask]
        return rows[mask], owner

    def stats(self) -> dict[str, Any]:
        """Coverage figures for reports."""
        n_teacher = len(self.teacher_tokens)
        covered_lengths = self.lengths[self.covered]
        has_source = sum(1 for ids in self.student_to_teacher if len(ids))
        return {
            "teacher_vocab_size": n_teacher,
            "student_vocab_size": len(self.student_tokens),
            "teacher_tokens_covered": int(self.covered.sum()),
            "teacher_tokens_unk": int(n_teacher - self.covered.sum()),
            "mean_pieces": float(covered_lengths.mean()) if covered_lengths.size else 0.0,
            "max_pieces": int(self.teacher_to_student.shape[1]),
            "intersection_size": len(self.intersection),
            "student_tokens_with_teacher_source": has_source,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (f"TokenMap(teacher={s['teacher_vocab_size']}, student={s['student_vocab_size']}, "
                f"covered={s['teacher_tokens_covered']}, intersection={s['intersection_size']})")
