"""evaluate: the probes on toy embeddings with known answers, the embedder, and the CLI on tiny task files."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from distilrubert.cli import main
from distilrubert.evaluate import (
    ProbeEmbedder,
    encodechka_word_labels,
    markdown_table,
    pair_cv_accuracy,
    pair_spearman,
    probe_accuracy,
    probe_auc,
    probe_ner,
    resolve_prompt,
)

from .conftest import SENTENCES

DATA = Path(__file__).parent / "data" / "tasks"


def _clusters(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated Gaussian clusters in 8 dimensions, labels 0/1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) * 0.1 + np.where(y[:, None] == 1, 3.0, -3.0)
    return x, y


# ---------------------------------------------------------------- probes with known answers

def test_pair_spearman_is_one_when_dot_products_follow_gold():
    gold = np.array([-1, 0, 1, 1, 0, -1, 1], dtype=float)
    base = np.ones((7, 4))
    emb1 = {"v": base}
    emb2 = {"v": base * (gold[:, None] + 2)}  # dot product = 4 * (gold + 2): monotone in gold
    assert pair_spearman(emb1, emb2, gold)["v"] == pytest.approx(1.0)
    assert pair_spearman(emb1, {"v": -emb2["v"]}, gold)["v"] == pytest.approx(-1.0)


def test_pair_cv_accuracy_separable_by_dot_product():
    gold = np.array([0, 1] * 15)
    emb1 = {"v": np.ones((30, 3))}
    emb2 = {"v": np.where(gold[:, None] == 1, 1.0, -1.0) * np.ones((30, 3))}
    assert pair_cv_accuracy(emb1, emb2, gold)["v"] == 1.0


def test_probe_accuracy_and_auc_on_separable_clusters():
    x_train, y_train = _clusters(40, seed=1)
    x_test, y_test = _clusters(20, seed=2)
    acc = probe_accuracy({"v": x_train}, y_train, {"v": x_test}, y_test)
    assert acc == {"v__lr": 1.0, "v__knn": 1.0}
    assert probe_auc({"v": x_train}, y_train, {"v": x_test}, y_test) == {"v": 1.0}
    # Shuffled labels carry no signal: accuracy drops to chance level.
    rng = np.random.default_rng(3)
    noisy = probe_accuracy({"v": rng.normal(size=(200, 8))}, rng.integers(0, 2, 200),
                           {"v": rng.normal(size=(200, 8))}, rng.integers(0, 2, 200))
    assert noisy["v__lr"] < 0.65


def test_probe_ner_macro_f1_excludes_o():
    rng = np.random.default_rng(0)
    labels = np.array(["O", "B-Person", "I-Person", "B-Org"] * 30)
    axis = {"O": 0, "B-Person": 1, "I-Person": 2, "B-Org": 3}  # each label on its own axis: separable one-vs-rest
    x = np.stack([np.eye(6)[axis[label]] * 4.0 + rng.normal(size=6) * 0.1 for label in labels])
    assert probe_ner(x, labels, x, labels) == pytest.approx(1.0)
    # Predicting O everywhere scores 0: O is not one of the averaged labels.
    o_only = np.array(["O"] * len(labels))
    assert probe_ner(np.concatenate([x, x[:1]]), np.concatenate([o_only, ["B-Org"]]), x, labels) < 0.5


def test_encodechka_word_labels_replicate_its_rules():
    text = "Газпром и Владимир Путин посетили Москву."
    spans = [["Org", 0, 7], ["Person", 10, 24], ["Location", 34, 40], ["Person", 10, 18]]
    words, labels = encodechka_word_labels(text, spans)
    assert words == ["Газпром", "и", "Владимир", "Путин", "посетили", "Москву", "."]
    # Word 0 is never labelled (encodechka's `if not token_id` skip); the first span to claim a word wins.
    assert labels == ["O", "O", "B-Person", "I-Person", "O", "B-Location", "O"]


def test_markdown_table_layout_has_encodechka_columns_and_published_rows():
    result = {"tasks": {"SA": {"score": 0.6312}, "PI": {"score": 0.48}}, "speed": {"ms_per_text": 3.21}}
    table = markdown_table([("student", result)], retention={"SA": 0.9})
    lines = table.splitlines()
    assert lines[0] == "| model | STS | PI | NLI | SA | TI | IA | IC | ICX | NE1 | NE2 | CPU ms/text |"
    assert lines[2] == "| student |  | 0.48 |  | 0.63 |  |  |  |  |  |  | 3.2 |"
    assert "| retention (student / teacher) |  |  |  | 90% |" in table
    assert "cointegrated/rubert-tiny2 (published, other hardware) |  | 0.65 |  | 0.74 |" in table


# ---------------------------------------------------------------- embedder

def test_embedder_batched_equals_one_by_one(tiny_student_dir):
    embedder = ProbeEmbedder(str(tiny_student_dir), device="cpu", batch_size=4)
    texts = [SENTENCES[5], SENTENCES[0], SENTENCES[5], "Да.", SENTENCES[7], SENTENCES[2]]
    batched = embedder.sentence_variants(texts)
    assert set(batched) == {"cls", "mean", "cls_norm", "mean_norm"}
    assert batched["mean"].shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(batched["mean_norm"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(batched["cls"][0], batched["cls"][2])  # duplicates agree
    single = ProbeEmbedder(str(tiny_student_dir), device="cpu", batch_size=1)
    for i, text in enumerate(texts):
        one = single.sentence_variants([text])
        for key in batched:  # padding in length-sorted batches does not change a text's vector
            np.testing.assert_allclose(batched[key][i], one[key][0], rtol=1e-4, atol=1e-5)


def test_word_vectors_average_pieces_per_word(tiny_student_dir):
    embedder = ProbeEmbedder(str(tiny_student_dir), device="cpu", batch_size=2)
    sentences = [["Достопримечательности", "Санкт-Петербурга"], ["Да"], ["Кошка", "спит", "."]]
    vectors = embedder.word_vectors(sentences)
    assert [v.shape for v in vectors] == [(2, 16), (1, 16), (3, 16)]
    import torch

    enc = embedder.tokenizer(sentences[0], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = embedder.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
    pieces = [i for i, w in enumerate(enc.word_ids()) if w == 0]
    np.testing.assert_allclose(vectors[0][0], hidden[pieces].mean(0).numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- CLI

def _data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "encodechka"
    data.mkdir()
    for split, offset in (("train", 0), ("test", 1)):
        with (data / f"SentiRuEval2016_small_{split}.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "answer", "company", "sample_id", "domain"])
            for i, sentence in enumerate(SENTENCES[offset::2]):
                writer.writerow([sentence, (-1, 0, 1)[i % 3], "mts", i, "tkk"])
        with (data / f"toxic_{split}.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "toxic"])
            for i, sentence in enumerate(SENTENCES[offset::2]):
                writer.writerow([sentence, float(i % 2)])
    with (data / "para_gold.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "id_1", "id_2", "text_1", "text_2", "class"])
        for i in range(18):
            writer.writerow([i, 2 * i, 2 * i + 1, SENTENCES[i], SENTENCES[i + 1 + i % 3], (-1, 0, 1)[i % 3]])
    factru = json.loads((DATA / "factru.json").read_text(encoding="utf-8"))
    (data / "factru.json").write_text(json.dumps({"texts": factru["texts"] * 4, "labels": factru["labels"] * 4},
                                                 ensure_ascii=False), encoding="utf-8")
    (data / "sentences_sample.txt").write_text("\n".join(SENTENCES[:5]) + "\n", encoding="utf-8")
    return data


def test_evaluate_cli_with_teacher_writes_variants_table_and_retention(tiny_student_dir, teacher_dir, tmp_path,
                                                                       capsys):
    data = _data_dir(tmp_path)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(tiny_student_dir), "--suite", "encodechka", "--data-dir", str(data),
                 "--output", str(out), "--teacher", str(teacher_dir)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    tasks = report["model"]["tasks"]
    assert set(tasks) == {"PI", "SA", "TI", "NE1"}  # the extra toxic_* files are picked up by name
    assert set(tasks["PI"]["variants"]) == {"cls", "mean", "cls_norm", "mean_norm"}
    assert len(tasks["SA"]["variants"]) == 8  # 4 variants x (logistic regression, 3-NN)
    assert tasks["SA"]["score"] == max(tasks["SA"]["variants"].values())
    assert tasks["SA"]["best_variant"] in tasks["SA"]["variants"]
    assert "word_mean_pieces" in tasks["NE1"]["variants"]
    assert report["model"]["speed"]["texts"] == 5 and report["model"]["speed"]["ms_per_text"] > 0
    assert "STS: skipped, stsb_dev.csv not in" in printed
    assert "NE2: skipped" in report["model"]["skipped"]["NE2"]
    for code in tasks:
        teacher_score = report["teacher"]["tasks"][code]["score"]
        assert report["retention"][code] == pytest.approx(tasks[code]["score"] / teacher_score)
    assert "retention (student / teacher): " in printed
    table = (tmp_path / "e.md").read_text()
    assert table.startswith("| model | STS | PI | NLI | SA |") and "(teacher)" in table and "published" in table
    assert report["run"]["command"] == "evaluate"


def test_evaluate_task_subset_and_missing_data_dir(tiny_student_dir, tmp_path, capsys):
    data = _data_dir(tmp_path)
    shutil.rmtree(tmp_path / "nope", ignore_errors=True)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(tiny_student_dir), "--data-dir", str(data), "--output", str(out),
                 "--tasks", "pi", "--no-speed"]) == 0
    report = json.loads(out.read_text())
    assert set(report["model"]["tasks"]) == {"PI"} and "speed" not in report["model"]
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["evaluate", "--model", str(tiny_student_dir), "--data-dir", str(tmp_path / "nope"),
              "--output", str(out)])
    assert "--data-dir" in capsys.readouterr().err


def test_evaluate_bad_file_names_file_and_line(tiny_student_dir, tmp_path, capsys):
    data = _data_dir(tmp_path)
    (data / "para_gold.csv").write_text("id,text_1,text_2\n1,а,б\n", encoding="utf-8")
    code = main(["evaluate", "--model", str(tiny_student_dir), "--data-dir", str(data),
                 "--output", str(tmp_path / "e.json"), "--tasks", "PI"])
    assert code == 1
    assert "para_gold.csv:1: missing column(s) class" in capsys.readouterr().err


# ---------------------------------------------------------------- prompts (e5-style models)

PROMPTS = {"query": "Привет: ", "passage": "Москва: "}  # words the tiny vocabulary knows, not [UNK]


@pytest.fixture
def prompted_student(tiny_student) -> Path:
    """The tiny student with the sentence-transformers prompt file an imported e5 teacher has."""
    (tiny_student / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "passage"}), encoding="utf-8")
    return tiny_student


def test_resolve_prompt_defaults_and_names(tiny_student_dir, prompted_student):
    assert resolve_prompt(str(tiny_student_dir), None, None) == ("", "none (no config_sentence_transformers.json)")
    prompt, source = resolve_prompt(str(prompted_student), None, None)
    assert prompt == "Привет: " and "'query'" in source  # query beats the file's default_prompt_name (passage)
    assert resolve_prompt(str(prompted_student), None, "passage")[0] == "Москва: "
    assert resolve_prompt(str(prompted_student), "", None) == ("", "--prompt")  # '' forces no prompt
    with pytest.raises(ValueError, match=r"--prompt-name: 'title' is not one of the model's prompts \['passage'"):
        resolve_prompt(str(prompted_student), None, "title")
    with pytest.raises(ValueError, match=r"--teacher-prompt-name query: .* does not exist"):
        resolve_prompt(str(tiny_student_dir), None, "query", "--teacher")
    # Without a query prompt the file's default prompt is the default.
    (prompted_student / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"passage": "Москва: "}, "default_prompt_name": "passage"}), encoding="utf-8")
    assert resolve_prompt(str(prompted_student), None, None)[0] == "Москва: "


def test_embedder_prompt_is_read_before_every_text(tiny_student_dir):
    plain = ProbeEmbedder(str(tiny_student_dir), device="cpu", batch_size=3)
    prompted = ProbeEmbedder(str(tiny_student_dir), device="cpu", batch_size=3, prompt="Привет: ")
    texts = [SENTENCES[3], SENTENCES[9], SENTENCES[1]]
    with_prompt = prompted.sentence_variants(texts)
    by_hand = plain.sentence_variants(["Привет: " + t for t in texts])
    for key in with_prompt:
        np.testing.assert_allclose(with_prompt[key], by_hand[key], rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_prompt["mean"], plain.sentence_variants(texts)["mean"], atol=1e-3)
    # NER: the prompt's words lead each word list and are dropped from the output.
    words = [["Кошка", "спит", "."], ["Да"]]
    vectors = prompted.word_vectors(words)
    assert [v.shape for v in vectors] == [(3, 16), (1, 16)]
    lead = plain.word_vectors([["Привет:", *w] for w in words])
    for got, full in zip(vectors, lead, strict=True):
        np.testing.assert_allclose(got, full[1:], rtol=1e-4, atol=1e-5)


def test_evaluate_cli_prompts_of_model_and_teacher(prompted_student, tiny_student_dir, tmp_path, capsys):
    data = _data_dir(tmp_path)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(prompted_student), "--data-dir", str(data), "--output", str(out),
                 "--tasks", "PI", "--no-speed", "--teacher", str(prompted_student),
                 "--teacher-prompt-name", "passage"]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["prompt"] == "Привет: " and report["teacher"]["prompt"] == "Москва: "
    assert report["run"]["config"]["teacher_prompt_name"] == "passage"
    assert "teacher prompt: 'Москва: ' (--teacher-prompt-name passage)" in capsys.readouterr().out
    # Same weights, different prompts: the scores differ, so the prompt reached the teacher's probes.
    assert report["model"]["tasks"]["PI"]["variants"] != report["teacher"]["tasks"]["PI"]["variants"]
    for argv, message in (
            (["--model", str(tiny_student_dir), "--prompt-name", "query"], "--prompt-name query: .* does not exist"),
            (["--model", str(tiny_student_dir), "--teacher-prompt", "x"], "--teacher-prompt / --teacher-prompt-name "
                                                                          "need --teacher"),
            (["--model", str(prompted_student), "--prompt", "a", "--prompt-name", "query"],
             "--prompt and --prompt-name exclude each other")):
        # config errors: argparse's one-line usage error (exit 2), before any model loads
        with pytest.raises(SystemExit, match=r"^2$"):
            main(["evaluate", *argv, "--data-dir", str(data), "--output", str(out)])
        assert re.search(message, capsys.readouterr().err)


def test_read_teacher_spec_shares_the_prompt_file_reader(prompted_student):
    from distilrubert.teacher_spec import read_teacher_spec

    (prompted_student / "1_Pooling").mkdir()
    (prompted_student / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (prompted_student / "modules.json").write_text(json.dumps(
        [{"path": "", "type": "sentence_transformers.models.Transformer"},
         {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
         {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    spec = read_teacher_spec(str(prompted_student))  # distill's default: the file's default_prompt_name
    assert (spec.pooling, spec.normalize, spec.prompt) == ("cls", True, "Москва: ")
    assert read_teacher_spec(str(prompted_student), "query").prompt == "Привет: "
    with pytest.raises(ValueError, match=r"--teacher-prompt-name: 'title' is not one of the model's prompts"):
        read_teacher_spec(str(prompted_student), "title")


def test_evaluate_on_a_data_dir_without_task_files_is_an_error_not_an_empty_table(tiny_student_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(tiny_student_dir), "--data-dir", str(empty), "--output", str(out),
                 "--no-speed"]) == 1
    err = capsys.readouterr().err
    assert f"--data-dir {empty}: no task of the suite could run" in err and "para_gold.csv not in" in err
    assert not out.exists()


def test_a_hub_id_teacher_is_accepted_as_the_demo_passes_it(tiny_student_dir, tmp_path, monkeypatch):
    """`demo --teacher ORG/NAME` used to fail at "evaluate teacher", after all training: only directories passed."""
    from distilrubert import demo, evaluate
    from distilrubert.evaluate import EvaluateConfig

    config = EvaluateConfig(model=str(tiny_student_dir), teacher="DeepPavlov/rubert-base-cased-conversational",
                            output=str(tmp_path / "e.json"))
    assert config.teacher == "DeepPavlov/rubert-base-cased-conversational"
    with pytest.raises(ValueError, match=r"--teacher \./no/such/dir: no such directory \(nor a Hub id"):
        EvaluateConfig(model=str(tiny_student_dir), teacher="./no/such/dir", output=str(tmp_path / "e.json"))
    seen = {}
    monkeypatch.setattr(evaluate, "run_suite", lambda model, cfg, label: seen.update(model=model, cfg=cfg) or {})
    demo.evaluate_model("DeepPavlov/rubert-base-cased-conversational", tmp_path / "t.json", str(tmp_path / "none"))
    assert seen["model"] == "DeepPavlov/rubert-base-cased-conversational" and seen["cfg"].suite == "builtin"
