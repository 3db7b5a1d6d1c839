"""Encoder (order, equality with plain transformers, backends) and export (ONNX parity, int8, sentence-transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from distilrubert.cli import main
from distilrubert.encoder import Encoder
from distilrubert.export import export_encoder_onnx, parity_check
from distilrubert.runtime import pool
from tests.conftest import SENTENCES

# Lengths vary a lot so sorting changes the batches.
TEXTS = [SENTENCES[3], "Да.", SENTENCES[7] * 3, "Ну что, поехали?", SENTENCES[0], SENTENCES[12] + SENTENCES[20]]


def plain_transformers(model_dir, texts, pooling):
    """The model card's way: one text at a time, AutoModel in eager PyTorch."""
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    rows = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        rows.append(pool(hidden.numpy(), enc["attention_mask"].numpy(), pooling)[0])
    return np.stack(rows)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_torch_encoder_matches_plain_transformers_in_input_order(tiny_student_dir, pooling):
    enc = Encoder.from_pretrained(tiny_student_dir, backend="torch", max_length=128)
    got = enc.encode(TEXTS, batch_size=4, pooling=pooling)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, plain_transformers(tiny_student_dir, TEXTS, pooling), atol=1e-5)
    # Sorting must not change the result (rows come back in input order), nor the batch size.
    np.testing.assert_allclose(got, enc.encode(TEXTS, batch_size=1, pooling=pooling, sort=False), atol=1e-5)
    np.testing.assert_allclose(got[::-1], enc.encode(TEXTS[::-1], batch_size=3, pooling=pooling), atol=1e-5)


def test_encoder_normalize_single_string_and_errors(tiny_student_dir):
    enc = Encoder.from_pretrained(tiny_student_dir, backend="torch")
    vec = enc.encode("Привет!", normalize=True, pooling="mean")
    assert vec.shape == (1, 16)
    assert np.linalg.norm(vec[0]) == pytest.approx(1.0, abs=1e-5)
    assert enc.max_length == 128  # capped by the model's positions
    with pytest.raises(ValueError, match="pooling"):
        enc.encode(["a"], pooling="max")
    with pytest.raises(FileNotFoundError):
        Encoder.from_pretrained(tiny_student_dir / "missing")
    with pytest.raises(ValueError, match="backend"):
        Encoder.from_pretrained(tiny_student_dir, backend="tensorflow")


class RecordingRunner:
    """A :class:`distilrubert.runtime.Runner` that records the shape of every padded batch it runs."""

    def __init__(self, inner, packing: bool = False, on_cpu: bool = False):
        self.inner, self.packing, self.on_cpu, self.shapes = inner, packing, on_cpu, []

    def __call__(self, ids, mask):
        self.shapes.append(ids.shape)
        return self.inner(ids, mask)

    def run_single(self, ids, mask):
        return self(ids, mask)

    def packed(self, ids):
        return self.inner.packed(ids)


def test_batches_are_padded_only_to_their_longest_text(tiny_student_dir):
    enc = Encoder.from_pretrained(tiny_student_dir, backend="torch")
    enc.runner = RecordingRunner(enc.runner)  # padded batches only (no packing, no length split)
    enc.encode(["Да."] * 4 + [SENTENCES[7] * 3], batch_size=4)
    short = len(enc.tokenize(["Да."])[0])
    widths = [shape[1] for shape in enc.runner.shapes]
    assert widths[0] == short and widths[1] > short


@pytest.mark.parametrize("model", ["student", "bert"])
def test_packed_batches_give_the_padded_vectors(tiny_student_dir, _teacher_dir, model):
    """Mixed-length batches run unpadded, back to back (torch, CPU), with the vectors of padded batches."""
    model_dir = tiny_student_dir if model == "student" else _teacher_dir
    enc = Encoder.from_pretrained(model_dir, backend="torch", max_length=128)
    assert enc.runner.packing
    calls = []
    packed = enc.runner.packed
    enc.runner.packed = lambda ids: (calls.append([len(x) for x in ids]), packed(ids))[1]
    for pooling in ("cls", "mean"):
        got = enc.encode(TEXTS, batch_size=8, pooling=pooling)
        enc.runner.packing = False
        want = enc.encode(TEXTS, batch_size=8, pooling=pooling)
        enc.runner.packing = True
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got, plain_transformers(model_dir, TEXTS, pooling), atol=1e-5)
    assert len(calls) == 2 and sorted(calls[0]) == sorted(len(x) for x in enc.tokenize(TEXTS))
    # Equal lengths have no padding to save: the padded path runs.
    enc.encode(["Да."] * 4, batch_size=8)
    assert len(calls) == 2


