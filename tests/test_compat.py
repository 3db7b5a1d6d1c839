"""Every kind of directory this project writes loads on transformers 4.x as on 5.x, with the same ids and outputs.

The other environment is named by ``DISTILRUBERT_COMPAT_PYTHON`` (a python with transformers 4.41-4.57,
torch and sentence-transformers 5; ``.ci/run`` builds one). Without it only this environment's half runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distilrubert.cli import main

from .test_finetune import DATA, QUICK, _sentiment_csv

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compat_fingerprint.py"
OTHER = os.environ.get("DISTILRUBERT_COMPAT_PYTHON")


def _fingerprints(python: str, dirs: list[Path]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([python, str(SCRIPT), *map(str, dirs)], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, _student_vocab_dir, tiny_student_dir, _teacher_dir, tiny_corpus) -> list[Path]:
    """build-vocab, init-student, distill, finetune, export (ONNX and sentence-transformers) outputs."""
    root = tmp_path_factory.mktemp("compat")
    distilled, tuned = root / "distilled", root / "finetuned"
    assert main(["distill", "--teacher", str(_teacher_dir), "--student", str(tiny_student_dir), "--corpus",
                 str(tiny_corpus), "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--cache-dir",
                 str(root / "cache"), "--output", str(distilled), "--no-progress", "--eval-every", "0",
                 "--save-every", "0", "--no-tensorboard"]) == 0
    train = _sentiment_csv(root / "train.csv")
    assert main(["finetune", "--task", "sentiment", "--model", str(tiny_student_dir), "--train", str(train),
                 "--eval", str(DATA / "rusentiment.csv"), "--output", str(tuned), *QUICK]) == 0
    assert main(["export", "--model", str(tiny_student_dir), "--output", str(root / "onnx")]) == 0
    assert main(["export", "--model", str(tiny_student_dir), "--output", str(root / "st"), "--format",
                 "sentence-transformers"]) == 0
    return [_student_vocab_dir, tiny_student_dir, distilled, tuned, root / "onnx", root / "st",
            *sorted(p for p in (ROOT / "models").iterdir() if (p / "config.json").is_file())]


def test_this_environment_tokenises_nfd_like_nfc_and_names_portable_classes(artifacts):
    prints = _fingerprints(sys.executable, artifacts)
    for name, result in prints.items():
        assert "error" not in result, (name, result)
        nfc, nfd = result["ids"][1], result["ids"][2]
        assert nfd[1:-1] == nfc[1 : len(nfd) - 1], name  # NFD "Ёжик и йогурт" = the NFC line's first words
        config = json.loads((Path(name) / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert config["tokenizer_class"] != "TokenizersBackend", name
    assert {"head", "hidden"} <= set(prints[str(artifacts[3])])  # the fine-tuned classifier
    assert "sentence_transformers" in prints[str(artifacts[5])]


@pytest.mark.skipif(not OTHER, reason="DISTILRUBERT_COMPAT_PYTHON (a transformers 4.x environment) is not set")
def test_transformers_4_loads_every_artifact_with_the_same_ids_and_outputs(artifacts):
    here, there = _fingerprints(sys.executable, artifacts), _fingerprints(OTHER, artifacts)
    versions = {r.get("transformers") for r in there.values()}
    assert all(v and v.startswith("4.") for v in versions), versions
    for name in here:
        assert "error" not in there[name], (name, there[name])
        assert there[name]["ids"] == here[name]["ids"], name
        for key in ("hidden", "sentence_transformers"):
            if key in here[name]:
                np.testing.assert_allclose(there[name][key], here[name][key], atol=1e-4, err_msg=f"{name} {key}")
        if "head" in here[name]:
            assert there[name]["head"]["class"] == here[name]["head"]["class"]
            np.testing.assert_allclose(there[name]["head"]["values"], here[name]["head"]["values"], atol=1e-4)
