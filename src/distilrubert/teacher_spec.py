"""How a representation teacher embeds a sentence: pooling, normalisation and prompt, read from its files.

A teacher directory written by ``import-teacher``, and any sentence-transformers model, records this in
the sentence-transformers files: ``modules.json`` (is there a ``Normalize`` module?), the pooling
module's ``config.json`` (``pooling_mode_*``) and ``config_sentence_transformers.json`` (``prompts`` and
``default_prompt_name``; e5's documents take ``"passage: "``). A plain transformers directory has none
of them: mean pooling, no normalisation, no prompt. ``distill`` flags override every field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TeacherSpec", "read_teacher_spec"]

_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher's sentence embedding: ``pooling`` of its last hidden states over non-padding tokens of
    ``prompt + text``, then L2-normalised if ``normalize``."""

    pooling: str = "mean"
    normalize: bool = False
    prompt: str = ""
    source: str = "default"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"--teacher: {path} is not valid JSON ({err})") from err


def read_teacher_spec(teacher: str, prompt_name: str | None = None) -> TeacherSpec:
    """The spec recorded in a local teacher directory (defaults for a Hub id or a plain directory)."""
    path = Path(teacher)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return TeacherSpec()
    modules = _read_json(modules_file)
    pooling, normalize = "mean", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            config_file = path / module.get("path", "") / "config.json"
            config = _read_json(config_file) if config_file.is_file() else {}
            modes = [name for key, name in _POOLING_KEYS.items() if config.get(key)]
            if len(modes) != 1:
                raise ValueError(f"--teacher: {config_file}: distill supports exactly one of "
                                 f"{', '.join(_POOLING_KEYS)} (found {modes or 'none'})")
            pooling = modes[0]
    prompt = ""
    st_file = path / "config_sentence_transformers.json"
    if st_file.is_file():
        st = _read_json(st_file)
        prompts = st.get("prompts") or {}
        name = prompt_name or st.get("default_prompt_name")
        if name:
            if name not in prompts:
                raise ValueError(f"--teacher-prompt-name: {name!r} is not one of the teacher's prompts "
                                 f"{sorted(prompts)} ({st_file})")
            prompt = prompts[name]
    return TeacherSpec(pooling, normalize, prompt, str(path))
