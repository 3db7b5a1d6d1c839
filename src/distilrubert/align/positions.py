"""Where teacher and student positions meet: token matching, row pooling, batch padding.

Plain functions shared by the alignments (numpy on the data side, torch on the loss side); no state.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["match_positions", "match_positions_ids", "pad_rows", "pool_rows"]


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


def pad_rows(seqs: Sequence[np.ndarray], value: int) -> np.ndarray:
    """``(len(seqs), longest)`` int64 matrix of the sequences, right-padded with ``value`` (at least 1 column)."""
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), max(width, 1)), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out
