"""Data pipeline: dual tokenisation limits, the on-disk cache, masking, length-grouped batches."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distilrubert import data
from distilrubert.data import (
    build_sequences,
    length_grouped_batches,
    mask_tokens,
    smoothed_token_probs,
    split_train_valid,
)


@pytest.fixture
def tokenizers(teacher_dir, student_vocab_dir):
    from transformers import AutoTokenizer

    from distilrubert.tokenmap import TokenMap

    teacher = AutoTokenizer.from_pretrained(str(teacher_dir))
    student = AutoTokenizer.from_pretrained(str(student_vocab_dir))
    return teacher, student, TokenMap.from_tokenizers(teacher, student)


def test_sequences_respect_max_length_for_both_tokenisations(tmp_path, tiny_corpus, tokenizers):
    teacher, student, tmap = tokenizers
    long_doc = tmp_path / "long.jsonl"
    long_doc.write_text(tiny_corpus.read_text(encoding="utf-8").replace("\"}\n{\"text\": \"", " ", 30),
                        encoding="utf-8")
    store = build_sequences([long_doc], student, teacher, tmap, max_length=24, cache_root=tmp_path / "cache",
                            progress=False)
    assert len(store) > 5
    for i in range(len(store)):
        s_ids, t_ids = store.student_ids(i), store.teacher_ids(i)
        assert len(s_ids) <= 24 and len(t_ids) <= 24
        assert s_ids[0] == student.cls_token_id and s_ids[-1] == student.sep_token_id
        assert t_ids[0] == teacher.cls_token_id and t_ids[-1] == teacher.sep_token_id
        assert int(tmap.lengths[t_ids].sum()) <= 24  # the rewritten sequence of `reduce` fits too
    # The two tokenisations of a sequence cover the same text.
    def letters(text: str) -> str:  # characters one vocabulary lacks decode as [UNK]
        return "".join(c for c in text.replace("[UNK]", "") if c.isalpha())

    for i in range(len(store)):
        teacher_text = teacher.decode(store.teacher_ids(i)[1:-1])
        assert letters(teacher_text) == letters(student.decode(store.student_ids(i)[1:-1]))


def test_second_build_reads_the_cache(tmp_path, tiny_corpus, tokenizers, monkeypatch):
    teacher, student, tmap = tokenizers
    first = build_sequences([tiny_corpus], student, teacher, tmap, max_length=64, cache_root=tmp_path,
                            progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenised")

    monkeypatch.setattr(data, "_encode", fail)
    second = build_sequences([tiny_corpus], student, teacher, tmap, max_length=64, cache_root=tmp_path,
                             progress=False)
    assert second.path == first.path and len(second) == len(first) == 200
    assert np.array_equal(second.student_ids(7), first.student_ids(7))


def test_mostly_unknown_sequences_are_dropped(tmp_path, tokenizers):
    teacher, student, tmap = tokenizers
    corpus = tmp_path / "c.txt"
    corpus.write_text("Привет, как дела?\n中中中 中中 中中中中\n", encoding="utf-8")
    store = build_sequences([corpus], student, teacher, tmap, max_length=64, cache_root=tmp_path / "cache",
                            progress=False)
    assert len(store) == 1 and store.report["dropped_unk"] == 1


def test_masking_is_seeded_smoothed_and_80_10_10():
    vocab = 50
    counts = np.arange(vocab) + 1
    probs = smoothed_token_probs(counts, special_ids=[0, 1, 2], smoothing=0.7)
    assert probs[0] == 0 and probs[3] > probs[40]  # rare tokens are more likely to be chosen
    rng_ids = np.random.default_rng(0).integers(3, vocab, size=(64, 100))
    rng_ids[:, 0] = 1  # [CLS]-like special token: never masked
    attention = np.ones_like(rng_ids)
    attention[:, 90:] = 0  # padding: never masked
    masked, labels = mask_tokens(rng_ids, attention, probs, np.random.default_rng(5), mask_id=2,
                                 random_ids=np.arange(3, vocab))
    chosen = labels != -100
    maskable = 64 * 89
    assert chosen.sum() == int(np.ceil(0.15 * maskable))
    assert not chosen[:, 0].any() and not chosen[:, 90:].any()
    assert np.array_equal(labels[chosen], rng_ids[chosen])
    share_mask = (masked[chosen] == 2).mean()
    share_same = (masked[chosen] == rng_ids[chosen]).mean()
    assert 0.75 < share_mask < 0.85 and 0.05 < share_same < 0.16
    again, labels2 = mask_tokens(rng_ids, attention, probs, np.random.default_rng(5), 2, np.arange(3, vocab))
    assert np.array_equal(again, masked) and np.array_equal(labels2, labels)


def test_length_grouped_batches_cover_everything_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 128, size=1000)
    indices = np.arange(1000)
    batches = length_grouped_batches(lengths, indices, batch_size=10, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10  # random batches would spread by ~100
    assert all(np.array_equal(a, b) for a, b in zip(batches, length_grouped_batches(lengths, indices, 10, 1, 0),
                                                   strict=True))
    assert not np.array_equal(np.concatenate(batches),
                              np.concatenate(length_grouped_batches(lengths, indices, 10, 1, 1)))


def test_split_train_valid_takes_the_last_sequences():
    train, valid = split_train_valid(1000, 0.01, 5)
    assert valid.tolist() == [995, 996, 997, 998, 999] and len(train) == 995
    assert len(split_train_valid(1, 0.5, 10)[1]) == 0


def _word_masking(tokens: list[str]) -> data.WordMasking:
    continuation = np.array([t.startswith("##") for t in tokens])
    special = np.array([t.startswith("[") for t in tokens])
    return data.WordMasking(continuation, special, tokens.index("[MASK]"), np.flatnonzero(~special))


def test_word_ids_follow_wordpiece_continuations():
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "при", "##вет", "мир", ","]
    ids = np.array([1, 4, 5, 7, 6, 2])  # [CLS] при ##вет , мир [SEP]
    got = data.word_ids(ids, np.array([t.startswith("##") for t in tokens]), np.array([t[0] == "[" for t in tokens]))
    assert got.tolist() == [-1, 0, 0, 1, 2, -1]


def test_mask_same_words_masks_whole_words_on_both_sides():
    s_tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "при", "##вет", "мир", ",", "!"]
    t_tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "привет", "ми", "##р", ",", "!"]
    student, teacher = _word_masking(s_tokens), _word_masking(t_tokens)
    s_ids = np.array([1, 4, 5, 7, 6, 8, 2])  # [CLS] при ##вет , мир ! [SEP]: 4 words
    t_ids = np.array([1, 4, 7, 5, 6, 8, 2])  # [CLS] привет , ми ##р ! [SEP]
    seen_words = set()
    for seed in range(40):
        s_m, labels, t_m, t_chosen, paired = data.mask_same_words(s_ids, t_ids, student, teacher,
                                                                  np.random.default_rng(seed), 0.5)
        assert paired
        s_words = data.word_ids(s_ids, student.continuation, student.special)
        t_words = data.word_ids(t_ids, teacher.continuation, teacher.special)
        chosen = set(s_words[labels != -100].tolist())
        assert len(chosen) == 2 and -1 not in chosen  # ceil(0.5 * 4) words, never a special token
        assert chosen == set(t_words[t_chosen].tolist())  # the same words on both sides
        # Whole words: every piece of a chosen word is labelled, nothing else is.
        assert ((labels != -100) == np.isin(s_words, list(chosen))).all()
        assert (labels[labels != -100] == s_ids[labels != -100]).all()
        for word in chosen:  # one decision per word, shared: [MASK] on one side iff on the other
            s_masked = (s_m[s_words == word] == student.mask_id)
            t_masked = (t_m[t_words == word] == teacher.mask_id)
            assert s_masked.all() == t_masked.all()
        assert (s_m[labels == -100] == s_ids[labels == -100]).all() and (t_m[~t_chosen] == t_ids[~t_chosen]).all()
        seen_words |= chosen
    assert seen_words == {0, 1, 2, 3}


def test_mask_same_words_masks_only_the_student_when_words_differ():
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##c"]
    masking = _word_masking(tokens)
    _, labels, t_m, t_chosen, paired = data.mask_same_words(
        np.array([1, 4, 5, 2]), np.array([1, 4, 5, 4, 2]), masking, masking, np.random.default_rng(0), 0.5)
    assert not paired and not t_chosen.any() and (labels != -100).any()
    assert t_m.tolist() == [1, 4, 5, 4, 2]


def test_unknown_word_counts_as_a_word_for_pairing():
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##b"]
    masking = _word_masking(tokens)
    masking.special[1] = False  # as word_masking() does for [UNK]
    s_ids, t_ids = np.array([2, 1, 5, 3]), np.array([2, 5, 6, 5, 3])  # [UNK] a / ab a
    *_, paired = data.mask_same_words(s_ids, t_ids, masking, masking, np.random.default_rng(0), 0.5)
    assert paired


def test_a_failed_build_leaves_nothing_and_killed_builds_are_swept(tmp_path, tokenizers):
    import subprocess

    from distilrubert.corpus import CorpusError

    teacher, student, tmap = tokenizers
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Привет"}\n{"text": \n', encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: invalid JSON"):
        build_sequences([bad], student, teacher, tmap, max_length=64, cache_root=cache, progress=False)
    assert list(cache.iterdir()) == []
    # What a SIGKILLed build leaves (its process is gone), and one a live process is still writing.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cache / f".abc.partial-{dead.pid}").mkdir()
    (cache / f".units-abc.partial-{dead.pid}").mkdir()
    (cache / f".def.partial-{os.getppid()}").mkdir()
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "Привет, как дела?"}\n', encoding="utf-8")
    build_sequences([good], student, teacher, tmap, max_length=64, cache_root=cache, progress=False)
    left = sorted(p.name for p in cache.iterdir() if p.name.startswith("."))
    assert left == [f".def.partial-{os.getppid()}"]
