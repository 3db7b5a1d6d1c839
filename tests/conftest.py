"""Shared fixtures: a tiny corpus, a tiny BERT teacher and a tiny student vocabulary, built once.

Everything is made inside the tests (no network, no hub): a WordPiece teacher tokenizer with
``[unused*]`` tokens trained on a few dozen Russian sentences, a 2-layer 32-hidden ``BertForMaskedLM``
teacher, and a student vocabulary built by ``distilrubert build-vocab`` on the same sentences.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory):
    """Encoder's on-first-use ONNX exports go to a directory of the test session, not ~/.cache."""
    os.environ["DISTILRUBERT_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SENTENCES = [
    "Привет, как дела? Всё хорошо, спасибо!",
    "Ёжик в тумане — мой любимый мультфильм.",
    "Съёмка фильма началась в понедельник утром.",
    "Йогурт и щи на обед, а на ужин — каша.",
    "Мы пошли гулять в парк, хотя шёл дождь.",
    "Компьютер не включается, что делать?",
    "Не откладывай на завтра то, что можно сделать сегодня.",
    "Москва — столица России, а Санкт-Петербург — северная столица.",
    "Она прочитала книгу за один вечер.",
    "Кошка спит на подоконнике и смотрит на птиц.",
    "Программист написал новую функцию для сервера.",
    "Погода сегодня отличная, солнце светит ярко.",
    "Давай встретимся у метро в семь часов.",
    "Этот телефон работает быстрее, чем старый.",
    "Я люблю читать детективы и фантастику.",
    "Учитель объяснил задачу ещё раз.",
    "В магазине закончился хлеб и молоко.",
    "Поезд прибывает на второй путь через пять минут.",
    "Мама приготовила вкусный борщ со сметаной.",
    "Футбольная команда выиграла чемпионат страны.",
    "Пакет dpkg устанавливает программы в Debian.",
    "Нажмите кнопку «Сохранить», чтобы записать документ.",
    "Таблица содержит формулы и диаграммы.",
    "Ошибка: файл не найден, проверьте путь.",
    "Разработчики выпустили обновление системы безопасности.",
    "Он сказал, что придёт завтра, но не пришёл.",
    "Жизнь — это то, что происходит, пока ты строишь планы.",
    "Деньги не пахнут, а счастье не купишь.",
    "Если долго смотреть в бездну, бездна посмотрит на тебя.",
    "Зачем ты это сделал? Не знаю, так получилось.",
    "Спокойной ночи, сладких снов!",
    "Ну что, поехали? Поехали!",
    "Здравствуйте, меня зовут Анна, я врач.",
    "Сколько стоит этот билет до Казани?",
    "Извините, вы не подскажете, где находится библиотека?",
    "Хорошо смеётся тот, кто смеётся последним.",
    "Вчера мы смотрели новый сериал про космос.",
    "Собака лает, караван идёт.",
    "Объявление: продаётся велосипед, почти новый.",
    "Сегодня 25 декабря 2023 года, температура −5 °C.",
]


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A JSONL corpus of the sentences above, repeated with variations so trainers find merges."""
    texts = []
    for i in range(5):
        texts += [f"{s} ({i})" if i else s for s in SENTENCES]
    return _write_jsonl(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", texts)


@pytest.fixture(scope="session")
def _teacher_dir(tmp_path_factory, tiny_corpus) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(10)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials, min_frequency=1,
                                        show_progress=False)
    tok.train_from_iterator(SENTENCES * 3 + ["English words and 中文 text"], trainer)
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    hf_tok = BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, strip_accents=False,
                               unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                               mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=vocab["[PAD]"])
    model = BertForMaskedLM(config)
    out = tmp_path_factory.mktemp("teacher") / "bert-tiny-teacher"
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


@pytest.fixture
def teacher_dir(_teacher_dir, tmp_path) -> Path:
    """A fresh copy of the tiny BERT teacher directory for one test."""
    return Path(shutil.copytree(_teacher_dir, tmp_path / "teacher"))


@pytest.fixture(scope="session")
def _student_vocab_dir(tmp_path_factory, tiny_corpus) -> Path:
    from distilrubert.vocab import BuildVocabConfig, build_vocab

    out = tmp_path_factory.mktemp("vocab") / "v300"
    build_vocab(BuildVocabConfig(corpus=[str(tiny_corpus)], output=str(out), vocab_size=300, min_frequency=1,
                                 heldout_fraction=0.1))
    return out


@pytest.fixture
def student_vocab_dir(_student_vocab_dir, tmp_path) -> Path:
    """A fresh copy of the tiny student vocabulary directory (300 tokens) for one test."""
    return Path(shutil.copytree(_student_vocab_dir, tmp_path / "vocab"))


# --- a tiny DistilBERT student with an MLM head, its ONNX export, a sentence file (tasks, inference)
@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory, _teacher_dir, _student_vocab_dir) -> Path:
    """A tiny DistilBERT student (2 x 16, 300-token vocab, 128 positions) initialised from the tiny teacher.

    Session-scoped and read-only: tests that write into a model directory use ``tiny_student`` (a copy).
    """
    from distilrubert.student_init import InitStudentConfig, init_student

    out = tmp_path_factory.mktemp("student") / "tiny-student"
    init_student(InitStudentConfig(teacher=str(_teacher_dir), vocab=str(_student_vocab_dir), output=str(out),
                                   dim=16, heads=2, ffn=40, layers=2, max_position_embeddings=128))
    return out


@pytest.fixture
def tiny_student(tiny_student_dir, tmp_path) -> Path:
    """A fresh copy of a 2-layer, 16-hidden DistilBertForMaskedLM student with its tokenizer."""
    return Path(shutil.copytree(tiny_student_dir, tmp_path / "student"))


@pytest.fixture(scope="session")
def _tiny_onnx(tiny_student_dir, tmp_path_factory) -> dict:
    from distilrubert.export import export_encoder_onnx

    return export_encoder_onnx(tiny_student_dir, tmp_path_factory.mktemp("onnx") / "tiny-onnx", quantize=True)


@pytest.fixture
def sentence_file(tmp_path) -> Path:
    """The test sentences, one a line (a stand-in for encodechka's sentences_sample.txt)."""
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path