def test_packing_is_dropped_when_the_probe_disagrees(tiny_student_dir, monkeypatch):
    """An attention function that lets texts see each other fails the load-time probe: padded batches only."""
    import distilrubert.runtime as runtime_module

    def leaky(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None, **kwargs):
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        return torch.matmul(scores.softmax(dim=-1), value).transpose(1, 2), None

    monkeypatch.setattr(runtime_module, "packed_attention", leaky)
    try:
        enc = Encoder.from_pretrained(tiny_student_dir, backend="torch", max_length=128)
        assert not enc.runner.packing
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=8, pooling="mean"),
                                   plain_transformers(tiny_student_dir, TEXTS, "mean"), atol=1e-5)
    finally:  # the attention registry is process-wide: put the real function back
        monkeypatch.undo()
        runtime_module._register_packed_attention()


def test_cpu_batches_split_where_padding_would_dominate():
    lengths = [10, 3, 30, 3, 10, 3]
    order = np.argsort(lengths, kind="stable")
    split = [[lengths[i] for i in b] for b in Encoder._batches(order, lengths, 32, split=True)]
    assert split == [[3, 3, 3], [10, 10], [30]]
    assert [len(b) for b in Encoder._batches(order, lengths, 32, split=False)] == [6]
    assert [len(b) for b in Encoder._batches(np.arange(7), [5] * 7, 3, split=True)] == [3, 3, 1]  # the size cap holds
    # Every text once, in the given order, sorted or not.
    unsorted = np.arange(6)
    assert np.concatenate(Encoder._batches(unsorted, lengths, 4, split=True)).tolist() == list(range(6))


def test_onnx_encoder_runs_mixed_lengths_as_similar_length_batches(tiny_student_dir, _tiny_onnx):
    enc = Encoder.from_pretrained(_tiny_onnx["fp32"].parent, backend="onnx")
    enc.runner = RecordingRunner(enc.runner, on_cpu=True)
    got = enc.encode(TEXTS, batch_size=8, pooling="mean")
    shapes = enc.runner.shapes
    assert len(shapes) > 1 and sum(s[0] for s in shapes) == len(TEXTS)
    assert sum(s[0] * s[1] for s in shapes) <= 1.2 * sum(len(x) for x in enc.tokenize(TEXTS)) + max(
        s[1] for s in shapes)
    np.testing.assert_allclose(got, plain_transformers(tiny_student_dir, TEXTS, "mean"), atol=1e-4)


def test_onnx_export_parity_fp32_and_int8(tiny_student_dir, _tiny_onnx):
    report = parity_check(tiny_student_dir, _tiny_onnx["fp32"], _tiny_onnx["int8"], "encoder", list(SENTENCES))
    assert report["max_abs_diff_fp32_vs_torch"] < 1e-4
    assert 0.9 < report["mean_cosine_int8_vs_fp32"] <= 1.0 + 1e-6
    assert _tiny_onnx["fused"].get("Attention") == 2  # the ORT fusion recognised both layers' attention


