"""Span groups (character-offset alignment of two tokenisations), group pooling and the span hidden loss."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distilrubert.align.span import batch_span_groups, pool_groups, span_groups, span_hidden_loss
from distilrubert.losses import hidden_loss, layer_pairs

E5_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "multilingual-e5-small" \
    / "tokenizer.json.gz"
SENTENCES = [
    "Привет, мир! Как дела?",
    "Москва — столица России, 2023 г.",
    "Ёлка  стояла   в углу, а\u00a0за окном шёл снег.",
    "Жук сидел на ветке и смотрел вниз.",  # no "Ж" in the student vocabulary: "Жук" is one [UNK]
    "Сегодня мы читаем книгу о путешествиях.",
]
SPECIAL = (0, 0)


def groups(text, teacher, student):
    t, s, n = span_groups(text, teacher, student)
    return t.tolist(), s.tolist(), n


# ---------------------------------------------------------------- hand-made offsets

def test_teacher_token_straddling_two_student_tokens_and_vice_versa():
    text = "Привет мир"
    # teacher "▁Привет" over student "При" "##вет"; student "мир" over teacher "▁ми" "р"
    t, s, n = groups(text, [SPECIAL, (0, 6), (6, 9), (9, 10), SPECIAL], [SPECIAL, (0, 3), (3, 6), (7, 10), SPECIAL])
    assert (t, s, n) == ([-1, 0, 1, 1, -1], [-1, 0, 0, 1, -1], 2)


def test_crossing_cuts_merge_into_the_smallest_common_group():
    assert groups("abcdef", [(0, 3), (3, 6)], [(0, 2), (2, 6)]) == ([0, 0], [0, 0], 1)
    # a chain of crossings is one group; a shared boundary at 4 splits it
    assert groups("abcdefgh", [(0, 2), (2, 4), (4, 6), (6, 8)], [(0, 4), (4, 8)]) == ([0, 0, 1, 1], [0, 1], 2)
    assert groups("abcdef", [(0, 2), (2, 4), (4, 6)], [(0, 3), (3, 6)]) == ([0, 0, 0], [0, 0], 1)
    # identical tokenisations: one group per token
    assert groups("a b c", [(0, 1), (2, 3), (4, 5)], [(0, 1), (2, 3), (4, 5)]) == ([0, 1, 2], [0, 1, 2], 3)


def test_specials_zero_width_and_padding_are_in_no_group():
    t, s, n = groups("ab", [SPECIAL, (0, 2), SPECIAL, SPECIAL], [SPECIAL, (0, 1), (1, 2), SPECIAL, SPECIAL])
    assert (t, s, n) == ([-1, 0, -1, -1], [-1, 0, 0, -1, -1], 1)


@pytest.mark.parametrize("with_space", [True, False])
def test_sentencepiece_offsets_with_or_without_the_leading_space(with_space):
    text = "Привет  мир"
    mir = (6, 11) if with_space else (8, 11)  # "▁мир" may cover the space before it (here the 2nd one)
    t, s, n = groups(text, [SPECIAL, (0, 6), mir, SPECIAL], [SPECIAL, (0, 6), (8, 11), SPECIAL])
    assert (t, s, n) == ([-1, 0, 1, -1], [-1, 0, 1, -1], 2)


def test_leading_space_does_not_count_as_a_character_one_side_lacks():
    # a text starting with a space: the teacher's first piece covers it, the student's does not
    assert groups(" Привет мир", [(0, 7), (7, 11)], [(1, 7), (8, 11)]) == ([0, 1], [0, 1], 2)
    # ... and trailing spaces, likewise
    assert groups("мир ", [(0, 4)], [(0, 3)]) == ([0], [0], 1)


def test_a_piece_of_whitespace_only_is_in_no_group():
    # two SentencePiece sides: the student's lone "▁" covers the space inside the teacher's "▁мир"
    assert groups("в мир", [(0, 1), (1, 5)], [(0, 1), (1, 2), (2, 5)]) == ([0, 1], [0, -1, 1], 2)
    # a lone "▁" whose offsets cover only the space, then "2023"
    t, s, n = groups("в 2023", [(0, 1), (1, 2), (2, 6)], [(0, 1), (2, 4), (4, 6)])
    assert (t, s, n) == ([0, -1, 1], [0, 1, 1], 2)
    # at the text start HF gives that "▁" the next piece's offsets: it has no characters of its own
    t, s, n = groups("Ёлка", [SPECIAL, (0, 1), (0, 1), (1, 4), SPECIAL], [SPECIAL, (0, 1), (1, 4), SPECIAL])
    assert (t, s, n) == ([-1, -1, 0, 1, -1], [-1, 0, 1, -1], 2)


def test_unknown_student_token_groups_by_its_offsets():
    text = "Жук сидел"
    t, s, n = groups(text, [SPECIAL, (0, 2), (2, 3), (3, 9), SPECIAL], [SPECIAL, (0, 3), (4, 9), SPECIAL])
    assert (t, s, n) == ([-1, 0, 0, 1, -1], [-1, 0, 1, -1], 2)


def test_groups_only_where_both_sides_cover_when_the_student_truncates_earlier():
    text = "Привет мир всем"
    teacher = [SPECIAL, (0, 6), (6, 10), (10, 15), SPECIAL]
    # the student stopped after "мир": the teacher's "▁всем" has no partner
    assert groups(text, teacher, [SPECIAL, (0, 6), (7, 10), SPECIAL]) == ([-1, 0, 1, -1, -1], [-1, 0, 1, -1], 2)
    # the student stopped inside a teacher token: that token and the student's part of it are dropped
    assert groups(text, teacher, [SPECIAL, (0, 6), (7, 9), SPECIAL]) == ([-1, 0, -1, -1, -1], [-1, 0, -1, -1], 1)


def test_characters_only_one_side_covers_make_no_group():
    # the teacher has a token for "—", the student dropped it
    t, s, n = groups("а — б", [(0, 1), (1, 3), (3, 5)], [(0, 1), (4, 5)])
    assert (t, s, n) == ([0, -1, 1], [0, 1], 2)


def test_teacher_prefix_is_shifted_away():
    prefix = "passage: "
    text = "Привет мир"
    teacher = [SPECIAL, (0, 7), (7, 8), (8, 15), (15, 19), SPECIAL]  # ▁passage : ▁Привет ▁мир
    t, s, n = span_groups(text, teacher, [SPECIAL, (0, 6), (7, 10), SPECIAL], teacher_prefix=len(prefix))
    assert (t.tolist(), s.tolist(), n) == ([-1, -1, -1, 0, 1, -1], [-1, 0, 1, -1], 2)


def test_bad_offsets_are_refused():
    with pytest.raises(ValueError, match="teacher offsets: text 0 position 1 ends at 9, past the text's 3"):
        span_groups("abc", [(0, 1), (1, 9)], [(0, 3)])
    with pytest.raises(ValueError, match=r"student offsets: text 0 position 0 has an invalid span \(2, 1\)"):
        span_groups("abc", [(0, 3)], [(2, 1)])
    with pytest.raises(ValueError, match="2 texts but 1 teacher and 2 student offset rows"):
        batch_span_groups(["a", "b"], [[(0, 1)]], [[(0, 1)], [(0, 1)]], 1, 1)
    with pytest.raises(ValueError, match="teacher offsets of text 0: 3 positions exceed the padded length 2"):
        batch_span_groups(["abc"], [[(0, 1), (1, 2), (2, 3)]], [[(0, 3)]], 2, 1)


def test_batch_numbers_groups_across_texts_in_order():
    texts = ["ab cd", "xyz"]
    teacher = np.array([[[0, 0], [0, 2], [2, 5], [0, 0]], [[0, 0], [0, 1], [1, 3], [0, 0]]])  # (2, 4, 2)
    student = [[(0, 0), (0, 2), (3, 5), (0, 0)], [(0, 0), (0, 3), (0, 0)]]
    out = batch_span_groups(texts, teacher, student, teacher_len=5, student_len=4)
    assert out["t_group"].tolist() == [[-1, 0, 1, -1, -1], [-1, 2, 2, -1, -1]]
    assert out["s_group"].tolist() == [[-1, 0, 1, -1], [-1, 2, -1, -1]]
    assert int(out["n_groups"]) == 3 and out["group_row"].tolist() == [0, 0, 1]


# ---------------------------------------------------------------- real tokenizers

@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    if not E5_TOKENIZER.exists():
        pytest.skip(f"{E5_TOKENIZER} not present")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("span_tokenizers")
    with gzip.open(E5_TOKENIZER, "rb") as src, open(root / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    teacher = PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"), bos_token="<s>",
                                      eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    chars = sorted({c for text in SENTENCES for c in text if not c.isspace()} - {"Ж"})
    words = ["Привет", "мир", "дела", "Москва", "стол", "##ица", "России", "Ёлка", "снег", "##ом", "книгу"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars, *(f"##{c}" for c in chars)]
    (root / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    # the tokenizers pipeline of a cased BERT (transformers 5's BertTokenizerFast ignores vocab_file)
    backend = Tokenizer(models.WordPiece.from_file(str(root / "vocab.txt"), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    student = BertTokenizerFast(tokenizer_object=backend, do_lower_case=False, unk_token="[UNK]",
                                pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert student.tokenize("Привет, мир") == ["Привет", ",", "мир"]
    return teacher, student


def covered(text, offsets):
    """Non-space character positions each token covers."""
    return [{i for i in range(a, b) if not text[i].isspace()} for a, b in offsets]


def check_groups(text, t_off, s_off, t_group, s_group, n):
    """Every group covers the same characters on both sides, is minimal, and all shared characters are grouped.

    Returns whether one side was cut inside a token of the other (truncation).
    """
    t_chars, s_chars = covered(text, t_off), covered(text, s_off)
    for g in range(n):
        t_members = [i for i, x in enumerate(t_group) if x == g]
        s_members = [i for i, x in enumerate(s_group) if x == g]
        assert t_members and s_members
        t_span = set().union(*(t_chars[i] for i in t_members))
        s_span = set().union(*(s_chars[i] for i in s_members))
        assert t_span == s_span, (text, g, sorted(t_span), sorted(s_span))
        # minimal: every cut inside the group is straddled by one of its tokens
        lo, hi = min(t_span), max(t_span) + 1
        spans = [(min(t_chars[i]), max(t_chars[i]) + 1) for i in t_members] + \
                [(min(s_chars[i]), max(s_chars[i]) + 1) for i in s_members]
        for cut in range(lo + 1, hi):
            assert any(a < cut < b for a, b in spans), (text, g, cut)
    both = set().union(*t_chars) & set().union(*s_chars)
    # one side truncated inside a token of the other: from that token on, nothing is grouped
    upto = min(max(b for _, b in t_off), max(b for _, b in s_off))
    cut = [min(chars, default=a) for chars, (a, b) in zip(t_chars + s_chars, [*t_off, *s_off], strict=True)
           if a < upto < b]
    both = {c for c in both if c < min(cut, default=upto)}
    grouped = set().union(set(), *(t_chars[i] for i, x in enumerate(t_group) if x >= 0))
    assert both <= grouped, (text, sorted(both - grouped))
    # ids in text order
    first = [min(min(t_chars[i]) for i, x in enumerate(t_group) if x == g) for g in range(n)]
    assert first == sorted(first)
    return bool(cut)


def test_real_e5_against_wordpiece_groups_match_characters(tokenizers):
    teacher, student = tokenizers
    n_unk = 0
    for text in SENTENCES:
        t_enc = teacher(text, return_offsets_mapping=True)
        s_enc = student(text, return_offsets_mapping=True)
        n_unk += s_enc["input_ids"].count(student.unk_token_id)
        t_group, s_group, n = span_groups(text, t_enc["offset_mapping"], s_enc["offset_mapping"])
        assert len(t_group) == len(t_enc["input_ids"]) and len(s_group) == len(s_enc["input_ids"])
        assert t_group[0] == t_group[-1] == s_group[0] == s_group[-1] == -1  # <s> </s> [CLS] [SEP]
        assert n >= len(text.split()) - 1  # about one group per word at least
        check_groups(text, t_enc["offset_mapping"], s_enc["offset_mapping"], t_group.tolist(), s_group.tolist(), n)
    assert n_unk == 1  # "Жук", and nothing else


def test_real_tokenizers_prefix_truncation_and_padded_batch(tokenizers):
    teacher, student = tokenizers
    t_enc = teacher(SENTENCES, return_offsets_mapping=True, padding="max_length", max_length=32,
                    return_tensors="np")
    s_enc = student(SENTENCES, return_offsets_mapping=True, padding="max_length", max_length=12, truncation=True,
                    return_tensors="np")
    out = batch_span_groups(SENTENCES, t_enc["offset_mapping"], s_enc["offset_mapping"], 32, 12)
    assert out["t_group"].shape == (len(SENTENCES), 32) and out["s_group"].shape == (len(SENTENCES), 12)
    assert (out["s_group"][s_enc["attention_mask"] == 0] == -1).all()
    base = n_cut = 0
    for row, text in enumerate(SENTENCES):  # the batch equals the texts one by one, numbered on
        t_group, s_group, n = span_groups(text, t_enc["offset_mapping"][row], s_enc["offset_mapping"][row])
        n_cut += check_groups(text, t_enc["offset_mapping"][row].tolist(), s_enc["offset_mapping"][row].tolist(),
                              t_group.tolist(), s_group.tolist(), n)
        assert (out["t_group"][row] == np.where(t_group >= 0, t_group + base, -1)).all()
        assert (out["s_group"][row] == np.where(s_group >= 0, s_group + base, -1)).all()
        assert (out["group_row"][base:base + n] == row).all()
        # the student truncated: no teacher token past the student's last character is grouped
        s_last = s_enc["offset_mapping"][row][:, 1].max()
        assert (t_group[t_enc["offset_mapping"][row][:, 0] >= s_last] == -1).all()
        base += n
    assert int(out["n_groups"]) == base
    assert n_cut >= 1  # a student cut inside a teacher token was exercised
    # the card's "passage: " prefix read by the teacher only gives the same groups
    prefix = "passage: "
    p_enc = teacher([prefix + t for t in SENTENCES], return_offsets_mapping=True, padding="max_length",
                    max_length=40, return_tensors="np")
    with_prefix = batch_span_groups(SENTENCES, p_enc["offset_mapping"], s_enc["offset_mapping"], 40, 12,
                                    teacher_prefix=len(prefix))
    assert (with_prefix["s_group"] == out["s_group"]).all()
    n_prefix = 2  # "▁passage" ":" (the space goes to the next piece)
    assert (p_enc["offset_mapping"][:, 1:1 + n_prefix, 1] <= len(prefix)).all()
    assert (with_prefix["t_group"][:, 1:1 + n_prefix] == -1).all()
    assert (with_prefix["t_group"][:, 1 + n_prefix:32 + n_prefix] == out["t_group"][:, 1:]).all()


# ---------------------------------------------------------------- torch side

def test_pool_groups_by_hand_and_its_gradient():
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2).requires_grad_()
    index = torch.tensor([[0, 0, -1], [2, -1, 2]])
    pooled = pool_groups(hidden, index, 3)
    h = hidden.detach()
    expected = torch.stack([(h[0, 0] + h[0, 1]) / 2, torch.zeros(2), (h[1, 0] + h[1, 2]) / 2])
    assert torch.allclose(pooled, expected)
    pooled.sum().backward()
    assert hidden.grad[:, :, 0].tolist() == [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]
    with pytest.raises(ValueError, match=r"states of shape \(2, 3, 2\) do not match a group index of shape \(2, 2\)"):
        pool_groups(hidden, index[:, :2], 3)
    with pytest.raises(ValueError, match="group index 2 out of range for 2 groups"):
        pool_groups(hidden, index, 2)


def _states(batch, n_layers, width, seed):
    """Teacher states and student states whose group means equal the teacher's (different token counts)."""
    gen = torch.Generator().manual_seed(seed)
    t_group, s_group = torch.as_tensor(batch["t_group"]), torch.as_tensor(batch["s_group"])
    n = int(batch["n_groups"])
    teacher, student = [], []
    for _ in range(n_layers):
        t = torch.randn(*t_group.shape, width, generator=gen)
        means = pool_groups(t, t_group, n)
        s = torch.randn(*s_group.shape, width, generator=gen)
        s[s_group >= 0] = means[s_group[s_group >= 0]]
        teacher.append(t)
        student.append(s)
    return student, teacher


