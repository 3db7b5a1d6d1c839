"""Teacher-to-student token map on hand-made vocabularies and on the tiny test tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from distilrubert.tokenmap import (
    TokenMap,
    bytes_to_unicode,
    detect_family,
    detect_family_from_vocab,
    greedy_split,
    splits_punctuation,
)

from .families import byte_level_tokenizer, byte_token, sentencepiece_tokenizer

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


# --- teachers of other tokenizer families: SentencePiece (▁ word starts) and byte-level BPE (Ġ)

SP_TEACHER = _vocab(["<s>", "<pad>", "</s>", "<unk>", "▁", "▁привет", "ами", "вет", "▁коты", "▁котЪ", "▁кот",
                     "кот", "bb", "▁中", "▁кот▁a", "▁▁", "<mask>"])


def test_sentencepiece_word_starts_continuations_and_uncovered():
    tmap = TokenMap(SP_TEACHER, STUDENT)
    assert tmap.family == "sentencepiece"  # detected from the ▁ markers
    assert tmap.split_teacher_token("▁привет") == ["при", "##вет"]  # word start: first piece word-initial
    assert tmap.split_teacher_token("ами") == ["##ами"]  # continuation: only ## pieces
    assert tmap.split_teacher_token("вет") == ["##вет"]
    assert tmap.split_teacher_token("bb") == ["##b", "##b"]
    assert tmap.split_teacher_token("▁коты") == ["кот", "##ы"]
    assert tmap.split_teacher_token("▁кот▁a") == ["кот", "a"]  # a word boundary inside: two words
    assert tmap.split_teacher_token("▁приветствие") == ["при", "##вет", "##ств", "##ие"]  # not in the vocab
    for uncovered in ("▁котЪ", "кот", "▁", "▁▁"):  # Ъ missing; no "##к"; bare space markers hold no text
        assert tmap.split_teacher_token(uncovered) == ["[UNK]"], uncovered
        assert not tmap.covered[SP_TEACHER[uncovered]]
    assert tmap.word_start[SP_TEACHER["▁привет"]] and not tmap.word_start[SP_TEACHER["ами"]]
    assert tmap.covered[SP_TEACHER["▁привет"]] and tmap.lengths[SP_TEACHER["▁привет"]] == 2


def test_sentencepiece_specials_by_role_inverse_and_intersection():
    tmap = TokenMap(SP_TEACHER, STUDENT)
    roles = {"<s>": "[CLS]", "</s>": "[SEP]", "<pad>": "[PAD]", "<unk>": "[UNK]", "<mask>": "[MASK]"}
    for teacher_token, student_token in roles.items():
        assert tmap.split_teacher_token(teacher_token) == [student_token]
        assert tmap.covered[SP_TEACHER[teacher_token]]
    assert tmap.teacher_tokens_for("[CLS]") == ["<s>"]
    assert tmap.teacher_tokens_for("[UNK]") == ["<unk>"]  # not the uncovered "▁" / "▁котЪ"
    assert set(tmap.teacher_tokens_for("кот")) == {"▁кот", "▁кот▁a", "▁коты"}
    assert tmap.teacher_tokens_for("##ами") == ["ами"]
    pairs = {(tmap.teacher_tokens[t], tmap.student_tokens[s]) for t, s in tmap.intersection.tolist()}
    # Same surface and same word-start flag; "кот" (a continuation) is not the student's word-initial "кот".
    assert pairs == {*roles.items(), ("ами", "##ами"), ("вет", "##вет"), ("▁кот", "кот"), ("▁中", "中")}
    ids, owner = tmap.rewrite([SP_TEACHER[t] for t in ("<s>", "▁привет", "ами", "</s>")])
    assert [tmap.student_tokens[i] for i in ids] == ["[CLS]", "при", "##вет", "##ами", "[SEP]"]
    assert owner.tolist() == [0, 1, 1, 2, 3]


BL_TEACHER = _vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>", byte_token(" привет"), byte_token("ами"),
                     byte_token(" котЪ"), byte_token(" "), byte_token("п")[:1], byte_token(" кот"),
                     byte_token("\n"), byte_token("中"), byte_token(" 中"), "ab"])


def test_byte_level_tokens_are_decoded_bytes():
    tmap = TokenMap(BL_TEACHER, STUDENT)
    assert tmap.family == "byte-level"
    assert byte_token(" привет") == "ĠÐ¿ÑĢÐ¸Ð²ÐµÑĤ"  # the notation a GPT-2 / RoBERTa vocabulary uses
    assert tmap.split_teacher_token(byte_token(" привет")) == ["при", "##вет"]
    assert tmap.split_teacher_token(byte_token("ами")) == ["##ами"]
    assert tmap.split_teacher_token(byte_token(" 中")) == ["中"]
    assert tmap.split_teacher_token("ab") == ["[UNK]"]  # a continuation "ab": the student has no "##a"
    # "Ð" is the first byte of "п": not text on its own; Ъ, a newline, "##中" and a bare space: no pieces.
    for uncovered in (byte_token("п")[:1], byte_token(" котЪ"), byte_token("\n"), byte_token("中"), byte_token(" ")):
        assert not tmap.covered[BL_TEACHER[uncovered]], uncovered
    for special, role in (("<s>", "[CLS]"), ("</s>", "[SEP]"), ("<pad>", "[PAD]"), ("<mask>", "[MASK]")):
        assert tmap.split_teacher_token(special) == [role]
    pairs = {(tmap.teacher_tokens[t], tmap.student_tokens[s]) for t, s in tmap.intersection.tolist()}
    assert (byte_token(" кот"), "кот") in pairs and (byte_token("ами"), "##ами") in pairs
    assert (byte_token(" привет"), "при") not in pairs


def test_family_detection_and_override(teacher_dir):
    assert detect_family_from_vocab(SP_TEACHER) == "sentencepiece"
    assert detect_family_from_vocab(BL_TEACHER) == "byte-level"
    assert detect_family_from_vocab(TEACHER) == "wordpiece"
    assert detect_family(sentencepiece_tokenizer()) == "sentencepiece"  # from the backend's Metaspace
    assert detect_family(byte_level_tokenizer()) == "byte-level"  # from the backend's ByteLevel
    assert detect_family(AutoTokenizer.from_pretrained(teacher_dir)) == "wordpiece"
    # Override: read as WordPiece, "ами" is a word-initial token the student cannot spell.
    assert TokenMap(SP_TEACHER, STUDENT, family="wordpiece").split_teacher_token("ами") == ["[UNK]"]
    assert TokenMap.from_vocabs(SP_TEACHER, STUDENT, family="sentencepiece").split_teacher_token("ами") == ["##ами"]
    with pytest.raises(ValueError, match="unknown tokenizer family 'spm'"):
        TokenMap(SP_TEACHER, STUDENT, family="spm")


def test_punctuation_is_a_word_of_its_own_for_a_bert_student():
    """BERT's pre-tokenizer gives a student "," and never "##,": teacher text is spelled the same way."""
    student = _vocab([*SPECIALS, ",", "##,", ".", "при", "##вет", "##ами"])
    teacher = _vocab(["<s>", "</s>", "<pad>", "<unk>", ",", "▁,", "ами,", "▁привет.", ",ами", "▁"])
    tmap = TokenMap(teacher, student)
    assert tmap.split_teacher_token(",") == [","] and tmap.split_teacher_token("▁,") == [","]
    assert tmap.split_teacher_token("ами,") == ["##ами", ","]
    assert tmap.split_teacher_token("▁привет.") == ["при", "##вет", "."]
    assert tmap.split_teacher_token(",ами") == ["[UNK]"]  # after punctuation a word starts: no "ами" piece
    pairs = {(tmap.teacher_tokens[t], tmap.student_tokens[s]) for t, s in tmap.intersection.tolist()}
    # One teacher token per student token: "▁," (flags agree) wins over ",".
    assert {p for p in pairs if p[1] in (",", "##,")} == {("▁,", ",")}
    assert len({s for _, s in tmap.intersection.tolist()}) == len(tmap.intersection)
    assert {t for t in tmap.teacher_tokens_for(",")} == {",", "▁,"}
    # A student whose pre-tokenizer keeps punctuation attached: the plain rule, "," is a continuation.
    plain = TokenMap(teacher, student, split_punctuation=False)
    assert plain.split_teacher_token(",") == ["##,"] and plain.split_teacher_token("ами,") == ["##ами", "##,"]
    pairs = {(plain.teacher_tokens[t], plain.student_tokens[s]) for t, s in plain.intersection.tolist()}
    assert {p for p in pairs if p[1] in (",", "##,")} == {("▁,", ","), (",", "##,")}