def _op_types(path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _session_op_types(path, tmp_path, disabled) -> set[str]:
    """Operator types of the graph ONNX Runtime actually runs (its optimised graph, saved)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return _op_types(tmp_path / "session.onnx")


def test_no_skip_layer_normalization_in_export_or_session(_tiny_onnx, tmp_path):
    from distilrubert.runtime import ORT_DISABLED_OPTIMIZERS

    # The exported file keeps Add + LayerNormalization (SkipLayerNormalization is the slower kernel).
    assert "SkipLayerNormalization" not in _op_types(_tiny_onnx["fp32"])
    assert {"Attention", "LayerNormalization"} <= _op_types(_tiny_onnx["fp32"])
    # ORT would fuse them again at load time; the package's sessions disable that fusion. Without the
    # switch the check sees the op, so it is able to fail.
    assert "SkipLayerNormalization" not in _session_op_types(_tiny_onnx["fp32"], tmp_path,
                                                             list(ORT_DISABLED_OPTIMIZERS))
    assert "SkipLayerNormalization" in _session_op_types(_tiny_onnx["fp32"], tmp_path, [])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_unmasked_session_for_unpadded_batches_gives_the_same_vectors(tiny_student_dir, _tiny_onnx, tmp_path,
                                                                      precision):
    import onnx

    from distilrubert.export import export_graph, load_model
    from distilrubert.runtime import unmasked_graph

    enc = Encoder.from_pretrained(_tiny_onnx["fp32"].parent, backend="onnx", quantized=precision == "int8")
    assert enc.runner.unmasked is not None  # the fused graph: the mask only reaches the attention ops
    ids, mask = enc._pad(enc.tokenize([SENTENCES[1]]))
    calls, unmasked = [], enc.runner.unmasked

    class Spy:
        def run(self, *args):
            calls.append(1)
            return unmasked.run(*args)

    enc.runner.unmasked = Spy()
    fast = enc.runner.run_single(ids, mask)  # one text, no padding: the unmasked session
    assert calls == [1]
    np.testing.assert_allclose(fast, enc.runner(ids, mask), atol=1e-6)  # the masked session
    enc.encode(TEXTS, pooling="mean")  # batches (split by length, some of one text) keep to the masked session
    enc.encode(TEXTS[0], pooling="mean")
    assert calls == [1, 1]
    # With padding the masked session runs, so padded batches match one text at a time.
    ref = Encoder.from_pretrained(tiny_student_dir, backend="torch").encode(TEXTS, pooling="mean")
    got = enc.encode(TEXTS, pooling="mean")
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:  # int8: activations are quantised per call, so compare directions
        cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cosine.min() > 0.99
    # An unfused graph uses the mask elsewhere (an additive bias): no unmasked variant.
    raw = tmp_path / "raw.onnx"
    export_graph(load_model(tiny_student_dir, "encoder", False), raw, "encoder", 17)
    assert unmasked_graph(onnx.load(str(raw))) is None


def test_onnx_encoder_equals_torch_encoder(tiny_student_dir, _tiny_onnx):
    onnx_dir = _tiny_onnx["fp32"].parent
    fast = Encoder.from_pretrained(onnx_dir, backend="auto", threads=1)
    assert fast.backend == "onnx"
    ref = Encoder.from_pretrained(tiny_student_dir, backend="torch")
    np.testing.assert_allclose(fast.encode(TEXTS, pooling="mean"), ref.encode(TEXTS, pooling="mean"), atol=1e-4)
    int8 = Encoder.from_pretrained(onnx_dir, backend="onnx", quantized=True)
    assert int8.backend == "onnx-int8" and int8.encode(TEXTS).shape == (len(TEXTS), 16)


def test_onnx_backend_exports_on_the_fly(tiny_student):
    enc = Encoder.from_pretrained(tiny_student, backend="onnx", quantized=False)
    ref = Encoder.from_pretrained(tiny_student, backend="torch")
    np.testing.assert_allclose(enc.encode(TEXTS), ref.encode(TEXTS), atol=1e-4)


def test_export_cli_writes_onnx_int8_and_parity(tiny_student, sentence_file, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_student), "--output", str(out), "--quantize", "int8",
                 "--sentences", str(sentence_file)]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["sentences"] == len(SENTENCES) and parity["max_abs_diff_fp32_vs_torch"] < 1e-4
    assert "mean_cosine_int8_vs_fp32" in parity and "max_abs_diff" in capsys.readouterr().out
    assert {"model.onnx", "model_quantized.onnx", "config.json", "tokenizer.json", "run.json"} <= {
        p.name for p in out.iterdir()}
    # An existing output is not overwritten without --overwrite (exit 1, one line on stderr).
    assert main(["export", "--model", str(tiny_student), "--output", str(out)]) == 1


def test_export_cli_rejects_bad_flags(tiny_student, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert "nope: not a model directory (no config.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["export", "--model", str(tiny_student), "--output", str(tmp_path / "o"),
              "--format", "sentence-transformers", "--quantize", "int8"])
    assert "--quantize applies to --format onnx only" in capsys.readouterr().err


def test_export_fine_tuned_head_parity(tiny_student, tmp_path):
    torch.manual_seed(0)
    head = AutoModelForSequenceClassification.from_pretrained(tiny_student, num_labels=3)
    head_dir = tmp_path / "cls"
    head.save_pretrained(head_dir)
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(head_dir)
    result = export_encoder_onnx(head_dir, tmp_path / "cls-onnx", quantize=True)
    assert result["task"] == "sequence-classification"
    report = parity_check(head_dir, result["fp32"], result["int8"], result["task"], list(SENTENCES))
    assert report["max_abs_diff_fp32_vs_torch"] < 1e-4
    assert 0.0 <= report["argmax_agreement_int8_vs_fp32"] <= 1.0


def test_sentence_transformers_loads_export_offline_with_mean_pooling(tiny_student, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    out = tmp_path / "st"
    assert main(["export", "--model", str(tiny_student), "--output", str(out), "--format",
                 "sentence-transformers"]) == 0
    model = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    got = model.encode(TEXTS, batch_size=4, show_progress_bar=False)
    ref = Encoder.from_pretrained(out, backend="torch").encode(TEXTS, pooling="mean")
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True


@pytest.mark.parametrize("max_length", [16, 128])
def test_fast_tokenize_equals_the_transformers_tokenizer(tiny_student_dir, max_length):
    # Encoder.tokenize calls the Rust tokenizer directly: same ids as the HF call, truncation included.
    encoder = Encoder.from_pretrained(tiny_student_dir, backend="torch", max_length=max_length)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    texts = [*TEXTS, SENTENCES[5] * 20, ""]
    expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    assert encoder.tokenize(texts) == expected
    assert [encoder.tokenize([t])[0] for t in texts] == expected
    assert max(len(x) for x in expected) == max_length


def test_auto_backend_exports_once_into_the_content_keyed_cache(tiny_student, monkeypatch, tmp_path):
    import os

    from distilrubert import onnx_cache

    root = tmp_path / "onnx-cache"
    monkeypatch.setenv("DISTILRUBERT_ONNX_CACHE", str(root))
    enc = Encoder.from_pretrained(tiny_student)
    key = onnx_cache.content_key(tiny_student)
    parity = json.loads((root / key / "parity.json").read_text())
    int8 = parity["mean_cosine_int8_vs_fp32"] >= onnx_cache.INT8_MIN_COSINE
    assert enc.backend == ("onnx-int8" if int8 else "onnx")
    want = plain_transformers(tiny_student, TEXTS, "mean")
    got = enc.encode(TEXTS, pooling="mean")
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > (0.95 if int8 else 0.9999)
    # Reused by a later call: no second export.
    monkeypatch.setattr("distilrubert.export.export_encoder_onnx", lambda *a, **k: pytest.fail("exported again"))
    assert Encoder.from_pretrained(tiny_student, quantized=False).backend == "onnx"
    np.testing.assert_allclose(Encoder.from_pretrained(tiny_student, quantized=False).encode(TEXTS, pooling="mean"),
                               want, atol=1e-4)
    assert [p.name for p in root.iterdir()] == [key]
    # Times do not count, content does; torch stays available.
    os.utime(tiny_student / "config.json")
    assert onnx_cache.content_key(tiny_student) == key
    config = json.loads((tiny_student / "config.json").read_text())
    (tiny_student / "config.json").write_text(json.dumps({**config, "dropout": 0.2}))
    assert onnx_cache.content_key(tiny_student) != key
    assert Encoder.from_pretrained(tiny_student, backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="quantized=True needs backend='onnx'"):
        Encoder.from_pretrained(tiny_student, backend="torch", quantized=True)


def test_a_concurrent_first_export_uses_the_copy_that_won(tiny_student, monkeypatch, tmp_path):
    import shutil

    from distilrubert import export, onnx_cache

    root = tmp_path / "cache"
    real = export.export_encoder_onnx
    final = root / onnx_cache.content_key(tiny_student)

    def racing(model_dir, out_dir, **kwargs):  # another process finishes first, while this one exports
        result = real(model_dir, out_dir, **kwargs)
        shutil.copytree(out_dir, final)
        (final / "parity.json").write_text(json.dumps({"mean_cosine_int8_vs_fp32": 1.0, "winner": True}))
        return result

    monkeypatch.setattr(export, "export_encoder_onnx", racing)
    got = onnx_cache.cached_export(tiny_student, root)
    assert got == final and json.loads((final / "parity.json").read_text())["winner"]
    assert [p.name for p in root.iterdir()] == [final.name]  # the loser's partial copy is gone
