"""Task metrics: SQuAD EM/F1 (official v1.1 semantics, offline), classification F1s, entity-level NER F1.

The SQuAD functions re-implement the official ``evaluate-v1.1.py`` normalisation (lower-case, drop
ASCII punctuation, drop the English articles a/an/the, collapse whitespace) so no metric has to be
downloaded; each prediction scores the maximum over its gold answers; totals are percentages.

Example:
    >>> squad_f1("the Cat sat.", "cat sat")
    1.0
    >>> round(squad_f1("Москва, столица", "Москва"), 3)
    0.667
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

__all__ = [
    "classification_scores",
    "majority_baseline",
    "ner_scores",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_scores",
]

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1 normalisation: lower, remove punctuation, remove articles, fix whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between the normalised prediction and gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """EM and F1 in percent over the questions of ``gold`` (max over each question's gold answers).

    A question without a prediction scores 0, as in the official script.

    Args:
        predictions: question id -> predicted answer text.
        gold: question id -> list of gold answer texts.
    """
    if not gold:
        raise ValueError("no gold questions to score")
    em = f1 = 0.0
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        em += max(squad_exact_match(predictions[qid], a) for a in answers)
        f1 += max(squad_f1(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * em / len(gold), "f1": 100.0 * f1 / len(gold), "questions": len(gold)}


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str],
                          positive: str | None = None) -> dict[str, float]:
    """Accuracy, weighted F1, macro F1 and (with ``positive``) the binary F1 of that class."""
    from sklearn.metrics import accuracy_score, f1_score

    scores = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if positive is not None:
        scores["f1"] = float(f1_score(y_true, y_pred, average="binary", pos_label=positive, zero_division=0))
    return scores


def ner_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, strict IOB2 spans: type and both ends must match)."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    return {
        "f1": float(f1_score(y_true, y_pred, **kwargs)),
        "precision": float(precision_score(y_true, y_pred, **kwargs)),
        "recall": float(recall_score(y_true, y_pred, **kwargs)),
    }


def majority_baseline(train_labels: Sequence[str], eval_labels: Sequence[str],
                      positive: str | None = None) -> dict[str, float | str]:
    """Scores of always predicting the most frequent training label (ties: the first seen)."""
    majority = collections.Counter(train_labels).most_common(1)[0][0]
    return {"majority_label": majority,
            **classification_scores(list(eval_labels), [majority] * len(eval_labels), positive=positive)}
