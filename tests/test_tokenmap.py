"""Teacher-to-student token map on hand-made vocabularies and on the tiny test tokenizers."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from distilrubert.tokenmap import TokenMap, greedy_split

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab(tokens):
    return {t: i for i, t in enumerate(tokens)}


STUDENT = _vocab([*SPECIALS, "при", "##вет", "##ств", "##ие", "п", "##р", "##и", "##в", "##е", "##т", "##ами",
                  "кот", "##ы", "a", "##b", "中"])
TEACHER = _vocab([*SPECIALS, "[unused0]", "[unused1]", "привет", "приветствие", "##ами", "коты", "котЪ", "中",
                  "ab", "##bb", "[", "Ж"])


def test_greedy_split_cases():
    tmap = TokenMap(TEACHER, STUDENT)
    assert tmap.split_teacher_token("привет") == ["при", "##вет"]
    assert tmap.split_teacher_token("приветствие") == ["при", "##вет", "##ств", "##ие"]  # needs four pieces
    assert tmap.split_teacher_token("коты") == ["кот", "##ы"]
    assert tmap.split_teacher_token("##ами") == ["##ами"]  # a continuation stays a continuation
    assert tmap.split_teacher_token("##bb") == ["##b", "##b"]
    assert tmap.split_teacher_token("ab") == ["a", "##b"]
    assert tmap.split_teacher_token("中") == ["中"]  # other scripts work the same way
    assert tmap.split_teacher_token("котЪ") == ["[UNK]"]  # "Ъ" has no student piece: uncoverable
    assert tmap.split_teacher_token("Ж") == ["[UNK]"]
    assert tmap.split_teacher_token("[") == ["[UNK]"]
    # Specials map to themselves, reserved [unused*] entries to [UNK] (never spelled out).
    for special in SPECIALS:
        assert tmap.split_teacher_token(special) == [special]
    assert tmap.split_teacher_token("[unused0]") == ["[UNK]"]
    # A string outside the teacher vocabulary can be split too.
    assert tmap.split_teacher_token("прив") == ["при", "##в"]


def test_three_piece_greedy_is_longest_prefix():
    vocab = {"a", "ab", "abc", "##d", "##de", "##f", "##def"}
    assert greedy_split("abcdef", vocab) == ["abc", "##def"]
    assert greedy_split("abdf", vocab) == ["ab", "##d", "##f"]
    assert greedy_split("abx", vocab) is None  # no piece for "x"
    assert greedy_split("abcdf", vocab) == ["abc", "##d", "##f"]
    assert greedy_split("##dedf", vocab) == ["##de", "##d", "##f"]


def test_matrix_lengths_covered_and_inverse():
    tmap = TokenMap(TEACHER, STUDENT)
    t = TEACHER["приветствие"]
    assert tmap.lengths[t] == 4 and tmap.covered[t]
    row = tmap.teacher_to_student[t]
    assert row[:4].tolist() == [STUDENT[p] for p in ("при", "##вет", "##ств", "##ие")]
    assert (row[4:] == -1).all()
    assert not tmap.covered[TEACHER["котЪ"]] and tmap.teacher_to_student[TEACHER["котЪ"], 0] == STUDENT["[UNK]"]
    assert not tmap.covered[TEACHER["[unused1]"]]
    # Inverse: teacher tokens whose split starts with the student token.
    assert sorted(tmap.teacher_tokens_for("при")) == ["привет", "приветствие"]
    assert tmap.teacher_tokens_for("кот") == ["коты"]
    assert tmap.teacher_tokens_for("[CLS]") == ["[CLS]"]
    assert tmap.teacher_tokens_for("##вет") == []
    assert tmap.teacher_tokens_for("[UNK]") == ["[UNK]"]  # only the real [UNK], not the uncoverable ones
    assert tmap.student_to_teacher[STUDENT["a"]].tolist() == [TEACHER["ab"]]


def test_intersection_and_rewrite():
    tmap = TokenMap(TEACHER, STUDENT)
    pairs = {(tmap.teacher_tokens[t], tmap.student_tokens[s]) for t, s in tmap.intersection.tolist()}
    assert pairs == {(s, s) for s in [*SPECIALS, "##ами", "中"]}
    ids, owner = tmap.rewrite([TEACHER["[CLS]"], TEACHER["привет"], TEACHER["##ами"], TEACHER["[SEP]"]])
    assert [tmap.student_tokens[i] for i in ids] == ["[CLS]", "при", "##вет", "##ами", "[SEP]"]
    assert owner.tolist() == [0, 1, 1, 2, 3]
    stats = tmap.stats()
    assert stats["teacher_tokens_unk"] == 5  # [unused0], [unused1], котЪ, [, Ж
    assert stats["max_pieces"] == 4


def test_real_tokenizers(teacher_dir, student_vocab_dir):
    t_tok = AutoTokenizer.from_pretrained(teacher_dir)
    s_tok = AutoTokenizer.from_pretrained(student_vocab_dir)
    tmap = TokenMap.from_tokenizers(t_tok, s_tok)
    assert tmap.teacher_to_student.shape[0] == len(t_tok.get_vocab())
    # Every covered teacher token is spelled exactly by its pieces.
    for t_id in np.flatnonzero(tmap.covered):
        token = tmap.teacher_tokens[t_id]
        if token in t_tok.all_special_tokens:
            continue
        pieces = tmap.split_teacher_token(token)
        joined = "".join(p[2:] if i or p.startswith("##") else p for i, p in enumerate(pieces))
        assert joined == token.removeprefix("##"), (token, pieces)
    assert tmap.stats()["teacher_tokens_covered"] > 0.9 * len(t_tok.get_vocab()) - 10