def _identity(width):
    projection = nn.Linear(width, width)
    with torch.no_grad():
        projection.weight.copy_(torch.eye(width))
        projection.bias.zero_()
    return projection


def test_span_hidden_loss_zero_when_states_agree_and_gradient_reaches_the_student():
    batch = batch_span_groups(["Привет мир", "ab cd"], [[(0, 0), (0, 6), (6, 10), (0, 0)], [(0, 2), (2, 5)]],
                              [[(0, 0), (0, 3), (3, 6), (7, 10), (0, 0)], [(0, 1), (1, 2), (3, 5)]], 4, 5)
    assert int(batch["n_groups"]) == 4
    student, teacher = _states(batch, n_layers=3, width=4, seed=0)
    pairs = layer_pairs("average", 2, 2)  # ([0], [0]), ([1], [1]), ([2], [2])
    for kind in ("mse", "cosine"):
        projections = [_identity(4) for _ in pairs]
        loss = span_hidden_loss(student, teacher, batch, pairs, projections, kind)
        assert float(loss.detach()) == pytest.approx(0, abs=1e-6)
    # off by a constant on the student side: the MSE is that constant squared; the gradient reaches the
    # student's grouped positions (not the unmatched ones), the projection, and never the teacher
    student = [(s + 0.5).requires_grad_() for s in student]
    teacher = [t.requires_grad_() for t in teacher]
    projections = [_identity(4) for _ in pairs]
    loss = span_hidden_loss(student, teacher, batch, pairs, projections, "mse")
    assert float(loss.detach()) == pytest.approx(0.25, rel=1e-5)
    loss.backward()
    s_group = torch.as_tensor(batch["s_group"])
    assert (student[1].grad[s_group >= 0].abs().sum(-1) > 0).all()
    assert (student[1].grad[s_group < 0] == 0).all()
    assert projections[0].weight.grad.abs().sum() > 0
    assert all(t.grad is None for t in teacher)


