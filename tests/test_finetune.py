"""finetune: label alignment, QA windows and span search, and each task end to end through the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

from distilrubert.cli import main
from distilrubert.tasks.finetune import (
    align_labels,
    answer_questions,
    best_spans,
    qa_eval_features,
    qa_train_features,
)
from distilrubert.tasks.readers import QAExample, read_conll

from .conftest import SENTENCES

DATA = Path(__file__).parent / "data" / "tasks"
QUICK = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--max-length", "64"]


# ---------------------------------------------------------------- mechanics

def test_align_labels_first_piece_and_all_pieces():
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    # [CLS] Влад ##имир Путин по ##сетил Казань [SEP]
    word_ids = [None, 0, 0, 1, 2, 2, 3, None]
    tags = ["B-PER", "I-PER", "O", "B-LOC"]
    assert align_labels(word_ids, tags, label2id) == [-100, 1, -100, 2, 0, -100, 3, -100]
    assert align_labels(word_ids, tags, label2id, all_pieces=True) == [-100, 1, 2, 2, 0, 0, 3, -100]


def test_align_labels_with_real_word_pieces(tiny_student_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    words = ["Достопримечательности", "Санкт-Петербурга"]
    enc = tokenizer(words, is_split_into_words=True)
    labels = align_labels(enc.word_ids(), ["O", "B-LOC"], {"O": 0, "B-LOC": 1, "I-LOC": 2})
    pieces = enc.word_ids()
    assert len(pieces) > 4  # the rare words split into several pieces
    first_pieces = [i for i, w in enumerate(pieces) if w is not None and (i == 0 or pieces[i - 1] != w)]
    assert [labels[i] for i in first_pieces] == [0, 1]
    assert sum(label != -100 for label in labels) == 2


def test_best_spans_respects_context_order_length_and_windows():
    context = "Казань стоит на Волге и Казанке."
    examples = [QAExample("q", "Где?", context, ["Волге"], [16])]
    # window 0: tokens 0-1 are question/special (None), 2.. are context words.
    offsets = [None, None, (0, 6), (7, 12), (13, 15), (16, 21), (22, 23), (24, 31)]
    start = np.array([9.0, 9.0, 0.0, 0.0, 1.0, 5.0, 0.0, 0.0])  # specials score high but are not context
    end = np.array([9.0, 9.0, 0.0, 0.0, 0.0, 4.0, 0.0, 6.0])
    meta = [{"example": 0, "offsets": offsets}]
    assert best_spans(examples, meta, [start], [end]) == {"q": "Волге и Казанке"}
    assert best_spans(examples, meta, [start], [end], max_answer_length=2) == {"q": "Волге"}
    # An end before the start is never chosen: the best end (token 2) precedes the best start (token 5).
    late_start = np.array([0.0, 0.0, -20.0, -20.0, -20.0, 5.0, 0.0, 0.0])
    early_end = np.array([0.0, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert best_spans(examples, meta, [late_start], [early_end]) == {"q": "Волге и Казанке"}
    # A second window with a better span wins.
    meta2 = [{"example": 0, "offsets": offsets}, {"example": 0, "offsets": [None, (0, 6), (7, 12)]}]
    assert best_spans(examples, meta2, [start, np.array([0.0, 20.0, 0.0])],
                      [end, np.array([0.0, 20.0, 0.0])]) == {"q": "Казань"}


def test_qa_windows_cover_long_context_and_mark_answers(tiny_student_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    context = " ".join(SENTENCES[:12])
    answer = "Санкт-Петербург"
    example = QAExample("q", "Какая северная столица?", context, [answer], [context.index(answer)])
    train = qa_train_features(tokenizer, [example], max_length=48, stride=16)
    features, meta = qa_eval_features(tokenizer, [example], max_length=48, stride=16)
    assert len(train) == len(features) > 2  # the context needs several windows
    inside = [f for f in train if f["start_positions"] > 0]
    assert inside, "some window holds the answer"
    for feature, window in zip(train, meta, strict=True):
        s, e = feature["start_positions"], feature["end_positions"]
        assert len(feature["input_ids"]) <= 48
        if s:
            assert context[window["offsets"][s][0]:window["offsets"][e][1]] == answer
        else:
            assert e == 0
    # Every context character is covered by some window.
    covered = set()
    for window in meta:
        for span in window["offsets"]:
            if span:
                covered.update(range(*span))
    assert {i for i, ch in enumerate(context) if not ch.isspace()} <= covered


# ---------------------------------------------------------------- end to end

def _sentiment_csv(path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        for i, sentence in enumerate(SENTENCES):
            # Every label of the evaluation file (rusentiment.csv) occurs, "positive" most often.
            writer.writerow(["positive" if i % 3 else ("negative", "neutral", "skip", "speech")[i // 3 % 4], sentence])
    return path


def test_finetune_sentiment_end_to_end_and_pipeline(tiny_student_dir, tmp_path):
    train = _sentiment_csv(tmp_path / "train.csv")
    out = tmp_path / "ft"
    code = main(["finetune", "--task", "sentiment", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval", str(DATA / "rusentiment.csv"), "--output", str(out), *QUICK])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "weighted_f1" and 0.0 <= metrics["eval"]["weighted_f1"] <= 1.0
    assert metrics["baseline"]["majority_label"] == "positive"
    assert len(metrics["history"]) >= 1 and metrics["eval_examples"] == 5
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert set(model.config.id2label.values()) == {"negative", "positive", "neutral", "skip", "speech"}
    clf = pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert clf("Отличный день!")[0]["label"] in model.config.label2id
    assert "weighted_f1" in (out / "README.md").read_text(encoding="utf-8")
    assert json.loads((out / "run.json").read_text())["command"] == "finetune"


def test_finetune_paraphrase_from_xml_with_held_out_split(tiny_student_dir, tmp_path):
    pairs = [(SENTENCES[i], SENTENCES[i] + " Да.", "1") for i in range(12)]
    pairs += [(SENTENCES[i], SENTENCES[-i - 1], "-1") for i in range(12)]
    body = "".join(
        f'<paraphrase><value name="id">{k}</value><value name="text_1">{a}</value>'
        f'<value name="text_2">{b}</value><value name="class">{c}</value></paraphrase>\n'
        for k, (a, b, c) in enumerate(pairs))
    train = tmp_path / "paraphrases.xml"
    train.write_text(f"<?xml version='1.0' encoding='UTF8'?>\n<data><corpus>\n{body}</corpus></data>\n",
                     encoding="utf-8")
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "paraphrase", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval-fraction", "0.25", "--output", str(out), *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 18 and metrics["eval_examples"] == 6
    assert {"f1", "accuracy"} <= set(metrics["eval"])
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert set(model.config.label2id) == {"paraphrase", "not_paraphrase"}
    clf = pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert clf({"text": "Привет", "text_pair": "Здравствуй"})["label"] in model.config.label2id


def test_finetune_ner_conll_end_to_end_and_pipeline(tiny_student_dir, tmp_path):
    sentences = read_conll(DATA / "collection3.conll") * 8
    train = tmp_path / "train.conll"
    train.write_text("".join("".join(f"{t}\t{g}\n" for t, g in zip(s.tokens, s.tags, strict=True)) + "\n"
                             for s in sentences), encoding="utf-8")
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "ner", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval", str(DATA / "collection3.conll"), "--output", str(out), "--label-all-pieces",
                 *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"f1", "precision", "recall"} <= set(metrics["eval"]) and metrics["baseline"]["f1"] == 0.0
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert set(model.config.label2id) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    ner = pipeline("token-classification", model=str(out), tokenizer=str(out), aggregation_strategy="first")
    assert isinstance(ner("Владимир Путин посетил Казань."), list)


def test_finetune_ner_reads_factru_json_directly(tiny_student_dir, tmp_path):
    data = json.loads((DATA / "factru.json").read_text(encoding="utf-8"))
    data = {"texts": data["texts"] * 5, "labels": data["labels"] * 5}
    train = tmp_path / "factru.json"
    train.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "ner", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval-fraction", "0.2", "--project", "misc", "--output", str(out), *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "B-MISC" in metrics["labels"] and metrics["train_examples"] > metrics["eval_examples"] > 0


def test_finetune_qa_end_to_end_and_pipeline(tiny_student_dir, tmp_path):
    context = " ".join(SENTENCES[:10])
    qas = []
    for k, answer in enumerate(["Москва", "книгу", "борщ", "Ёжик в тумане", "дождь", "столица"]):
        if answer in context:
            qas.append({"id": f"q{k}", "question": f"Что {answer[:2]}?",
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "qa", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval", str(DATA / "sberquad.json"), "--output", str(out), "--epochs", "1", "--batch-size", "4",
                 "--max-length", "64", "--doc-stride", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["questions"] == 2 and 0.0 <= metrics["eval"]["f1"] <= 100.0
    assert metrics["train_features"] > len(qas)  # sliding windows
    assert AutoModelForQuestionAnswering.from_pretrained(out).config.model_type == "distilbert"
    # transformers 5 has no "question-answering" pipeline; the project's helper does its job.
    answers = answer_questions(out, ["Где стоит город?", "Что?"], ["Казань стоит на Волге.", context])
    assert len(answers) == 2 and answers[0] and answers[0] in "Казань стоит на Волге." and answers[1] in context


def test_convert_ner_writes_conll_split(tmp_path):
    data = json.loads((DATA / "factru.json").read_text(encoding="utf-8"))
    data = {"texts": data["texts"] * 5, "labels": data["labels"] * 5}
    source = tmp_path / "factru.json"
    source.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "conll"
    assert main(["convert-ner", "--input", str(source), "--output", str(out), "--eval-fraction", "0.2"]) == 0
    train, evaluation = read_conll(out / "train.conll"), read_conll(out / "eval.conll")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["texts"] == 8 and stats["eval"]["texts"] == 2
    assert len(train) == stats["train"]["sentences"] and len(evaluation) == stats["eval"]["sentences"]
    assert {t for s in train for t in s.tags} <= {"O", "B-PER", "I-PER", "B-LOC", "B-ORG"}


def test_finetune_bad_input_fails_with_file_and_line(tiny_student_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,text\npositive,хорошо\n,плохо\n", encoding="utf-8")
    out = tmp_path / "ft"
    code = main(["finetune", "--task", "sentiment", "--model", str(tiny_student_dir), "--train", str(bad),
                 "--output", str(out)])
    assert code == 1
    assert "bad.csv:3: empty 'label'" in capsys.readouterr().err
    assert not out.exists()


def test_finetune_config_validation(tiny_student_dir, tmp_path):
    from distilrubert.tasks.finetune import FinetuneConfig

    with pytest.raises(ValueError, match="--eval-fraction"):
        FinetuneConfig(task="ner", model=str(tiny_student_dir), train="x", output="y", eval_fraction=1.0)
    with pytest.raises(ValueError, match="--format"):
        FinetuneConfig(task="ner", model=str(tiny_student_dir), train="x", output="y", format="xlsx")
    with pytest.raises(ValueError, match="--doc-stride"):
        FinetuneConfig(task="qa", model=str(tiny_student_dir), train="x", output="y", max_length=64, doc_stride=40)
    config = FinetuneConfig(task="ner", model=str(tiny_student_dir), train="x", output="y")
    assert (config.epochs, config.max_length) == (5, 256)  # per-task defaults filled in


def test_format_detection_for_paraphrase_csv(tmp_path):
    from distilrubert.tasks.finetune import _format_of

    generic = tmp_path / "pairs.csv"
    generic.write_text("text,text_pair,label\nа,б,1\n", encoding="utf-8")
    assert _format_of("paraphrase", DATA / "para_gold.csv", "auto") == "paraphraser"
    assert _format_of("paraphrase", generic, "auto") == "csv"
    assert _format_of("ner", DATA / "factru.json", "auto") == "factru"
    assert _format_of("ner", DATA / "collection3.conll", "auto") == "conll"
    assert _format_of("sentiment", DATA / "rusentiment.csv", "auto") == "csv"


def test_metric_option_validated_per_task(tiny_student_dir):
    from distilrubert.tasks.finetune import FinetuneConfig

    config = FinetuneConfig(task="paraphrase", model=str(tiny_student_dir), train="x", output="y", metric="accuracy")
    assert config.metric == "accuracy"
    assert FinetuneConfig(task="sentiment", model=str(tiny_student_dir), train="x", output="y").metric == "weighted_f1"
    with pytest.raises(ValueError, match="--metric"):
        FinetuneConfig(task="ner", model=str(tiny_student_dir), train="x", output="y", metric="accuracy")


def test_finetune_refuses_one_class_training_data_and_labels_only_the_eval_file_has(tiny_student_dir, tmp_path,
                                                                                      capsys):
    def table(path, labels):
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([["label", "text"], *zip(labels, SENTENCES, strict=True)])
        return path

    one = table(tmp_path / "one.csv", ["positive"] * len(SENTENCES))
    assert main(["finetune", "--task", "sentiment", "--model", str(tiny_student_dir), "--train", str(one),
                 "--output", str(tmp_path / "a"), *QUICK]) == 1
    # (the count is of the training part: --eval-fraction of the file is held out)
    assert re.search(r"one\.csv: all \d+ examples have the label 'positive'; a classifier needs at least two",
                     capsys.readouterr().err)
    two = table(tmp_path / "two.csv", ["positive" if i % 2 else "negative" for i in range(len(SENTENCES))])
    assert main(["finetune", "--task", "sentiment", "--model", str(tiny_student_dir), "--train", str(two),
                 "--eval", str(DATA / "rusentiment.csv"), "--output", str(tmp_path / "b"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "rusentiment.csv: labels never seen in the training examples: 'neutral' (" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
