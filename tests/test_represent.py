"""Distillation from a teacher without an MLM head: losses, whole-text units, the cache and `distill` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distilrubert.losses import relation_loss, sentence_loss
from distilrubert.rep_cache import CachePart
from distilrubert.textunits import build_text_units

from .conftest import SENTENCES
from .families import e5_like_teacher


def test_sentence_loss_hand_computed():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    assert float(sentence_loss(s, t, "cosine")) == pytest.approx((1 - 0 + 1 - 1) / 2)
    assert float(sentence_loss(s, t, "mse")) == pytest.approx(((1 + 9) + (1 + 1)) / 4)
    with pytest.raises(ValueError, match="--sentence-loss: unknown kind 'l1'"):
        sentence_loss(s, t, "l1")


def test_relation_loss_hand_computed():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    tau = 0.5

    def rows(x):
        x = [v / np.linalg.norm(v) for v in x.numpy()]
        out = []
        for i in range(3):
            sims = np.array([x[i] @ x[j] for j in range(3) if j != i]) / tau
            out.append(np.exp(sims) / np.exp(sims).sum())
        return out

    p_t, p_s = rows(t), rows(s)
    expected = np.mean([np.sum(pt * (np.log(pt) - np.log(ps))) for pt, ps in zip(p_t, p_s, strict=True)])
    assert float(relation_loss(s, t, tau)) == pytest.approx(expected, rel=1e-5)
    assert float(relation_loss(t, t, tau)) == pytest.approx(0.0, abs=1e-6)
    # Scale of either side does not matter (cosine), widths may differ.
    assert float(relation_loss(s * 3, torch.cat([t, t], dim=1), tau)) == pytest.approx(expected, rel=1e-5)
    assert float(relation_loss(s[:1], t[:1])) == 0.0


@pytest.fixture(scope="session")
def _e5_like_teacher(tmp_path_factory) -> Path:
    """A tiny BertModel (no MLM head) with a SentencePiece tokenizer and sentence-transformers files."""
    return e5_like_teacher(tmp_path_factory.mktemp("e5like") / "teacher")


@pytest.fixture(scope="session")
def _sp_student(tmp_path_factory, _e5_like_teacher, _student_vocab_dir) -> Path:
    from distilrubert.student_init import InitStudentConfig, init_student

    out = tmp_path_factory.mktemp("spstudent") / "student"
    init_student(InitStudentConfig(teacher=str(_e5_like_teacher), vocab=str(_student_vocab_dir), output=str(out),
                                   dim=16, heads=2, ffn=32, layers=2, max_position_embeddings=128))
    return out


def _corpus(tmp_path: Path, repeats: int = 4) -> Path:
    path = tmp_path / "corpus.jsonl"
    texts = SENTENCES * repeats  # duplicates on purpose: whole-text units are deduplicated
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_text_units_dedupe_prefix_and_groups(tmp_path, _e5_like_teacher, _student_vocab_dir):
    from transformers import AutoTokenizer

    s_tok = AutoTokenizer.from_pretrained(str(_student_vocab_dir))
    t_tok = AutoTokenizer.from_pretrained(str(_e5_like_teacher))
    corpus = _corpus(tmp_path)
    units = build_text_units([corpus], s_tok, t_tok, max_length=16, teacher_max_length=64, prefix="passage: ",
                             cache_root=tmp_path / "cache", span=True, progress=False)
    assert units.report["documents"] == 4 * len(SENTENCES)
    assert units.report["duplicates"] == 3 * len(SENTENCES) and len(units) == len(SENTENCES)
    s_ids, t_ids = units.student_ids(0), units.teacher_ids(0)
    assert s_ids[0] == s_tok.cls_token_id and s_ids[-1] == s_tok.sep_token_id and len(s_ids) <= 16
    prefix_ids = t_tok("passage:", add_special_tokens=False)["input_ids"]  # the space joins the next word
    assert t_ids[0] == t_tok.cls_token_id and list(t_ids[1:1 + len(prefix_ids)]) == prefix_ids
    sg, tg, n = units.groups(0)
    assert n > 0 and sg.max() == n - 1 and tg.max() == n - 1
    assert np.all(tg[: 1 + len(prefix_ids)] == -1)  # <s> and the prompt belong to no group
    assert sg[0] == -1 and sg[-1] == -1
    # Built once: the same cache directory is opened the second time.
    again = build_text_units([corpus], s_tok, t_tok, max_length=16, teacher_max_length=64, prefix="passage: ",
                             cache_root=tmp_path / "cache", span=True, progress=False)
    assert again.path == units.path


def test_cache_part_detects_mismatch_and_corruption(tmp_path, caplog):
    part = CachePart(tmp_path / "c", {"teacher": "a"}, rows=4, shape=(3,), slots=4)
    part.put(np.array([1]), np.array([1]), np.ones((1, 3)))
    part.close()
    again = CachePart(tmp_path / "c", {"teacher": "a"}, rows=4, shape=(3,), slots=4)
    np.testing.assert_array_equal(again.get(np.array([1]), np.array([1])), np.ones((1, 3)))
    assert again.get(np.array([0, 1]), np.array([0, 1])) is None  # row 0 never written: a miss
    with caplog.at_level("WARNING"):
        other = CachePart(tmp_path / "c", {"teacher": "b"}, rows=4, shape=(3,), slots=4)
    assert "its key differs" in caplog.text and other.get(np.array([1]), np.array([1])) is None
    other.put(np.array([2]), np.array([2]), np.full((1, 3), 2.0))
    other.close()
    with open(tmp_path / "c" / "values.f16", "r+b") as handle:  # truncated
        handle.truncate(5)
    caplog.clear()
    with caplog.at_level("WARNING"):
        rebuilt = CachePart(tmp_path / "c", {"teacher": "b"}, rows=4, shape=(3,), slots=4)
    assert "wrong size" in caplog.text and rebuilt.filled_fraction == 0.0
    rebuilt.values[3] = np.inf  # a non-finite cached value is recomputed, never used
    rebuilt.filled[3] = 1
    assert rebuilt.get(np.array([3]), np.array([3])) is None and rebuilt.filled[3] == 0


def _distill(teacher: Path, student: Path, corpus: Path, out: Path, cache: Path, **kw):
    from distilrubert.distill import DistillConfig, distill

    options = {"max_steps": 24, "batch_size": 8, "max_length": 32, "lr": 3e-3, "eval_every": 0, "save_every": 0,
               "log_every": 4, "progress": False, "tensorboard": False, "valid_fraction": 0.2, **kw}
    return distill(DistillConfig(teacher=str(teacher), student=str(student), corpus=[str(corpus)], output=str(out),
                                 cache_dir=str(cache), **options))


def test_distill_without_mlm_head_end_to_end_and_cache_reuse(tmp_path, _e5_like_teacher, _sp_student):
    from transformers import AutoModel

    corpus = _corpus(tmp_path, repeats=1)
    out = tmp_path / "d"
    summary = _distill(_e5_like_teacher, _sp_student, corpus, out, tmp_path / "cache", alpha_hidden=0.5)
    run = json.loads((out / "run.json").read_text())["config"]
    assert run["alignment"] == "span" and run["alpha_kl"] == 0.0 and run["cache_teacher"] == "outputs"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "sentence" in r and r.get("split") != "valid"]
    assert train[-1]["sentence"] < train[0]["sentence"] and train[-1]["loss"] < train[0]["loss"]
    assert {"relation", "hidden", "mlm"} <= set(train[-1])
    assert math.isfinite(train[-1]["hidden"])
    report = json.loads((out / "train_report.json").read_text())
    assert report["teacher_cache"]["sentence"]["filled"] == 1.0 and summary["teacher_forward_steps"] > 0
    model = AutoModel.from_pretrained(str(out))
    assert model.config.vocab_size == 300
    # A second run on the same corpus and teacher never runs the teacher: everything comes from the cache.
    again = _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "d2", tmp_path / "cache", alpha_hidden=0.5,
                     seed=7)
    assert again["teacher_forward_steps"] == 0
    assert json.loads((tmp_path / "d2" / "train_report.json").read_text())["teacher_cache"]["sentence"]["misses"] == 0


def test_a_partly_filled_cache_runs_the_teacher_on_the_missing_rows_only(tmp_path, _e5_like_teacher, _sp_student):
    corpus = _corpus(tmp_path, repeats=1)
    cache = tmp_path / "cache"
    first = _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "d", cache, alpha_hidden=0.5)
    parts = {p.name.split("-")[1]: p for p in cache.iterdir() if p.name.startswith("teacher-")}
    sentence = np.fromfile(parts["sentence"] / "filled.u8", dtype=np.uint8)
    assert sentence.all() and first["teacher_forward_rows"] >= len(sentence)
    before = np.fromfile(parts["sentence"] / "values.f16", dtype=np.float16).reshape(len(sentence), -1).copy()
    # Forget every third document's embedding, and all group states (as an interrupted first epoch would).
    forget = np.zeros(len(sentence), dtype=bool)
    forget[::3] = True
    np.where(forget, 0, 1).astype(np.uint8).tofile(parts["sentence"] / "filled.u8")
    groups = np.fromfile(parts["groups"] / "filled.u8", dtype=np.uint8)
    np.zeros_like(groups).tofile(parts["groups"] / "filled.u8")
    again = _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "d2", cache, alpha_hidden=0.5, seed=3)
    after = np.fromfile(parts["sentence"] / "values.f16", dtype=np.float16).reshape(len(sentence), -1)
    assert np.fromfile(parts["sentence"] / "filled.u8", dtype=np.uint8).all()
    np.testing.assert_allclose(after.astype(np.float32), before.astype(np.float32), atol=2e-3)
    # Each unit is run through the teacher once (its groups were forgotten), never again once cached.
    assert again["teacher_forward_rows"] == len(groups)
    assert again["teacher_forward_steps"] < first["teacher_forward_steps"] + 8


def test_distill_refuses_a_kl_without_teacher_logits(tmp_path, _e5_like_teacher, _sp_student):
    corpus = _corpus(tmp_path, repeats=1)
    with pytest.raises(ValueError, match=r"--alpha-kl: the teacher .* has no masked-LM head"):
        _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "a", tmp_path / "cache", alpha_kl=1.0)
    with pytest.raises(ValueError, match=r"--alignment reduce: the teacher .* has no masked-LM head"):
        _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "b", tmp_path / "cache", alignment="reduce")
    from distilrubert.distill import DistillConfig

    with pytest.raises(ValueError, match="--alpha-kl: --alignment span pairs hidden states"):
        DistillConfig(teacher="t", student="s", corpus=["c"], output="o", alignment="span", alpha_kl=1.0)
    with pytest.raises(ValueError, match="--alpha-sentence: the sentence and relation losses run with --alignment"):
        DistillConfig(teacher="t", student="s", corpus=["c"], output="o", alignment="reduce", alpha_sentence=1.0)


def test_distill_cli_span_with_an_mlm_teacher(tmp_path, teacher_dir, tiny_student, capsys):
    """`--alignment span` works for any teacher (here a WordPiece one with an MLM head): no KL, sentence loss."""
    from distilrubert.cli import main

    corpus = _corpus(tmp_path, repeats=1)
    code = main(["distill", "--teacher", str(teacher_dir), "--student", str(tiny_student), "--corpus", str(corpus),
                 "--alignment", "span", "--max-steps", "6", "--batch-size", "8", "--max-length", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "o"), "--no-progress",
                 "--eval-every", "0", "--save-every", "0", "--no-tensorboard"])
    assert code == 0
    card = (tmp_path / "o" / "README.md").read_text()
    assert "distill --alignment span" in card and "sentence 1.0" in card


def test_neighbour_batches_cover_each_text_once_and_group_clusters():
    from distilrubert.neighbours import neighbour_batches

    labels = np.repeat(np.arange(10), 12)  # 10 clusters of 12 units
    train = np.arange(120)
    batches = neighbour_batches(labels, train, batch_size=8, group=4, seed=1, epoch=0)
    flat = np.concatenate(batches)
    assert len(batches) == 15 and len(np.unique(flat)) == len(flat) == 120
    # Each group of 4 comes from one cluster (clusters of 12 cut into whole groups of 4).
    for batch in batches:
        assert all(len(set(labels[g])) == 1 for g in batch.reshape(-1, 4))
    again = neighbour_batches(labels, train, batch_size=8, group=4, seed=1, epoch=0)
    other = neighbour_batches(labels, train, batch_size=8, group=4, seed=1, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_distill_with_neighbour_batches_fills_the_cache_first(tmp_path, _e5_like_teacher, _sp_student):
    corpus = _corpus(tmp_path, repeats=1)
    summary = _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "n", tmp_path / "cache", neighbour_batches=4)
    report = json.loads((tmp_path / "n" / "train_report.json").read_text())
    assert report["neighbour_batches"]["group"] == 4 and report["neighbour_batches"]["clusters"] >= 2
    assert report["teacher_cache"]["sentence"]["filled"] == 1.0
    # Every text went through the teacher once, before training: no training step needed it.
    assert summary["teacher_forward_rows"] == report["data"]["units"]
    with pytest.raises(ValueError, match="--neighbour-batches: 3 must be >= 2 and divide --batch-size 8"):
        _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "m", tmp_path / "cache", neighbour_batches=3)
    with pytest.raises(ValueError, match="--neighbour-batches: clusters the cached teacher embeddings"):
        _distill(_e5_like_teacher, _sp_student, corpus, tmp_path / "m", tmp_path / "cache", neighbour_batches=4,
                 cache_teacher="none")


def test_chain_order_puts_similar_clusters_next_to_each_other():
    from distilrubert.neighbours import chain_order

    angles = np.array([0.0, 3.0, 0.2, 2.8, 1.5])  # 0 ~ 2, 1 ~ 3, 4 between
    centroids = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    position = chain_order(centroids)
    assert sorted(position.tolist()) == list(range(5))
    tour = np.argsort(position).tolist()
    assert tour == [0, 2, 4, 3, 1]


def test_neighbour_batches_keep_lengths_together():
    from distilrubert.neighbours import neighbour_batches

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 4000)
    lengths = rng.integers(5, 128, 4000)
    train = np.arange(4000)
    batches = neighbour_batches(labels, train, batch_size=64, group=16, seed=1, epoch=0, lengths=lengths)
    assert len(np.unique(np.concatenate(batches))) == sum(len(b) for b in batches) >= 4000 - 2 * 64
    padded = sum(len(b) * lengths[b].max() for b in batches)
    real = sum(lengths[b].sum() for b in batches)
    assert padded / real < 1.3  # random batches of these lengths pad to about 1.9x
    # Groups still come from one cluster each, bar the seams between clusters (at most one per cluster).
    mixed = sum(len(set(labels[g])) > 1 for batch in batches for g in batch.reshape(-1, 16))
    assert mixed < 20


def test_check_agreement_figures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_agreement",
                                                  Path(__file__).parents[1] / "scripts" / "check_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(200, 16))
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    same = module.agreement(teacher.copy(), teacher, k=5)
    assert same["random_pairs"] == pytest.approx(1.0) and same["neighbours"] == pytest.approx(1.0)
    assert same["top1"] == 1.0
    noise = rng.normal(size=(200, 16))
    other = module.agreement(noise / np.linalg.norm(noise, axis=1, keepdims=True), teacher, k=5)
    assert abs(other["random_pairs"]) < 0.2 and other["top1"] < 0.1
