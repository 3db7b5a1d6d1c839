"""init-student: shapes, parameter count, the initialisation rules, HF loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, pipeline

from distilrubert.student_init import (
    MLM_HEAD_PREFIXES,
    InitStudentConfig,
    Reducer,
    _heads_index,
    checkpoint_has_mlm_head,
    embedding_sources,
    extract_teacher_weights,
    has_mlm_head,
    init_student,
    layer_groups,
    load_teacher,
)
from distilrubert.tokenmap import TokenMap


def _init(teacher_dir, vocab_dir, out, **kwargs):
    kwargs.setdefault("max_position_embeddings", 128)
    return init_student(InitStudentConfig(teacher=str(teacher_dir), vocab=str(vocab_dir), output=str(out), **kwargs))


def test_default_shape_loads_with_auto_classes(teacher_dir, student_vocab_dir, tmp_path):
    out = tmp_path / "s"
    info = _init(teacher_dir, student_vocab_dir, out, max_position_embeddings=512)
    model = AutoModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    hidden = model(**tok("Привет, мир", return_tensors="pt")).last_hidden_state
    assert hidden.shape[0] == 1 and hidden.shape[2] == 264
    assert AutoModelForMaskedLM.from_pretrained(out).config.model_type == "distilbert"
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "264" in card and str(teacher_dir) in card and f"{info['parameters']:,}" in card
    fill = pipeline("fill-mask", model=str(out), tokenizer=str(out))
    assert len(fill("Привет, [MASK]!")) == 5
    assert json.loads((out / "run.json").read_text())["command"] == "init-student"


def test_parameter_count_of_the_5k_shape(teacher_dir, tmp_path):
    """3 x 264 x 792, 12 heads, 5,000 tokens -> 3.6M parameters (within 0.1M)."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=5000, dim=264, hidden_dim=792, n_layers=3, n_heads=12))
    assert abs(sum(p.numel() for p in model.parameters()) - 3.6e6) < 0.1e6


