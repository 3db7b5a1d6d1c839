"""The encodechka task files and probes of ``evaluate``: CSV readers, word labels, and the simple probes.

Every probe gets each sentence-vector variant (``cls``, ``mean``, ``cls_norm``, ``mean_norm``) and returns
a score per variant; :mod:`distilrubert.evaluate` keeps the best, as encodechka does.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["encodechka_word_labels", "label_column", "numeric_column", "pair_cv_accuracy", "pair_spearman",
           "probe_accuracy", "probe_auc", "probe_ner", "read_table", "word_spans"]


# ------------------------------------------------------------------------------------------------
# task files
# ------------------------------------------------------------------------------------------------

def read_table(path: Path, columns: Sequence[str], limit: int | None = None) -> dict[str, list[str]]:
    """Read the named CSV columns (header row) as lists of strings; errors name file and line."""
    from distilrubert.tasks.readers import DataFormatError

    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataFormatError(f"{path}:1: missing column(s) {', '.join(missing)} (has: {', '.join(header)})")
        data: dict[str, list[str]] = {c: [] for c in columns}
        for row in reader:
            if any(row.get(c) is None for c in columns):
                raise DataFormatError(f"{path}:{reader.line_num}: fewer fields than the header")
            for c in columns:
                data[c].append(row[c])
            if limit and len(data[columns[0]]) >= limit:
                break
    if not data[columns[0]]:
        raise DataFormatError(f"{path}: no rows")
    return data


def numeric_column(values: Sequence[str], path: Path, column: str) -> np.ndarray:
    from distilrubert.tasks.readers import DataFormatError

    try:
        return np.array([float(v) for v in values])
    except ValueError as err:
        raise DataFormatError(f"{path}: column {column!r} must be numeric: {err}") from None


def label_column(values: Sequence[str]) -> np.ndarray:
    """Class labels as numbers when they all are (so 1 and 1.0 agree), else as strings."""
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return np.array(list(values))


_RAZDEL_FALLBACK = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """Words with character offsets: razdel (as encodechka) when installed, else a close regex."""
    try:
        import razdel
    except ImportError:
        return [(m.group(), m.start(), m.end()) for m in _RAZDEL_FALLBACK.finditer(text)]
    return [(t.text, t.start, t.stop) for t in razdel.tokenize(text)]


def encodechka_word_labels(text: str, entities: Sequence[Sequence]) -> tuple[list[str], list[str]]:
    """encodechka's word labelling: B-type for a span's first word, I-type after, first label wins.

    Replicated exactly for comparable numbers, including encodechka's skip of the text's first word
    (its ``if not token_id`` test treats word 0 as "no word").
    """
    words = word_spans(text)
    char2word = np.full(len(text), -1, dtype=np.int64)
    for i, (_, start, end) in enumerate(words):
        char2word[start:end] = i
    labels = ["O"] * len(words)
    for kind, start, end in entities:
        begun = False
        for char in range(max(0, start), min(end, len(text))):
            word = int(char2word[char])
            if word <= 0 or labels[word] != "O":
                continue
            labels[word] = ("I-" if begun else "B-") + str(kind)
            begun = True
    return [w for w, _, _ in words], labels


# ------------------------------------------------------------------------------------------------
# probes
# ------------------------------------------------------------------------------------------------

def pair_spearman(emb1: dict[str, np.ndarray], emb2: dict[str, np.ndarray], gold: np.ndarray) -> dict[str, float]:
    """Per variant: Spearman correlation between the pairs' dot products and the gold scores."""
    from scipy.stats import spearmanr

    return {k: float(spearmanr(gold, np.sum(emb1[k] * emb2[k], axis=1)).statistic) for k in emb1}


def pair_cv_accuracy(emb1: dict[str, np.ndarray], emb2: dict[str, np.ndarray], gold: np.ndarray) -> dict[str, float]:
    """Per variant: 3-fold CV accuracy of a logistic regression on the pair's dot product (XNLI)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict

    cv = KFold(n_splits=3, shuffle=True, random_state=1)
    out = {}
    for k in emb1:
        scores = np.sum(emb1[k] * emb2[k], axis=1)[:, None]  # (pairs, 1)
        predicted = cross_val_predict(LogisticRegression(max_iter=10_000), scores, gold, cv=cv)
        out[k] = float(np.mean(predicted == gold))
    return out


def probe_accuracy(train: dict[str, np.ndarray], y_train: np.ndarray, test: dict[str, np.ndarray],
                   y_test: np.ndarray) -> dict[str, float]:
    """Per variant and classifier (``lr``: logistic regression, ``knn``: 3-NN by distance): test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    out = {}
    for k in train:
        for name, clf in (("lr", LogisticRegression(max_iter=10_000)),
                          ("knn", KNeighborsClassifier(n_neighbors=3, weights="distance"))):
            clf.fit(train[k], y_train)
            out[f"{k}__{name}"] = float(np.mean(clf.predict(test[k]) == y_test))
    return out


def probe_auc(train: dict[str, np.ndarray], y_train: np.ndarray, test: dict[str, np.ndarray],
              y_test: np.ndarray) -> dict[str, float]:
    """Per variant: ROC AUC of a logistic regression's probability of the positive class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    out = {}
    for k in train:
        clf = LogisticRegression(max_iter=10_000).fit(train[k], y_train)
        out[k] = float(roc_auc_score(y_test, clf.predict_proba(test[k])[:, 1]))
    return out


def probe_ner(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """encodechka's NER probe: SGD logistic regression on word vectors, macro F1 over the non-O labels."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import f1_score

    clf = SGDClassifier(loss="log_loss", shuffle=True, random_state=1, early_stopping=False, tol=1e-4)
    clf.fit(x_train, y_train)
    labels = sorted(set(y_test.tolist()) - {"O"})
    return float(f1_score(y_test, clf.predict(x_test), average="macro", labels=labels, zero_division=0))
