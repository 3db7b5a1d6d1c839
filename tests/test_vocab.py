"""build-vocab: exact size, cased, characters and ## forms, report, AutoTokenizer loading."""

from __future__ import annotations

import collections
import json
import unicodedata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from distilrubert.vocab import (
    SPECIAL_TOKENS,
    BuildVocabConfig,
    build_vocab,
    complete_vocab,
    required_characters,
)

from .conftest import SHARED_DATA

PHRASE = "Ёжик в тумане — йогурт, щи и съёмка!"


def _vocab_lines(directory):
    return (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()


def test_exact_size_specials_first_and_char_forms(student_vocab_dir):
    lines = _vocab_lines(student_vocab_dir)
    assert len(lines) == 300
    assert len(set(lines)) == 300
    assert lines[:5] == list(SPECIAL_TOKENS)
    for ch in "ЁйёщъЙ—":
        assert ch in lines and "##" + ch in lines, ch


def test_loads_with_autotokenizer_and_round_trips(student_vocab_dir):
    tok = AutoTokenizer.from_pretrained(student_vocab_dir)
    assert tok.is_fast
    ids = tok(PHRASE)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.convert_ids_to_tokens(ids)[-1] == "[SEP]"
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == PHRASE.replace(" ", "")
    assert "Ё" in decoded and "й" in decoded  # cased, accents kept
    assert tok.model_max_length == 512
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        assert (student_vocab_dir / name).is_file(), name


def test_nfd_input_tokenises_like_nfc(student_vocab_dir):
    tok = AutoTokenizer.from_pretrained(student_vocab_dir)
    nfd = unicodedata.normalize("NFD", "йогурт и ёжик")
    assert nfd != "йогурт и ёжик"
    assert tok(nfd)["input_ids"] == tok("йогурт и ёжик")["input_ids"]


def test_report_written(student_vocab_dir):
    report = json.loads((student_vocab_dir / "vocab_report.json").read_text(encoding="utf-8"))
    (row,) = report["sizes"]
    assert row["vocab_size"] == 300
    assert 1.0 <= row["fertility"] < 10
    assert 0 <= row["unk_rate"] < 0.05
    assert report["heldout_documents"] > 0
    assert (student_vocab_dir / "vocab_report.md").read_text(encoding="utf-8").startswith("# Vocabulary report")
    run = json.loads((student_vocab_dir / "run.json").read_text(encoding="utf-8"))
    assert run["command"] == "build-vocab" and run["config"]["vocab_size"] == 300
    assert run["versions"]["tokenizers"]


def test_sizes_comparison_and_plot(tiny_corpus, tmp_path):
    out = tmp_path / "v"
    report = build_vocab(BuildVocabConfig(corpus=[str(tiny_corpus)], output=str(out), vocab_size=250,
                                          sizes=[230, 350, 100], min_frequency=1))
    sizes = [r["vocab_size"] for r in report["sizes"]]
    assert sizes == [230, 250, 350]  # 100 is below the required character tokens: skipped
    fert = [r["fertility"] for r in report["sizes"]]
    assert fert[0] >= fert[1] >= fert[2]  # a larger vocabulary never needs more pieces per word here
    assert len(_vocab_lines(out)) == 250
    png = (out / "fertility_vs_size.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_large_size_is_a_clear_error(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="distinct tokens"):
        build_vocab(BuildVocabConfig(corpus=[str(tiny_corpus)], output=str(tmp_path / "v"), vocab_size=50_000))
    assert not (tmp_path / "v").exists()  # nothing half-written


def test_existing_output_is_kept_without_overwrite(tiny_corpus, tmp_path):
    out = tmp_path / "v"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_vocab(BuildVocabConfig(corpus=[str(tiny_corpus)], output=str(out), vocab_size=200))
    assert (out / "keep.txt").read_text() == "x"


def test_required_characters_coverage():
    counts = collections.Counter({"а": 90, "б": 9, "в": 1})
    assert required_characters(counts, 0.9) == ["а"]
    assert required_characters(counts, 0.99) == ["а", "б"]
    assert required_characters(counts, 1.0) == ["а", "б", "в"]


def test_complete_vocab_replaces_last_learned_tokens():
    learned = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "а", "б", "##б", "аб", "ба", "абб"]
    out = complete_vocab(learned, ["а", "б", "в"], 14)
    assert out[:5] == list(SPECIAL_TOKENS)
    assert {"а", "##а", "б", "##б", "в", "##в"} <= set(out)
    assert len(out) == 14 and out[-3:] == ["аб", "ба", "абб"]
    out = complete_vocab(learned, ["а", "б", "в"], 12)
    assert out[-1] == "аб"  # the last-learned merges make room
    with pytest.raises(ValueError, match="smaller than"):
        complete_vocab(learned, ["а", "б", "в"], 8)


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--vocab-size"):
        BuildVocabConfig(corpus=["x"], output="y", vocab_size=3)
    with pytest.raises(ValueError, match="--character-coverage"):
        BuildVocabConfig(corpus=["x"], output="y", character_coverage=0.1)


@pytest.mark.skipif(not (SHARED_DATA / "corpus").is_dir(), reason="../shared/data not present")
def test_real_corpus_5k(tmp_path):
    """The issue's acceptance: 5,000 lines, AutoTokenizer, round trip, held-out UNK rate < 0.5%."""
    corpus = SHARED_DATA / "corpus"
    out = tmp_path / "v5k"
    report = build_vocab(BuildVocabConfig(corpus=[str(corpus / "fortunes_ru.jsonl"), str(corpus / "docs_ru.jsonl")],
                                          output=str(out), vocab_size=5000))
    assert len(_vocab_lines(out)) == 5000
    assert report["sizes"][0]["unk_rate"] < 0.005
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(PHRASE)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == PHRASE.replace(" ", "")


def test_default_corpus_is_the_embedded_sample(tmp_path):
    from distilrubert.corpus import sample_corpus

    out = tmp_path / "v"
    report = build_vocab(BuildVocabConfig(output=str(out), vocab_size=400, max_docs=3000))
    assert report["corpus"] == [str(sample_corpus())]
    assert report["train_documents"] > 2000
    assert len(_vocab_lines(out)) == 400


def test_written_tokenizers_name_a_class_transformers_4_has(student_vocab_dir, tmp_path):
    """transformers 5 writes "TokenizersBackend", which 4.x lacks; what this project writes names a class both have."""
    import shutil

    from transformers import AutoTokenizer

    from distilrubert.vocab import make_tokenizer_portable

    config = json.loads((student_vocab_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(student_vocab_dir))
    assert tok.is_fast and tok.mask_token == "[MASK]"  # (5.x's PreTrainedTokenizerFast is its TokenizersBackend)
    # A directory saved by plain transformers 5 is repaired; a class both versions have is kept.
    other = tmp_path / "other"
    shutil.copytree(student_vocab_dir, other)
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    make_tokenizer_portable(other)
    assert json.loads((other / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    text = "Ёжик в тумане, й"
    assert AutoTokenizer.from_pretrained(str(other))(text)["input_ids"] == tok(text)["input_ids"]
    # Another class is the author's choice and stays (5.x's BertTokenizer would rebuild the normaliser from
    # the config, which is why this project never writes it for its own cased vocabularies).
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "BertTokenizer"}))
    make_tokenizer_portable(other)
    assert json.loads((other / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"


@pytest.mark.parametrize("model", sorted(p.name for p in (Path(__file__).parents[1] / "models").iterdir()
                                          if (p / "tokenizer_config.json").is_file()))
def test_embedded_models_name_a_portable_tokenizer_class(model):
    config = json.loads((Path(__file__).parents[1] / "models" / model / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