def test_span_hidden_loss_averages_layers_and_pairs_like_hidden_loss():
    batch = batch_span_groups(["abcdef"], [[(0, 3), (3, 6)]], [[(0, 2), (2, 4), (4, 6)]], 2, 3)
    student, teacher = _states(batch, n_layers=3, width=3, seed=1)
    student = [s + k for k, s in enumerate(student)]
    torch.manual_seed(0)
    projections = [nn.Linear(3, 3), nn.Linear(3, 3)]
    pairs = [(0, [1, 2]), ([1, 2], 0)]
    s_index, t_index = torch.as_tensor(batch["s_group"]), torch.as_tensor(batch["t_group"])
    pooled_s = [pool_groups(s, s_index, 1) for s in student]
    pooled_t = [pool_groups(t, t_index, 1) for t in teacher]
    expected = (hidden_loss(projections[0](pooled_s[0]), (pooled_t[1] + pooled_t[2]) / 2, "cosine")
                + hidden_loss(projections[1]((pooled_s[1] + pooled_s[2]) / 2), pooled_t[0], "cosine")) / 2
    got = span_hidden_loss(student, teacher, batch, pairs, projections, "cosine")
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6) and float(got.detach()) > 0.01
    with pytest.raises(ValueError, match="2 layer pairs but 1 projections"):
        span_hidden_loss(student, teacher, batch, pairs, projections[:1])
    with pytest.raises(ValueError, match="--hidden-loss: unknown kind 'l1'"):
        span_hidden_loss(student, teacher, batch, pairs, projections, "l1")