def test_student_punctuation_rule_is_read_from_its_pre_tokenizer(student_vocab_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert splits_punctuation(AutoTokenizer.from_pretrained(student_vocab_dir))  # build-vocab: BertPreTokenizer
    backend = Tokenizer(models.WordPiece({"[UNK]": 0, ",": 1, "##,": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    student = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert not splits_punctuation(student)
    tmap = TokenMap.from_tokenizers(_Tok(["<unk>", "▁a", ","], unk="<unk>"), student)
    assert tmap.split_teacher_token(",") == ["##,"]


class _Tok:
    """Just what ``TokenMap.from_tokenizers`` reads from a tokenizer: the vocabulary and the role attributes."""

    def __init__(self, tokens, **roles):
        self._vocab = _vocab(tokens)
        self.all_special_tokens = list(roles.values())
        for role in ("cls", "sep", "pad", "unk", "mask", "bos", "eos"):
            setattr(self, f"{role}_token", roles.get(role))

    def get_vocab(self):
        return dict(self._vocab)


def test_specials_follow_roles_not_names():
    teacher = _Tok(["<|start|>", "<|end|>", "<|blank|>", "<|oov|>", "▁привет", "ами"], bos="<|start|>",
                   eos="<|end|>", pad="<|blank|>", unk="<|oov|>")
    student = _Tok(["<C>", "<S>", "<P>", "<U>", "<M>", "при", "##вет", "##ами"], cls="<C>", sep="<S>", pad="<P>",
                   unk="<U>", mask="<M>")
    tmap = TokenMap.from_tokenizers(teacher, student)
    assert tmap.family == "sentencepiece"
    assert [tmap.split_teacher_token(t) for t in ("<|start|>", "<|end|>", "<|blank|>", "<|oov|>")] == [
        ["<C>"], ["<S>"], ["<P>"], ["<U>"]]
    assert tmap.split_teacher_token("▁привет") == ["при", "##вет"]


def _rejoin(pieces):
    return "".join(p.removeprefix("##") for p in pieces)


def test_real_sentencepiece_and_byte_level_tokenizers(student_vocab_dir):
    s_tok = AutoTokenizer.from_pretrained(student_vocab_dir)
    sp = sentencepiece_tokenizer()
    tmap = TokenMap.from_tokenizers(sp, s_tok)
    assert tmap.family == "sentencepiece"
    assert [tmap.split_teacher_token(t) for t in ("<s>", "</s>", "<pad>", "<unk>", "<mask>")] == [
        ["[CLS]"], ["[SEP]"], ["[PAD]"], ["[UNK]"], ["[MASK]"]]
    texts = [t for t in tmap.teacher_tokens if t not in sp.all_special_tokens and t != "▁"]
    for token in texts:
        pieces = tmap.split_teacher_token(token)
        if pieces != ["[UNK]"]:
            assert _rejoin(pieces) == token.removeprefix("▁"), (token, pieces)
            if token.removeprefix("▁")[0].isalnum():  # punctuation always starts a word for a BERT student
                assert pieces[0].startswith("##") != token.startswith("▁"), (token, pieces)
    covered = sum(tmap.covered[sp.convert_tokens_to_ids(t)] for t in texts)
    assert covered > 0.9 * len(texts)  # the student was built on the same sentences
    assert not tmap.covered[sp.convert_tokens_to_ids("▁")]

    bl = byte_level_tokenizer()
    tmap = TokenMap.from_tokenizers(bl, s_tok)
    assert tmap.family == "byte-level"
    invalid = 0
    for token, t_id in bl.get_vocab().items():
        if token in bl.all_special_tokens:
            continue
        raw = bytes(_BYTES[c] for c in token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            invalid += 1
            assert not tmap.covered[t_id], token
            continue
        if tmap.covered[t_id]:
            assert _rejoin(tmap.split_teacher_token(token)) == text.strip(), (token, text)
    assert invalid > 50  # the 256 single bytes include every lone UTF-8 lead/continuation byte
    privet = bl.convert_tokens_to_ids(bl.tokenize("Привет"))
    pieces = [tmap.student_tokens[i] for i in tmap.rewrite(privet)[0]]
    # Token by token, the rewrite spells the word: one word-initial piece, then continuations.
    assert _rejoin(pieces) == "Привет" and [p.startswith("##") for p in pieces] == [False] + [True] * (len(pieces) - 1)


_BYTES = {c: b for b, c in bytes_to_unicode().items()}