def test_embedding_row_is_mean_of_mapped_teacher_rows_truncated(teacher_dir, student_vocab_dir, tmp_path):
    out = tmp_path / "s"
    _init(teacher_dir, student_vocab_dir, out, dim=16, heads=2, ffn=40)
    teacher = BertForMaskedLM.from_pretrained(teacher_dir)
    t_tok, s_tok = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_vocab_dir)
    student = AutoModelForMaskedLM.from_pretrained(out)
    tmap = TokenMap.from_tokenizers(t_tok, s_tok)
    t_emb = teacher.bert.embeddings.word_embeddings.weight.detach().numpy()
    s_emb = student.distilbert.embeddings.word_embeddings.weight.detach().numpy()
    checked = 0
    specials = set(s_tok.all_special_tokens)
    for token, sid in s_tok.get_vocab().items():
        ids = tmap.student_to_teacher[sid]
        if token in specials or len(ids) < 2:
            continue
        np.testing.assert_allclose(s_emb[sid], t_emb[ids].mean(axis=0)[:16], rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked > 10
    # Special tokens take the teacher's row of the same token.
    np.testing.assert_allclose(s_emb[s_tok.cls_token_id], t_emb[t_tok.cls_token_id][:16], rtol=1e-6)
    # The MLM output bias follows the same mapping; the output matrix is tied to the embeddings.
    assert student.vocab_projector.weight.data_ptr() == student.distilbert.embeddings.word_embeddings.weight.data_ptr()


def test_layers_are_group_means_with_head_aware_crop(teacher_dir, student_vocab_dir, tmp_path):
    out = tmp_path / "s"
    info = _init(teacher_dir, student_vocab_dir, out, layers=1, dim=16, heads=2, ffn=40)
    assert info["initialisation"]["layer_groups"] == [[0, 1]]
    teacher = BertForMaskedLM.from_pretrained(teacher_dir)
    student = AutoModelForMaskedLM.from_pretrained(out)
    t_layers = teacher.bert.encoder.layer
    q_mean = (t_layers[0].attention.self.query.weight + t_layers[1].attention.self.query.weight).detach() / 2
    q_s = student.distilbert.transformer.layer[0].attention.q_lin.weight.detach()
    # teacher: 2 heads x 16 dims; student: 2 heads x 8 dims -> student head h = teacher head h, first 8 dims
    torch.testing.assert_close(q_s[0:8], q_mean[0:8, :16])
    torch.testing.assert_close(q_s[8:16], q_mean[16:24, :16])
    ff_mean = (t_layers[0].intermediate.dense.bias + t_layers[1].intermediate.dense.bias).detach() / 2
    torch.testing.assert_close(student.distilbert.transformer.layer[0].ffn.lin1.bias.detach(), ff_mean[:40])
    # Positions carry the folded token-type-0 embedding.
    pos = teacher.bert.embeddings.position_embeddings.weight + teacher.bert.embeddings.token_type_embeddings.weight[0]
    torch.testing.assert_close(student.distilbert.embeddings.position_embeddings.weight.detach(),
                               pos.detach()[:, :16])


def test_teacher_init_gives_teacher_like_predictions(teacher_dir, student_vocab_dir, tmp_path):
    """Same widths as the teacher and no reduction: the student must reproduce teacher hidden states."""
    out = tmp_path / "s"
    _init(teacher_dir, student_vocab_dir, out, layers=2, dim=32, heads=2, ffn=64)
    teacher = BertForMaskedLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForMaskedLM.from_pretrained(out).eval()
    # Feed the student the teacher's own specials-only sequence, which maps 1:1.
    t_tok, s_tok = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(out)
    t_ids = torch.tensor([[t_tok.cls_token_id, t_tok.sep_token_id]])
    s_ids = torch.tensor([[s_tok.cls_token_id, s_tok.sep_token_id]])
    with torch.no_grad():
        t_h = teacher.bert(t_ids).last_hidden_state
        s_h = student.distilbert(s_ids).last_hidden_state
    torch.testing.assert_close(s_h, t_h, atol=1e-5, rtol=1e-4)


def test_pca_and_random_init(teacher_dir, student_vocab_dir, tmp_path):
    info = _init(teacher_dir, student_vocab_dir, tmp_path / "pca", dim=16, heads=2, ffn=40, reduce="pca")
    assert info["initialisation"]["reduce"] == "pca"
    info = _init(teacher_dir, student_vocab_dir, tmp_path / "rnd", dim=16, heads=2, ffn=40, init="random")
    assert info["initialisation"] == {}
    a = AutoModel.from_pretrained(tmp_path / "pca").embeddings.word_embeddings.weight
    b = AutoModel.from_pretrained(tmp_path / "rnd").embeddings.word_embeddings.weight
    assert not torch.allclose(a, b)


def test_pca_reducer_projects_onto_principal_axes():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 6)) * np.array([10, 5, 1, 0.1, 0.1, 0.1])
    red = Reducer(6, 2, "pca", data.astype(np.float32))
    proj = red.projection
    np.testing.assert_allclose(proj.T @ proj, np.eye(2), atol=1e-5)
    assert abs(abs(proj[0, 0]) - 1) < 0.05 and abs(abs(proj[1, 1]) - 1) < 0.05


