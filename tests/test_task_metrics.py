"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from distilrubert.tasks.metrics import (
    classification_scores,
    majority_baseline,
    ner_scores,
    normalize_answer,
    squad_exact_match,
    squad_f1,
    squad_scores,
)


def test_normalisation_lowercases_drops_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert normalize_answer("Theatre an-den-Linden") == "theatre andenlinden"  # only whole-word articles
    assert normalize_answer("Волга (река)") == "волга река"
    # Official SQuAD normalisation removes ASCII punctuation only: Russian quotes stay.
    assert normalize_answer("«Газпром»") == "«газпром»"


def test_exact_match_after_normalisation():
    assert squad_exact_match("The Волга!", "волга") == 1.0
    assert squad_exact_match("a cat", "the cat.") == 1.0
    assert squad_exact_match("«Газпром»", "Газпром") == 0.0
    assert squad_exact_match("Волга река", "Волга") == 0.0


def test_f1_by_hand():
    assert squad_f1("the Cat sat.", "cat sat") == 1.0
    # pred {москва, столица}, gold {москва}: P = 1/2, R = 1 -> F1 = 2/3.
    assert squad_f1("Москва, столица", "Москва") == pytest.approx(2 / 3)
    # Repeated tokens count with multiplicity: pred {a: 2 -> removed as article}, {б, б, в} vs {б, в, в}.
    # common = {б: 1, в: 1} = 2; P = 2/3, R = 2/3 -> F1 = 2/3.
    assert squad_f1("б б в", "б в в") == pytest.approx(2 / 3)
    assert squad_f1("the", "a") == 0.0  # both normalise to nothing
    assert squad_f1("Днепр", "Волга") == 0.0


def test_scores_take_max_over_gold_answers_and_count_missing_predictions_as_zero():
    gold = {"q1": ["Республики Татарстан"], "q2": ["Волге", "на Волге"], "q3": ["в 1552 году"]}
    predictions = {
        "q1": "республики Татарстан.",  # EM 1, F1 1
        "q2": "Волге реке",  # vs "Волге": P 1/2 R 1 -> 2/3; vs "на Волге": P 1/2 R 1/2 -> 1/2; max 2/3; EM 0
        # q3 missing -> 0, 0
    }
    scores = squad_scores(predictions, gold)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert scores["questions"] == 3
    assert squad_scores({"q2": "на волге"}, {"q2": ["Волге", "на Волге"]})["exact_match"] == 100.0


def test_classification_scores_by_hand():
    scores = classification_scores(["a", "a", "b", "b"], ["a", "a", "a", "b"], positive="b")
    assert scores["accuracy"] == 0.75
    # class a: P 2/3, R 1 -> 0.8; class b: P 1, R 1/2 -> 2/3; weighted by support (2, 2).
    assert scores["weighted_f1"] == pytest.approx(0.5 * 0.8 + 0.5 * 2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)


def test_ner_scores_are_entity_level():
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert ner_scores(true, [["B-PER", "I-PER", "O", "O"]]) == pytest.approx(
        {"f1": 2 / 3, "precision": 1.0, "recall": 0.5})
    # A partial span (only the first word) is a wrong entity, not half a right one.
    assert ner_scores(true, [["B-PER", "O", "O", "B-LOC"]])["f1"] == pytest.approx(0.5)


def test_majority_baseline():
    baseline = majority_baseline(["x", "y", "y"], ["x", "y", "y", "y"])
    assert baseline["majority_label"] == "y"
    assert baseline["accuracy"] == 0.75
