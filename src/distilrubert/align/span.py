"""The ``span`` alignment: teacher and student tokens paired through character offsets.

Teacher and student each read their *own* tokenisation of the same text (any tokenizer families:
a SentencePiece teacher with ``<s> ... </s>``, a WordPiece student with ``[CLS] ... [SEP]``). Both
fast tokenizers give character offsets (``return_offsets_mapping=True``); a **group** is a smallest
set of teacher tokens and student tokens that cover the same characters. Hidden-state losses compare
the mean of the student's states over a group with the mean of the teacher's states over it.

How groups are made (:func:`span_groups`, linear after one sort):

* every token's span is trimmed of leading and trailing whitespace, using the text: SentencePiece
  offsets may or may not include the space of a ``▁`` piece, WordPiece offsets never do. Tokens with
  zero-width offsets (``(0, 0)``: ``<s>``, ``[CLS]``, padding), only whitespace, or exactly the
  characters of the next token (a lone ``▁`` at the text start) belong to no group;
* teacher offsets can be shifted back by ``teacher_prefix`` characters (the model card's
  ``"passage: "`` read by the teacher only); tokens inside the prefix belong to no group;
* only the characters covered by both sides count: tokens reaching before the later first token or
  after the earlier last token of the two sides (one side truncated earlier) belong to no group;
* spans of both sides are swept in text order; a group closes at a character boundary that no token of
  either side straddles. So one teacher token over two student tokens (and vice versa) and crossing
  cuts (teacher ``[0,3) [3,6)``, student ``[0,2) [2,6)``) end up in one group, ``[0,6)``;
* a group with tokens of one side only (characters the other side skipped) is dropped, its tokens get
  ``-1``. An ``[UNK]`` student token has valid offsets and groups like any other token.

A group's characters are then the same on both sides up to characters that only one side covers
inside it (one side's tokenizer dropped them, e.g. a soft hyphen).

What :func:`batch_span_groups` returns for a padded batch of ``B`` texts (the collate function's form):

| key | shape, dtype | meaning |
|---|---|---|
| ``t_group`` | ``(B, teacher_len)`` int64 | group of each teacher position, numbered across the batch; ``-1`` = none |
| ``s_group`` | ``(B, student_len)`` int64 | group of each student position, same numbering; ``-1`` = none |
| ``n_groups`` | ``()`` int64 | number of groups in the batch (text 0's groups first, each text in text order) |
| ``group_row`` | ``(n_groups,)`` int64 | the text (batch row) of each group |

:func:`pool_groups` and :func:`span_hidden_loss` are the torch side: mean-pool states over groups,
project the student, and apply :func:`distilrubert.losses.hidden_loss` per layer pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from distilrubert.losses import hidden_loss

__all__ = ["batch_span_groups", "pool_groups", "span_groups", "span_hidden_loss"]

# Every code point for which str.isspace() is true (all below U+3001): a lookup table keeps the
# whitespace test vectorised over the characters of a whole batch.
_SPACES = [0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
           0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
_SPACE_TABLE = np.zeros(0x3001 + 1, dtype=bool)
_SPACE_TABLE[_SPACES] = True


def _as_offsets(offsets: Any, length: int, what: str) -> np.ndarray:
    """One side's offsets of a batch as ``(B, length, 2)`` int64, zero-width past each sequence's end.

    Accepts an array ``(B, L, 2)`` (``return_tensors="np"``) or a list of per-text ``(start, end)``
    sequences of any lengths up to ``length``.
    """
    if isinstance(offsets, np.ndarray | torch.Tensor):
        array = np.asarray(offsets, dtype=np.int64)
        if array.ndim != 3 or array.shape[2] != 2:
            raise ValueError(f"{what} offsets: expected an array (batch, length, 2), got shape {array.shape}")
        if array.shape[1] > length:
            raise ValueError(f"{what} offsets: {array.shape[1]} positions exceed the padded length {length}")
        out = np.zeros((array.shape[0], length, 2), dtype=np.int64)
        out[:, :array.shape[1]] = array
        return out
    out = np.zeros((len(offsets), length, 2), dtype=np.int64)
    for row, seq in enumerate(offsets):
        if len(seq) == 0:
            continue
        seq = np.asarray(seq, dtype=np.int64)
        if seq.ndim != 2 or seq.shape[1] != 2:
            raise ValueError(f"{what} offsets of text {row}: expected (start, end) pairs, got shape {seq.shape}")
        if len(seq) > length:
            raise ValueError(f"{what} offsets of text {row}: {len(seq)} positions exceed the padded length {length}")
        out[row, :len(seq)] = seq
    return out


def _trimmed(offsets: np.ndarray, base: np.ndarray, text_len: np.ndarray, shift: int, next_solid: np.ndarray,
             solid_end: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Global ``(start, end)`` of each token, whitespace trimmed; ``start >= end`` marks no span.

    ``base`` is each text's first character in the joined batch text, ``shift`` a prefix (characters)
    that this side read before the text.
    """
    start, end = offsets[..., 0], offsets[..., 1]  # (B, L) each
    if bool((start < 0).any() | (end < start).any()):
        row, pos = np.argwhere((start < 0) | (end < start))[0]
        raise ValueError(f"{what} offsets: text {row} position {pos} has an invalid span "
                         f"({start[row, pos]}, {end[row, pos]})")
    over = end - shift > text_len[:, None]
    if bool(over.any()):
        row, pos = np.argwhere(over)[0]
        raise ValueError(f"{what} offsets: text {row} position {pos} ends at {end[row, pos] - shift}, past the "
                         f"text's {text_len[row]} characters (offsets of another text, or a wrong prefix length?)")
    spans = end > start
    if shift:
        # A token that straddles the prefix and the text keeps its part inside the text.
        start, end = np.maximum(start - shift, 0), end - shift
        spans &= end > start
    start = np.where(spans, start, 0) + base[:, None]
    end = np.where(spans, end, 0) + base[:, None]
    trimmed_start, trimmed_end = next_solid[start], solid_end[end]  # (B, L) each
    gone = ~spans | (trimmed_start >= trimmed_end)
    # A token with exactly the characters of the token after it has none of its own: HF maps a lone
    # SentencePiece "▁" at the start of a text (a space the text does not have) onto the next
    # character, while after a prefix the same piece covers the prefix's space and is dropped above.
    gone[:, :-1] |= (trimmed_start[:, :-1] == trimmed_start[:, 1:]) & (trimmed_end[:, :-1] == trimmed_end[:, 1:]) \
        & ~gone[:, 1:]
    return np.where(gone, 0, trimmed_start), np.where(gone, 0, trimmed_end)


