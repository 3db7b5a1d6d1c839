"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distilrubert.losses import (
    attention_mse,
    hidden_loss,
    kl_div,
    kl_div_topk,
    layer_pairs,
    mlm_loss,
    parse_layer_pairs,
)


def test_kl_times_t_squared_by_hand():
    temperature = 2.0
    # Teacher softened distribution (0.75, 0.25), student uniform.
    teacher = temperature * torch.log(torch.tensor([[0.75, 0.25]]))
    student = torch.zeros(1, 2)
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * temperature**2  # 0.523248...
    assert float(kl_div(student, teacher, temperature)) == pytest.approx(expected, rel=1e-6)
    assert float(kl_div(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-7)
    # mean over rows vs sum
    both = kl_div(torch.cat([student, student]), torch.cat([teacher, teacher]), temperature, reduction="sum")
    assert float(both) == pytest.approx(2 * expected, rel=1e-6)


def test_kl_ignores_columns_outside_both_supports():
    temperature = 1.0
    student = torch.tensor([[0.0, 0.0, float("-inf")]])
    teacher = torch.tensor([[math.log(3.0), 0.0, float("-inf")]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kl_div(student, teacher, temperature)) == pytest.approx(expected, rel=1e-6)


def test_topk_kl_renormalises_both_sides_over_the_topk():
    temperature = 2.0
    teacher_p = torch.tensor([[0.6, 0.4]])  # the cached top-2, any normalisation is fine
    student_scores = torch.tensor([[0.3, -0.2]])  # the student's scores of the same two tokens
    q = torch.softmax(student_scores / temperature, dim=-1)
    expected = float((teacher_p * (teacher_p.log() - q.log())).sum()) * temperature**2
    got = kl_div_topk(torch.log_softmax(student_scores / temperature, dim=-1), (teacher_p * 5).log(), temperature)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_hidden_losses_by_hand():
    assert float(hidden_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), "mse")) == pytest.approx(2.5)
    assert float(hidden_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), "cosine")) == pytest.approx(1.0)
    assert float(hidden_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]]), "cosine")) == pytest.approx(0.0,
                                                                                                                abs=1e-6)
    with pytest.raises(ValueError, match="--hidden-loss"):
        hidden_loss(torch.ones(1, 2), torch.ones(1, 2), "l1")


def test_attention_mse_masks_padding():
    s = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([[[[1.0, 9.0], [9.0, 9.0]]]])
    mask = torch.tensor([[True, False]])
    assert float(attention_mse(s, t, mask)) == pytest.approx(1.0)


def test_mlm_loss_ignores_unlabelled_positions():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])
    labels = torch.tensor([[0, -100]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(mlm_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(mlm_loss(logits, torch.full((1, 2), -100))) == 0.0


def test_layer_pairs_strategies():
    assert layer_pairs("average_all", 3, 12) == [([0, 1, 2, 3], list(range(13)))]
    assert layer_pairs("skip", 3, 12) == [([0], [0]), ([1], [4]), ([2], [8]), ([3], [12])]
    assert layer_pairs("average", 3, 12) == [([0], [0]), ([1], [1, 2, 3, 4]), ([2], [5, 6, 7, 8]),
                                             ([3], [9, 10, 11, 12])]
    assert layer_pairs("last", 3, 12) == [([0], [9]), ([1], [10]), ([2], [11]), ([3], [12])]
    assert layer_pairs("0:0,3:11+12", 3, 12) == [([0], [0]), ([3], [11, 12])]
    with pytest.raises(ValueError, match="out of range"):
        layer_pairs("4:4", 3, 12)
    with pytest.raises(ValueError, match="--layer-mapping"):
        parse_layer_pairs("1-4")
