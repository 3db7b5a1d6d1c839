"""Corpus reader: formats, gzip, directories, NFC, empty documents, errors naming file and line."""

from __future__ import annotations

import gzip
import json
import unicodedata

import pytest

from distilrubert.corpus import Corpus, CorpusError, iter_documents, split_heldout

from .conftest import SHARED_DATA


def test_txt_jsonl_csv_gz_and_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("первая строка\n\n  вторая  \n", encoding="utf-8")
    with gzip.open(tmp_path / "d" / "sub" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "из gzip", "category": "x"}, ensure_ascii=False) + "\n")
    (tmp_path / "d" / "c.csv").write_text('sentence,count\n"Привет, мир",3\n"многострочный\nтекст",1\n',
                                          encoding="utf-8")
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / "d" / ".hidden.txt").write_text("скрытый\n", encoding="utf-8")
    corpus = Corpus([tmp_path / "d"])
    assert [p.name for p in corpus.files()] == ["a.txt", "c.csv", "b.jsonl.gz"]
    docs = list(corpus)
    assert docs == ["первая строка", "вторая", "Привет, мир", "многострочный\nтекст", "из gzip"]
    assert list(corpus) == docs  # re-iterable
    assert "documents read" in corpus.report()


def test_nfc_and_text_field(tmp_path):
    nfd = unicodedata.normalize("NFD", "йогурт ёжик")
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"body": nfd}) + "\n" + json.dumps({"body": ""}) + "\n", encoding="utf-8")
    assert list(iter_documents([path], text_field="body")) == ["йогурт ёжик"]
    assert list(Corpus([path], text_field="text,body")) == ["йогурт ёжик"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', "bad.jsonl:2: invalid JSON"),
        ("bad.jsonl", b'{"text": "ok"}\n\n{"title": "x"}\n', "bad.jsonl:3: no field 'text'"),
        ("bad.jsonl", b'{"text": "ok"}\n[1, 2]\n', "bad.jsonl:2: expected a JSON object"),
        ("bad.txt", "строка\n".encode() + b"\xff\xfe bad\n", "bad.txt:2: invalid UTF-8"),
        ("bad.csv", b"text,label\nok,1\n\xff,2\n", "bad.csv:3: invalid UTF-8"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        list(Corpus([path]))
    corpus = Corpus([path], on_error="skip")
    assert list(corpus) == ["ok"] if name != "bad.txt" else list(corpus) == ["строка"]
    assert sum(corpus.skipped.values()) == 1
    assert "1 malformed line(s) skipped" in corpus.report()


def test_missing_paths_and_columns(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.txt does not exist"):
        list(Corpus([tmp_path / "nope.txt"]))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"x.csv:1: no column 'text'"):
        list(Corpus([tmp_path / "x.csv"]))
    (tmp_path / "x.xlsx").write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="unknown file type"):
        Corpus([tmp_path / "x.xlsx"]).files()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no"):
        Corpus([tmp_path / "empty"]).files()


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "t.txt.gz"
    data = gzip.compress(("строка\n" * 1000).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"t\.txt\.gz: cannot read"):
        list(Corpus([path]))


def test_heldout_split_is_stable_and_sized():
    texts = [f"документ {i}" for i in range(5000)]
    held = [t for t in texts if split_heldout(t, 0.1)]
    assert 350 < len(held) < 650
    assert held == [t for t in texts if split_heldout(t, 0.1)]


@pytest.mark.skipif(not (SHARED_DATA / "corpus").is_dir(), reason="../shared/data not present")
def test_shared_corpora_read_as_they_are():
    corpus = Corpus(sorted((SHARED_DATA / "corpus").iterdir()))
    counts: dict[str, int] = {}
    for path in corpus.files():
        counts[path.name] = sum(1 for _ in Corpus([path]))
    assert counts["fortunes_ru.jsonl"] > 20_000 - 100
    assert counts["docs_ru.jsonl"] > 16_000
    assert counts["subtitles_ru_top_sentences.csv"] >= 9_900
    if "dialogues_anekdots_ru.jsonl.gz" in counts:  # the dialogue sets arrived later
        assert counts["dialogues_anekdots_ru.jsonl.gz"] > 87_000 and counts["dialogues_movies_ru.jsonl.gz"] > 50_000


def _sample_summary() -> dict:
    from distilrubert.corpus import sample_corpus

    return json.loads((sample_corpus().parent / "sample_corpus.json").read_text(encoding="utf-8"))


def test_embedded_sample_matches_its_summary_and_split_rule():
    import hashlib
    import re

    from distilrubert.corpus import sample_corpus

    summary = _sample_summary()
    fraction, sides = summary["heldout_fraction"], {}
    for split, side in (("train", False), ("heldout", True)):
        path = sample_corpus(split)
        data = path.read_bytes()
        assert summary["files"][path.name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert summary["files"][path.name]["bytes"] == len(data)
        rows = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines()]
        # The held-out file is exactly the texts the shared split rule holds out.
        assert all(split_heldout(r["text"], fraction) == side for r in rows)
        for name, stats in summary["sources"].items():
            texts = [r["text"] for r in rows if r["source"] == name]
            assert len(texts) == stats[f"{split}_documents"] and sum(map(len, texts)) == stats[f"{split}_characters"]
        sides[split] = rows
    every = [re.sub(r"\s+", " ", r["text"]) for rows in sides.values() for r in rows]
    assert len(set(every)) == len(every)  # deduplicated across sources and across the split
    assert {"dialogues_anekdots", "dialogues_movies"} <= {r["source"] for r in sides["train"]}
    assert summary["total_bytes"] <= 3_100_000  # the repository budget of the embedded corpus


@pytest.mark.skipif(not (SHARED_DATA / "corpus" / "dialogues_movies_ru.jsonl.gz").is_file(),
                    reason="../shared/data/corpus with the dialogue sets not present")
def test_build_script_reproduces_the_embedded_sample(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    summary = _sample_summary()
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_sample_corpus.py"
    subprocess.run([sys.executable, str(script), "--shared", str(SHARED_DATA / "corpus"), "--output", str(tmp_path),
                    "--heldout", str(summary["heldout_fraction"]), "--dialogue-share", str(summary["dialogue_share"]),
                    "--seed", str(summary["seed"])], check=True, capture_output=True)
    rebuilt = json.loads((tmp_path / "sample_corpus.json").read_text(encoding="utf-8"))
    assert rebuilt == summary


def test_deeply_nested_json_and_lone_surrogates_are_bad_lines_not_tracebacks(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "первая"}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"text": "a\\ud800b"}\n'
                    '{"text": "последняя"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON: nested too deeply"):
        list(Corpus([path]))
    corpus = Corpus([path], on_error="skip")
    assert list(corpus) == ["первая", "последняя"]
    assert corpus.first_errors[1].endswith("c.jsonl:3: not valid Unicode: a lone surrogate (U+D800) at character 1")


def test_a_truncated_gzip_names_the_line_and_skip_keeps_what_was_read(tmp_path):
    data = gzip.compress("".join(f'{{"text": "строка {i}"}}\n' for i in range(3000)).encode("utf-8"))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.gz: cannot read after line \d+ \(corrupt or truncated file\?\)"
                                          r".*pass --on-error skip to keep the lines read before it"):
        list(Corpus([path]))
    corpus = Corpus([path], on_error="skip")
    texts = list(corpus)
    assert 0 < len(texts) < 3000 and texts[0] == "строка 0"
    assert corpus.skipped == {str(path): 1} and "cannot read after line" in corpus.first_errors[0]