def _group(t_start: np.ndarray, t_end: np.ndarray, s_start: np.ndarray, s_end: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Groups of trimmed global spans (``(B, Lt)``, ``(B, Ls)``); see the module docstring."""
    t_valid, s_valid = t_start < t_end, s_start < s_end  # (B, Lt), (B, Ls)
    # Keep only the characters both sides cover (truncation, a window starting later).
    big = np.iinfo(np.int64).max
    lo = np.maximum(np.where(t_valid, t_start, big).min(1, initial=big),
                    np.where(s_valid, s_start, big).min(1, initial=big))  # (B,)
    hi = np.minimum(np.where(t_valid, t_end, -1).max(1, initial=-1),
                    np.where(s_valid, s_end, -1).max(1, initial=-1))  # (B,)
    t_valid &= (t_start >= lo[:, None]) & (t_end <= hi[:, None])
    s_valid &= (s_start >= lo[:, None]) & (s_end <= hi[:, None])
    t_pos, s_pos = np.flatnonzero(t_valid), np.flatnonzero(s_valid)
    t_group = np.full(t_start.size, -1, dtype=np.int64)
    s_group = np.full(s_start.size, -1, dtype=np.int64)
    n_t = len(t_pos)
    if n_t == 0 or len(s_pos) == 0:
        return t_group.reshape(t_start.shape), s_group.reshape(s_start.shape), 0, np.zeros(0, dtype=np.int64)
    starts = np.concatenate([t_start.ravel()[t_pos], s_start.ravel()[s_pos]])  # (n,)
    ends = np.concatenate([t_end.ravel()[t_pos], s_end.ravel()[s_pos]])  # (n,)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    # The sweep: a span starting at or after the furthest end so far opens a new group, so a group
    # closes exactly where no token of either side straddles the boundary.
    reach = np.maximum.accumulate(ends)
    opens = np.empty(len(starts), dtype=bool)
    opens[0] = True
    opens[1:] = starts[1:] >= reach[:-1]
    component = np.cumsum(opens) - 1  # (n,) in sorted order
    n_comp = int(component[-1]) + 1
    from_teacher = order < n_t  # (n,) sorted entries that are teacher tokens
    teacher_count = np.bincount(component, weights=from_teacher, minlength=n_comp)
    total_count = np.bincount(component, minlength=n_comp)
    keep = (teacher_count > 0) & (teacher_count < total_count)  # both sides present
    new_id = np.where(keep, np.cumsum(keep) - 1, -1)
    token_group = np.empty(len(order), dtype=np.int64)
    token_group[order] = new_id[component]
    t_group[t_pos] = token_group[:n_t]
    s_group[s_pos] = token_group[n_t:]
    rows = np.concatenate([t_pos // t_start.shape[1], s_pos // s_start.shape[1]])[order]  # (n,) sorted
    group_row = rows[np.flatnonzero(opens)[keep]]
    return t_group.reshape(t_start.shape), s_group.reshape(s_start.shape), int(keep.sum()), group_row


def batch_span_groups(texts: Sequence[str], teacher_offsets_batch: Any, student_offsets_batch: Any,
                      teacher_len: int, student_len: int, teacher_prefix: int = 0) -> dict[str, np.ndarray]:
    """Span groups of a padded batch (the table in the module docstring).

    Args:
        texts: The ``B`` texts both tokenizers read (without the teacher's prefix).
        teacher_offsets_batch: Teacher offsets, ``(B, L, 2)`` array or per-text lists of ``(start, end)``.
        student_offsets_batch: Student offsets, same forms.
        teacher_len: Padded teacher length (columns of ``t_group``).
        student_len: Padded student length (columns of ``s_group``).
        teacher_prefix: Characters the teacher read before each text (``len("passage: ")``).

    Returns:
        ``t_group`` ``(B, teacher_len)``, ``s_group`` ``(B, student_len)``, ``n_groups`` ``()`` and
        ``group_row`` ``(n_groups,)``, all int64.
    """
    teacher = _as_offsets(teacher_offsets_batch, teacher_len, "teacher")
    student = _as_offsets(student_offsets_batch, student_len, "student")
    if not len(texts) == len(teacher) == len(student):
        raise ValueError(f"span groups: {len(texts)} texts but {len(teacher)} teacher and {len(student)} student "
                         "offset rows")
    if teacher_prefix < 0:
        raise ValueError(f"span groups: teacher_prefix must be >= 0, got {teacher_prefix}")
    text_len = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))  # (B,)
    base = np.cumsum(text_len + 1) - (text_len + 1)  # (B,) texts joined with one separator each
    joined = np.frombuffer("\n".join(texts).encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
    solid = ~_SPACE_TABLE[np.minimum(joined, 0x3001)]  # (N,) not whitespace
    n = len(joined)
    where = np.arange(n + 1, dtype=np.int64)
    # next_solid[i]: first non-space character at or after i; solid_end[e]: one past the last
    # non-space character before e. Trimming a span [s, e) is then two look-ups.
    next_solid = np.minimum.accumulate(np.where(np.append(solid, True), where, n)[::-1])[::-1]  # (N+1,)
    solid_end = np.maximum.accumulate(np.where(np.insert(solid, 0, False), where, 0))  # (N+1,)
    t_start, t_end = _trimmed(teacher, base, text_len, teacher_prefix, next_solid, solid_end, "teacher")
    s_start, s_end = _trimmed(student, base, text_len, 0, next_solid, solid_end, "student")
    t_group, s_group, n_groups, group_row = _group(t_start, t_end, s_start, s_end)
    return {"t_group": t_group, "s_group": s_group, "n_groups": np.array(n_groups, dtype=np.int64),
            "group_row": group_row}


def span_groups(text: str, teacher_offsets: Any, student_offsets: Any,
                teacher_prefix: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Groups of one text: ``(teacher_group, student_group, n_groups)``.

    Args:
        text: The text both tokenizers read.
        teacher_offsets: The teacher's ``(start, end)`` per token (``offset_mapping`` of one text).
        student_offsets: The student's, same form.
        teacher_prefix: Characters the teacher read before ``text``.

    Returns:
        Two int64 arrays, one entry per token (``-1`` = no group), and the number of groups; group
        ids ``0..n_groups-1`` in text order.

    >>> t, s, n = span_groups("abcdef", [(0, 0), (0, 3), (3, 6), (0, 0)], [(0, 0), (0, 2), (2, 6), (0, 0)])
    >>> t.tolist(), s.tolist(), n
    ([-1, 0, 0, -1], [-1, 0, 0, -1], 1)
    """
    n_t, n_s = len(teacher_offsets), len(student_offsets)
    out = batch_span_groups([text], [teacher_offsets], [student_offsets], n_t, n_s, teacher_prefix)
    return out["t_group"][0], out["s_group"][0], int(out["n_groups"])


def _pool_plan(group_index: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions in a group, their groups and each group's token count (shared by every layer)."""
    flat = group_index.reshape(-1)
    positions = (flat >= 0).nonzero().squeeze(1)  # (m,)
    targets = flat.index_select(0, positions)  # (m,)
    if len(targets) and int(targets.max()) >= n_groups:
        raise ValueError(f"span groups: group index {int(targets.max())} out of range for {n_groups} groups")
    # Groups are never empty by construction; the clamp keeps a hand-made index from dividing by zero.
    counts = torch.bincount(targets, minlength=n_groups).clamp_min(1)  # (n_groups,)
    return positions, targets, counts


def pool_groups(hidden: torch.Tensor, group_index: torch.Tensor, n_groups: int,
                plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean of ``hidden`` over each group's tokens (differentiable).

    Args:
        hidden: ``(B, L, H)`` states.
        group_index: ``(B, L)`` long, the group of each position, ``-1`` = none.
        n_groups: Number of groups.
        plan: ``_pool_plan(group_index, n_groups)`` when several layers share one index.

    Returns:
        ``(n_groups, H)``; half-precision states are pooled in fp32.
    """
    if hidden.dim() != 3 or tuple(group_index.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"span groups: states of shape {tuple(hidden.shape)} do not match a group index of "
                         f"shape {tuple(group_index.shape)} (expected (B, L, H) and (B, L))")
    positions, targets, counts = plan if plan is not None else _pool_plan(group_index, n_groups)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # (m, H)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    summed = rows.new_zeros(n_groups, rows.shape[1]).index_add(0, targets, rows)  # (n_groups, H)
    return summed / counts.to(summed.dtype)[:, None]


def span_hidden_loss(student_hidden_states: Sequence[torch.Tensor], teacher_hidden_states: Sequence[torch.Tensor],
                     batch: dict[str, Any], pairs: Sequence[tuple[Any, Any]], projections: Sequence[nn.Module],
                     kind: str = "mse") -> torch.Tensor:
    """Hidden-state loss over span groups, averaged over layer pairs.

    Args:
        student_hidden_states: Student states ``(B, Ls, Hs)`` per layer (``output_hidden_states``).
        teacher_hidden_states: Teacher states ``(B, Lt, Ht)`` per layer; treated as fixed targets.
        batch: ``s_group``, ``t_group`` (long tensors) and ``n_groups`` from :func:`batch_span_groups`.
        pairs: ``(student_layer, teacher_layer)`` per pair; a side may be a list of layers, averaged
            (the form of :func:`distilrubert.losses.layer_pairs`).
        projections: One module per pair mapping the student width to the teacher width.
        kind: ``"mse"`` or ``"cosine"`` (:func:`distilrubert.losses.hidden_loss`).
    """
    if len(pairs) != len(projections):
        raise ValueError(f"span hidden loss: {len(pairs)} layer pairs but {len(projections)} projections")
    if not pairs:
        raise ValueError("span hidden loss: no layer pairs given")
    n_groups = int(batch["n_groups"])
    sides = {"student": (student_hidden_states, torch.as_tensor(batch["s_group"])),
             "teacher": (teacher_hidden_states, torch.as_tensor(batch["t_group"]))}
    plans = {side: _pool_plan(index.to(states[0].device), n_groups) for side, (states, index) in sides.items()}
    pooled: dict[tuple[str, int], torch.Tensor] = {}  # a layer used by several pairs is pooled once

    def mean_pooled(side: str, which: Any) -> torch.Tensor:
        layers = [which] if isinstance(which, int) else list(which)
        states, index = sides[side]
        for k in layers:
            if (side, k) not in pooled:
                pooled[side, k] = pool_groups(states[k], index, n_groups, plans[side])
        # Pooling is linear, so the mean of pooled layers is the pooled mean of the layers.
        return torch.stack([pooled[side, k] for k in layers]).mean(0)  # (n_groups, H)

    total = None
    for (s_which, t_which), projection in zip(pairs, projections, strict=True):
        student_rows = projection(mean_pooled("student", s_which))  # (n_groups, Ht)
        teacher_rows = mean_pooled("teacher", t_which).detach()  # (n_groups, Ht)
        loss = hidden_loss(student_rows, teacher_rows, kind)
        total = loss if total is None else total + loss
    return total / len(pairs)
