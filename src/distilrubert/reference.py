"""The embedded reference models of the source checkout (``models/``) and how to make them.

``models/distilrubert-tiny-5k-e5`` is the 5K-vocabulary student distilled from the real
multilingual-e5-small teacher (``import-teacher``, ``--alignment span``); ``models/teacher-4x384-16k`` is a
4 x 384 BERT pre-trained from scratch on the embedded sample corpus with ``distilrubert pretrain``, the
demonstration teacher of ``match`` / ``reduce``. Both are stored as fp16 safetensors (half the size) with
``"dtype": "float32"`` in their config, so ``AutoModel.from_pretrained`` loads them in fp32 (fast on a
CPU). Their model cards give the commands that produced them.

``Encoder.from_pretrained()`` and ``distilrubert serve`` without a model use the reference student.
``DISTILRUBERT_MODELS`` points to another directory holding the same layout (e.g. for a wheel install,
which does not ship ``models/``).

Example:
    >>> from distilrubert.reference import reference_model
    >>> reference_model("student").name  # doctest: +SKIP
    'distilrubert-tiny-5k-e5'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["REFERENCE_NAMES", "models_dir", "reference_model", "save_half_precision"]

REFERENCE_NAMES = {"teacher": "teacher-4x384-16k", "student": "distilrubert-tiny-5k-e5"}
ENV_VAR = "DISTILRUBERT_MODELS"


def models_dir() -> Path:
    """Where the reference models live: ``$DISTILRUBERT_MODELS`` or the checkout's ``models/``."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "models"


def reference_model(which: Literal["teacher", "student"] = "student") -> Path:
    """The directory of an embedded reference model.

    Raises:
        ValueError: ``which`` is not ``teacher`` or ``student``.
        FileNotFoundError: the models are not there (a wheel install without ``$DISTILRUBERT_MODELS``).
    """
    if which not in REFERENCE_NAMES:
        raise ValueError(f"reference model must be one of {', '.join(REFERENCE_NAMES)}, got {which!r}")
    path = models_dir() / REFERENCE_NAMES[which]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded reference {which} {path} is missing: it ships with the source checkout (models/), "
            f"not with a wheel; pass a model directory or a Hub id, or set ${ENV_VAR}")
    return path


def save_half_precision(model_dir: str | Path) -> int:
    """Rewrite a saved model's safetensors weights in fp16, keeping fp32 as its load dtype.

    Floating-point tensors are stored as float16 (half the disk size); ``config.json`` says
    ``"dtype": "float32"`` so transformers upcasts them on load. Tied weights stay tied (safetensors
    keeps one copy; transformers re-ties them from the config). Returns the new weights size in bytes.

    Raises:
        FileNotFoundError: no ``model.safetensors`` in ``model_dir``.
        ValueError: a weight is too large for fp16 (it would become inf).
    """
    from safetensors.numpy import load_file, save_file

    from distilrubert.runinfo import atomic_write_text

    model_dir = Path(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no safetensors weights to convert")
    tensors = load_file(str(weights))
    half = {}
    for name, array in tensors.items():
        if np.issubdtype(array.dtype, np.floating):
            if np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError(f"{weights}: tensor {name} exceeds the fp16 range")
            array = array.astype(np.float16)
        half[name] = np.ascontiguousarray(array)
    tmp = weights.with_name(".model.safetensors.tmp")
    save_file(half, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    config.pop("torch_dtype", None)
    atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return weights.stat().st_size