def test_parquet_and_arrow_files_and_directories_are_read_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["Привет!", "  Как дела? ", None, "Пока."], "id": [1, 2, 3, 4]}
    table = datasets.Dataset.from_dict(rows)
    (tmp_path / "d").mkdir()
    table.to_parquet(str(tmp_path / "d" / "part-0.parquet"))
    arrow = tmp_path / "d" / "part-1.arrow"
    import pyarrow as pa

    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.data.table.schema) as writer:
        writer.write_table(table.data.table)
    corpus = Corpus([tmp_path / "d"])
    assert list(corpus) == ["Привет!", "Как дела?", "Пока."] * 2
    assert corpus.key()[0][0].endswith("part-0.parquet") and "2 file(s)" in corpus.report()
    # --text-field and the bad-row rules hold for tables too.
    other = datasets.Dataset.from_dict({"body": ["раз", "два"], "n": [1, 2]})
    other.to_parquet(str(tmp_path / "o.parquet"))
    assert list(Corpus([tmp_path / "o.parquet"], text_field="body")) == ["раз", "два"]
    with pytest.raises(CorpusError, match=r"o\.parquet:1: field 'n' is int, not a string"):
        list(Corpus([tmp_path / "o.parquet"], text_field="n"))
    skipping = Corpus([tmp_path / "o.parquet"], text_field="n", on_error="skip")
    assert list(skipping) == [] and skipping.skipped == {str(tmp_path / "o.parquet"): 2}
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"bad\.parquet: cannot read as parquet"):
        list(Corpus([tmp_path / "bad.parquet"]))


def test_a_hub_dataset_offline_is_one_clear_line(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    corpus = Corpus(["hf:someone/russian-dialogues:default:validation"])
    assert corpus.key() == [["hf", "someone/russian-dialogues", "default", "validation"]]
    with pytest.raises(CorpusError, match=r"--corpus hf:someone/russian-dialogues:default:validation: cannot load "
                                          r"it from the Hub"):
        list(corpus)
    with pytest.raises(CorpusError, match=r"--corpus hf:: expected hf:NAME\[:CONFIG\]\[:SPLIT\]"):
        Corpus(["hf:"])