def test_layer_groups_uneven():
    assert layer_groups(12, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert layer_groups(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert layer_groups(1, 2) == [[0], [0]]


def test_uneven_layers_reported(teacher_dir, student_vocab_dir, tmp_path):
    info = _init(teacher_dir, student_vocab_dir, tmp_path / "s", layers=3, dim=16, heads=2, ffn=40)
    assert info["initialisation"]["layer_groups"] == [[0], [0], [1]]


def test_exact_first_sources(teacher_dir, student_vocab_dir):
    t_tok, s_tok = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_vocab_dir)
    tmap = TokenMap.from_tokenizers(t_tok, s_tok)
    exact = embedding_sources(tmap, s_tok, "exact-first")
    t_vocab = t_tok.get_vocab()
    shared = [(tok, sid) for tok, sid in s_tok.get_vocab().items() if tok in t_vocab]
    assert shared
    for tok, sid in shared:
        assert exact[sid].tolist() == [t_vocab[tok]]


def test_missing_teacher_dir_is_clear(student_vocab_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _init(tmp_path / "nope", student_vocab_dir, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match="--dim 100 must be divisible by --heads 12"):
        InitStudentConfig(teacher="t", vocab="v", output="o", dim=100)


# --- teachers with and without a masked-LM head


def _headless_copy(teacher_dir, out, architectures=None):
    """The tiny teacher's encoder saved as a plain ``BertModel`` (an embedding model: no MLM head)."""
    from transformers import BertModel

    base = BertForMaskedLM.from_pretrained(teacher_dir).bert
    model = BertModel(base.config)
    model.load_state_dict(base.state_dict(), strict=False)  # the pooler stays random, as in e5's checkpoint
    if architectures is not None:
        model.config.architectures = architectures
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)
    return out


def test_load_teacher_with_mlm_head(teacher_dir, tiny_student_dir):
    model, tok = load_teacher(str(teacher_dir))
    assert type(model).__name__ == "BertForMaskedLM" and has_mlm_head(model)
    assert not model.training and tok.mask_token == "[MASK]"
    distil, _ = load_teacher(str(tiny_student_dir))  # DistilBERT heads (vocab_projector) count too
    assert type(distil).__name__ == "DistilBertForMaskedLM" and has_mlm_head(distil)


def test_load_teacher_without_mlm_head_gets_no_random_head(teacher_dir, tmp_path):
    out = _headless_copy(teacher_dir, tmp_path / "headless")
    model, tok = load_teacher(str(out))
    assert tok.unk_token == "[UNK]"
    assert type(model).__name__ == "BertModel" and not has_mlm_head(model)
    assert not any(name.startswith(MLM_HEAD_PREFIXES) for name, _ in model.named_parameters())
    reference = BertForMaskedLM.from_pretrained(teacher_dir).bert.embeddings.word_embeddings.weight
    assert torch.equal(model.embeddings.word_embeddings.weight, reference)
    # The weights decide, not a config that claims a head the checkpoint does not have.
    lying = _headless_copy(teacher_dir, tmp_path / "lying", architectures=["BertForMaskedLM"])
    assert not has_mlm_head(load_teacher(str(lying))[0])
    weights = extract_teacher_weights(model)
    assert weights.head_dense is None and weights.output_bias is None and len(weights.layers) == 2


def test_checkpoint_without_readable_weights_falls_back_to_architectures(tmp_path):
    from transformers import BertConfig

    assert checkpoint_has_mlm_head(str(tmp_path), BertConfig(architectures=["BertForMaskedLM"]))
    assert checkpoint_has_mlm_head("org/model", BertConfig(architectures=["BertForPreTraining"]))
    assert not checkpoint_has_mlm_head("org/model", BertConfig(architectures=["BertModel"]))
    assert not checkpoint_has_mlm_head("org/model", BertConfig())


def test_unloadable_teacher_dir_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--teacher: cannot load a model and tokenizer from directory"):
        load_teacher(str(tmp_path / "empty"))


# --- a SentencePiece teacher without an MLM head (the shape of multilingual-e5-small, tiny)


@pytest.fixture
def sentencepiece_teacher_dir(tmp_path):
    """A 4-layer ``BertModel`` (48 hidden = 12 heads of 4) with an XLM-R-style Unigram tokenizer, no head."""
    from transformers import BertConfig, BertModel

    from .families import sentencepiece_tokenizer

    tok = sentencepiece_tokenizer()
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(tok) + 7, hidden_size=48, num_hidden_layers=4, num_attention_heads=12,
                        intermediate_size=96, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    out = tmp_path / "sp-teacher"
    BertModel(config).save_pretrained(out)  # 7 spare rows beyond the pieces, as e5 has (250,037 > 250,002)
    tok.save_pretrained(out)
    return out


def test_init_from_sentencepiece_teacher_without_mlm_head(sentencepiece_teacher_dir, student_vocab_dir, tmp_path):
    from transformers import BertModel, DistilBertForMaskedLM

    out = tmp_path / "s"
    info = _init(sentencepiece_teacher_dir, student_vocab_dir, out, layers=2, dim=36, heads=12, ffn=60)
    init = info["initialisation"]
    assert info["token_map"]["family"] == "sentencepiece" and not info["teacher_mlm_head"]
    assert init["mlm_head"] == "student" and init["output_bias_rows_from_teacher"] == 0
    assert init["layer_groups"] == [[0, 1], [2, 3]]
    report = json.loads((out / "init_report.json").read_text(encoding="utf-8"))
    assert any("no MLM head" in note for note in report["initialisation"]["notes"])

    teacher = BertModel.from_pretrained(sentencepiece_teacher_dir)
    student = AutoModelForMaskedLM.from_pretrained(out)
    assert type(student).__name__ == "DistilBertForMaskedLM" and student.config.vocab_size == 300
    t_tok, s_tok = AutoTokenizer.from_pretrained(sentencepiece_teacher_dir), AutoTokenizer.from_pretrained(out)
    tmap = TokenMap.from_tokenizers(t_tok, s_tok)
    t_emb = teacher.embeddings.word_embeddings.weight.detach().numpy()
    s_emb = student.distilbert.embeddings.word_embeddings.weight.detach().numpy()
    # Rows from the mapped teacher rows through the inverse map: "кот" from ▁кот, ▁кошка... (all ▁к... words).
    checked = 0
    for token, sid in s_tok.get_vocab().items():
        ids = tmap.student_to_teacher[sid]
        if token in s_tok.all_special_tokens or not len(ids):
            continue
        if token.removeprefix("##")[0].isalnum():  # punctuation is word-initial whatever the teacher's flag
            assert all(tmap.teacher_tokens[i].startswith("▁") != token.startswith("##") for i in ids), token
        np.testing.assert_allclose(s_emb[sid], t_emb[ids].mean(axis=0)[:36], rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked > 100
    # Specials by role: [CLS] takes the row of <s>, [SEP] of </s>.
    np.testing.assert_allclose(s_emb[s_tok.cls_token_id], t_emb[t_tok.convert_tokens_to_ids("<s>")][:36])
    np.testing.assert_allclose(s_emb[s_tok.sep_token_id], t_emb[t_tok.convert_tokens_to_ids("</s>")][:36])
    # Head-aware crop with 12 heads in both models (4 -> 3 dims per head, as e5's 32 -> 22).
    layers = teacher.encoder.layer
    q_mean = ((layers[2].attention.self.query.weight + layers[3].attention.self.query.weight) / 2).detach()
    q_s = student.distilbert.transformer.layer[1].attention.q_lin.weight.detach()
    for h in range(12):
        torch.testing.assert_close(q_s[3 * h:3 * h + 3], q_mean[4 * h:4 * h + 3, :36])
    o_mean = ((layers[2].attention.output.dense.weight + layers[3].attention.output.dense.weight) / 2).detach()
    o_s = student.distilbert.transformer.layer[1].attention.out_lin.weight.detach()
    torch.testing.assert_close(o_s[:, 3:6], o_mean[:36, 4:7])
    # The head: the student's own initialisation (same seed, same draws), a zero output bias, tied weights.
    torch.manual_seed(42)
    fresh = DistilBertForMaskedLM(student.config)
    torch.testing.assert_close(student.vocab_transform.weight, fresh.vocab_transform.weight)
    assert not student.vocab_projector.bias.detach().any()
    assert student.vocab_projector.weight.data_ptr() == student.distilbert.embeddings.word_embeddings.weight.data_ptr()
    logits = student(**s_tok("Привет, [MASK]!", return_tensors="pt")).logits
    assert logits.shape[-1] == 300 and torch.isfinite(logits).all()


def test_init_from_sentencepiece_teacher_with_pca_and_exact_first(sentencepiece_teacher_dir, student_vocab_dir,
                                                                  tmp_path):
    info = _init(sentencepiece_teacher_dir, student_vocab_dir, tmp_path / "s", layers=3, dim=36, heads=12, ffn=60,
                 reduce="pca", embedding_sources="exact-first")
    assert info["initialisation"]["reduce"] == "pca" and info["initialisation"]["layer_groups"][0] == [0, 1]
    t_tok, s_tok = AutoTokenizer.from_pretrained(sentencepiece_teacher_dir), AutoTokenizer.from_pretrained(
        student_vocab_dir)
    tmap = TokenMap.from_tokenizers(t_tok, s_tok)
    exact = embedding_sources(tmap, s_tok, "exact-first")
    # The same token across families (▁кот ~ кот, ами ~ ##ами) gives its row alone; the inverse map has more.
    words = [(t, s) for t, s in tmap.intersection.tolist() if s not in s_tok.all_special_ids]
    assert len(words) > 20
    assert any(tmap.teacher_tokens[t].startswith("▁") for t, _ in words)
    assert any(len(tmap.student_to_teacher[s]) > 1 for _, s in words)
    for t, s in words:
        assert exact[s].tolist() == [t]
        assert tmap.teacher_tokens[t].removeprefix("▁") == tmap.student_tokens[s].removeprefix("##")


def test_heads_index_for_e5_shapes():
    """12 heads of 32 (384) -> 12 heads of 22 (264): student head h = the first 22 dims of teacher head h."""
    student, teacher = _heads_index(12, 32, 12, 22)
    assert len(student) == 264 and sorted(student.tolist()) == list(range(264))
    assert teacher[22 * 5:22 * 6].tolist() == list(range(32 * 5, 32 * 5 + 22))
