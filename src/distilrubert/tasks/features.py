"""Model inputs of the tasks: label checks, word labels on word pieces, SQuAD features, best answer spans.

Used by ``finetune`` (training and evaluation) and :func:`distilrubert.tasks.finetune.answer_questions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distilrubert.tasks import readers

__all__ = ["align_labels", "best_spans", "check_labels", "ner_label_list", "qa_eval_features", "qa_train_features"]


def align_labels(word_ids: list[int | None], tags: list[str], label2id: dict[str, int],
                 all_pieces: bool = False) -> list[int]:
    """Word-level IOB2 tags -> one label id per word piece (-100 = ignored by the loss).

    Special tokens get -100. The first piece of a word gets the word's tag; later pieces get -100, or
    with ``all_pieces`` the tag too, with ``B-X`` turned into ``I-X`` so the pieces stay valid IOB2.

    Example:
        >>> align_labels([None, 0, 0, 1, None], ["B-PER", "O"], {"O": 0, "B-PER": 1, "I-PER": 2})
        [-100, 1, -100, 0, -100]
    """
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous:
            labels.append(label2id[tags[word]])
        elif all_pieces:
            tag = tags[word]
            labels.append(label2id["I-" + tag[2:] if tag.startswith("B-") else tag])
        else:
            labels.append(-100)
        previous = word
    return labels


def ner_label_list(examples: list[readers.TokenExample]) -> list[str]:
    """``O`` first, then ``B-X``/``I-X`` for every entity type seen (both, so all-pieces labels exist)."""
    types = sorted({t[2:] for e in examples for t in e.tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def qa_train_features(tokenizer, examples: list[readers.QAExample], max_length: int, stride: int) -> list[dict]:
    """Sliding windows over contexts with start/end token positions (the CLS token when not inside)."""
    features = []
    enc = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    for i, offsets in enumerate(enc["offset_mapping"]):
        example = examples[enc["overflow_to_sample_mapping"][i]]
        sequence_ids = enc.sequence_ids(i)
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answers[0])
        context = [k for k, s in enumerate(sequence_ids) if s == 1]
        start = end = 0  # the CLS token marks "answer not in this window"
        if context and offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
            start = next(k for k in context if offsets[k][1] > start_char)
            end = next(k for k in reversed(context) if offsets[k][0] < end_char)
        feature = {k: enc[k][i] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        feature.update(start_positions=start, end_positions=end)
        features.append(feature)
    return features


def qa_eval_features(tokenizer, examples: list[readers.QAExample], max_length: int,
                     stride: int) -> tuple[list[dict], list[dict]]:
    """Windows for prediction, plus per window the example index and context-only offsets."""
    enc = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    features, meta = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        features.append({k: enc[k][i] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")})
        meta.append({"example": enc["overflow_to_sample_mapping"][i],
                     "offsets": [o if s == 1 else None for o, s in zip(offsets, sequence_ids, strict=True)]})
    return features, meta


def best_spans(examples: list[readers.QAExample], meta: list[dict], start_logits: list[np.ndarray],
               end_logits: list[np.ndarray], n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """The highest ``start + end`` logit span per question over all its windows (SQuAD v1.1: always answer).

    Args:
        examples: The questions.
        meta: Per window, ``example`` (index into ``examples``) and ``offsets`` (character span per token,
            ``None`` outside the context).
        start_logits: Per window, a 1-D array of start logits over its tokens.
        end_logits: Per window, the end logits.
    """
    best: dict[int, tuple[float, str]] = {}
    for window, (starts, ends) in zip(meta, zip(start_logits, end_logits, strict=True), strict=True):
        offsets = window["offsets"]
        context = examples[window["example"]].context
        top_starts = np.argsort(starts)[::-1][:n_best]
        top_ends = np.argsort(ends)[::-1][:n_best]
        for s in top_starts:
            for e in top_ends:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                if window["example"] not in best or score > best[window["example"]][0]:
                    best[window["example"]] = (score, context[offsets[s][0]:offsets[e][1]])
    return {examples[i].id: best.get(i, (0.0, ""))[1] for i in range(len(examples))}


def check_labels(train: list[str], evaluation: list[str], config: Any) -> None:
    """Refuse label sets a classifier cannot learn or be fairly scored on (one line naming the file).

    One class in ``--train`` trains nothing (and scores a perfect F1 on one-class evaluation data); a class
    that only the evaluation data has can never be predicted, so it would silently count as errors.
    """
    counts: dict[str, int] = {}
    for label in train:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise ValueError(f"--train {config.train}: all {len(train)} examples have the label {only!r}; a classifier "
                         "needs at least two classes")
    unseen: dict[str, int] = {}
    for label in evaluation:
        if label not in counts:
            unseen[label] = unseen.get(label, 0) + 1
    if unseen:
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in sorted(unseen.items()))
        where = f"--eval {config.eval}" if config.eval else f"the held-out part of --train {config.train}"
        raise ValueError(f"{where}: labels never seen in the training examples: {listed}; the model could not "
                         "predict them (fix the data or drop those rows)")
