"""Readers of the task formats: good files in each exact format, malformed ones with file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distilrubert.tasks.readers import (
    DataFormatError,
    TokenExample,
    factru_to_iob2,
    read_classification,
    read_conll,
    read_factru_iob2,
    read_paraphrase,
    read_squad,
    split_examples,
    write_conll,
)

DATA = Path(__file__).parent / "data" / "tasks"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- classification CSV / JSONL

def test_rusentiment_label_text_csv():
    examples = read_classification(DATA / "rusentiment.csv")
    assert [e.label for e in examples] == ["positive", "negative", "neutral", "skip", "speech"]
    assert examples[0].text == "Отличный день, всё получилось!"
    assert examples[0].text_pair is None


def test_sentirueval_csv_with_multiline_text():
    examples = read_classification(DATA / "sentirueval.csv")
    assert [e.label for e in examples] == ["-1", "1", "0"]
    assert examples[2].text == "— Гоги, я вчера на Билайн перешёл!\n— Ва, зачем?"


def test_generic_pair_jsonl(tmp_path):
    path = _write(tmp_path, "pairs.jsonl", '{"text": "а", "text_pair": "б", "label": 1}\n\n'
                  '{"text": "в", "text_pair": "г", "label": 0}\n')
    examples = read_classification(path, pairs=True)
    assert [(e.text, e.text_pair, e.label) for e in examples] == [("а", "б", "1"), ("в", "г", "0")]


@pytest.mark.parametrize("content, line, words", [
    ("label,text\npositive,хорошо\n,плохо\n", 3, "empty 'label'"),
    ("label,text\npositive,хорошо\nneutral,\n", 3, "empty 'text'"),
    ("label,text\npositive,хорошо,лишнее\n", 2, "fields"),
    ("name,body\nx,y\n", 1, "no text column"),
])
def test_classification_csv_errors_name_file_and_line(tmp_path, content, line, words):
    path = _write(tmp_path, "bad.csv", content)
    with pytest.raises(DataFormatError, match=rf"bad\.csv:{line}: .*{words}"):
        read_classification(path)


def test_classification_line_numbers_count_multiline_rows(tmp_path):
    path = _write(tmp_path, "bad.csv", 'label,text\npositive,"две\nстроки"\n,пусто\n')
    with pytest.raises(DataFormatError, match=r"bad\.csv:4: empty 'label'"):
        read_classification(path)


def test_jsonl_errors(tmp_path):
    path = _write(tmp_path, "bad.jsonl", '{"text": "а", "label": 1}\n{"text": "б", "label": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: invalid JSON"):
        read_classification(path)
    path = _write(tmp_path, "pairs.jsonl", '{"text": "а", "label": 1}\n')
    with pytest.raises(DataFormatError, match="second text"):
        read_classification(path, pairs=True)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_classification(tmp_path / "nope.csv")


# ---------------------------------------------------------------- paraphrase

def test_paraphraser_xml_binary_and_three_classes():
    binary = read_paraphrase(DATA / "paraphraser.xml")
    assert [e.label for e in binary] == ["paraphrase", "not_paraphrase", "paraphrase"]
    assert binary[0].text == "Полицейским разрешат стрелять на поражение"
    assert binary[0].text_pair == "Полиции разрешат стрелять без предупреждения"
    assert [e.label for e in read_paraphrase(DATA / "paraphraser.xml", scheme="three")] == ["0", "-1", "1"]


def test_para_gold_csv():
    examples = read_paraphrase(DATA / "para_gold.csv", scheme="three")
    assert [e.label for e in examples] == ["-1", "0", "1"]
    assert examples[1].text == '"Гоголь-центр" покажет видеозапись скандального спектакля "Тангейзер"'


def test_paraphraser_xml_errors_name_line(tmp_path):
    xml = (DATA / "paraphraser.xml").read_text(encoding="utf-8")
    bad_class = xml.replace('<value name="class">-1</value>', '<value name="class">2</value>')
    with pytest.raises(DataFormatError, match=r"bad\.xml:16: class '2'"):
        read_paraphrase(_write(tmp_path, "bad.xml", bad_class))
    missing = xml.replace('<value name="text_2">Медведев встретился с Путиным</value>', "")
    with pytest.raises(DataFormatError, match=r"bad\.xml:25: missing or empty 'text_2'"):
        read_paraphrase(_write(tmp_path, "bad.xml", missing))
    broken = xml.replace("</paraphrase>\n<paraphrase>", "</paraphrase>\n<paraphrase", 1)
    with pytest.raises(DataFormatError, match=r"bad\.xml:\d+: invalid XML"):
        read_paraphrase(_write(tmp_path, "bad.xml", broken))


def test_para_csv_bad_class(tmp_path):
    path = _write(tmp_path, "p.csv", "id,id_1,id_2,text_1,text_2,class\n1,2,3,а,б,-1\n2,3,4,в,г,да\n")
    with pytest.raises(DataFormatError, match=r"p\.csv:3: class 'да'"):
        read_paraphrase(path)


# ---------------------------------------------------------------- CoNLL

def test_conll_tab_and_space_separated_with_docstart():
    examples = read_conll(DATA / "collection3.conll")
    assert examples[0] == TokenExample(["Владимир", "Путин", "посетил", "Казань", "."],
                                       ["B-PER", "I-PER", "O", "B-LOC", "O"])
    assert examples[1].tokens == ["Компания", "Газпром", "снизила", "цены"]
    assert examples[1].tags == ["B-ORG", "I-ORG", "O", "O"]  # last column is the tag
    assert len(examples) == 2


@pytest.mark.parametrize("content, line, words", [
    ("Путин\tB-PER\nприехал\n", 2, "expected 'token<TAB>tag'"),
    ("Путин\tB-PER\nприехал\tX\n", 2, "not IOB2"),
    ("Путин\tO\nВладимирович\tI-PER\n", 2, "I-PER follows O"),
    ("Путин\tB-PER\nГазпром\tI-ORG\n", 2, "I-ORG follows B-PER"),
])
def test_conll_errors(tmp_path, content, line, words):
    path = _write(tmp_path, "bad.conll", content)
    with pytest.raises(DataFormatError, match=rf"bad\.conll:{line}: .*{words}"):
        read_conll(path)


def test_conll_roundtrip(tmp_path):
    examples = read_conll(DATA / "collection3.conll")
    write_conll(examples, tmp_path / "out.conll")
    assert read_conll(tmp_path / "out.conll") == examples


# ---------------------------------------------------------------- factru -> IOB2

def test_factru_to_iob2_maps_types_and_splits_sentences():
    texts = read_factru_iob2(DATA / "factru.json")
    first = texts[0]
    assert [s.tokens for s in first] == [
        ["Владимир", "Путин", "посетил", "Казань", "."],
        ["«", "Газпром", "»", "снизил", "цены", "."],
        ["Мэр", "Москвы", "доволен", "."],
    ]
    assert first[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    assert first[1].tags == ["O", "B-ORG", "O", "O", "O", "O"]  # Project dropped by default
    assert first[2].tags == ["O", "B-LOC", "O", "O"]  # LocOrg -> LOC
    assert texts[1][0].tags == ["O", "O", "O"]


def test_factru_project_as_misc_and_no_split_inside_entity():
    texts = read_factru_iob2(DATA / "factru.json", project="misc")
    assert texts[0][1].tags == ["O", "B-ORG", "O", "O", "B-MISC", "O"]
    text = "Ул. Ленина. Дом 5"
    # "Ул. Ленина" is one Location: the full stop after "Ул" must not end the sentence inside it.
    sentences = factru_to_iob2(text, [["Location", 0, 10]])
    assert sentences[0].tokens[:4] == ["Ул", ".", "Ленина", "."]
    assert sentences[0].tags[:3] == ["B-LOC", "I-LOC", "I-LOC"]


def test_factru_max_words_cut_restarts_entity_with_b():
    text = "Аа Бб Вв Гг Дд Ее Жж Зз Ии Кк"
    sentences = factru_to_iob2(text, [["Org", 0, len(text)]], max_words=8)
    assert [len(s.tokens) for s in sentences] == [8, 2]
    assert sentences[1].tags == ["B-ORG", "I-ORG"]


@pytest.mark.parametrize("labels, words", [
    ([["Animal", 0, 3]], "unknown entity type 'Animal'"),
    ([["Person", 5, 500]], "span 5..500 is outside the text"),
    ([["Person", 0]], r"expected \[type, start, end\]"),
])
def test_factru_errors_name_file_text_and_entry(tmp_path, labels, words):
    path = _write(tmp_path, "f.json", json.dumps({"texts": ["Иван пришёл.", "Текст."], "labels": [[], labels]},
                                                  ensure_ascii=False))
    with pytest.raises(DataFormatError, match=rf"f\.json: texts\[1\] labels entry 0: {words}"):
        read_factru_iob2(path)


def test_factru_structure_errors(tmp_path):
    with pytest.raises(DataFormatError, match="2 texts but 1 label lists"):
        read_factru_iob2(_write(tmp_path, "f.json", '{"texts": ["а", "б"], "labels": [[]]}'))
    with pytest.raises(DataFormatError, match=r"f\.json:1: invalid JSON"):
        read_factru_iob2(_write(tmp_path, "f.json", '{"texts": ['))


# ---------------------------------------------------------------- SQuAD

def test_squad_reader_multiple_answers_and_fixed_start():
    examples = read_squad(DATA / "sberquad.json")
    assert [e.id for e in examples] == ["q1", "q2"]
    # The file's answer_start 16 is one off: moved to the occurrence of the text (17).
    assert examples[0].answer_starts == [17]
    assert examples[0].context[17:17 + len(examples[0].answers[0])] == "Республики Татарстан"
    assert examples[1].answers == ["Волге", "на Волге"]
    assert examples[1].answer_starts == [54, 51]


def test_squad_errors(tmp_path):
    data = json.loads((DATA / "sberquad.json").read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["text"] = "Днепре"
    path = _write(tmp_path, "s.json", json.dumps(data, ensure_ascii=False))
    with pytest.raises(DataFormatError, match=r"s\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id q2\): answer "
                                              "'Днепре' is not in the context"):
        read_squad(path)
    with pytest.raises(DataFormatError, match="expected SQuAD JSON"):
        read_squad(_write(tmp_path, "s.json", "[]"))


def test_split_examples_is_deterministic_and_disjoint():
    items = list(range(50))
    train, held = split_examples(items, 0.1, seed=3)
    assert len(held) == 5 and sorted(train + held) == items
    assert split_examples(items, 0.1, seed=3) == (train, held)
    with pytest.raises(ValueError, match="--eval-fraction"):
        split_examples(items, 1.5)
