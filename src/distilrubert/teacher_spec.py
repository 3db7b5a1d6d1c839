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

__all__ = ["TeacherSpec", "prompt_by_name", "read_prompts", "read_teacher_spec"]

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


def _read_json(path: Path, flag: str = "--teacher") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag}: {path} is not valid JSON ({err})") from err


def read_prompts(model: str, flag: str = "--teacher") -> tuple[dict[str, str], str | None] | None:
    """``(prompts, default_prompt_name)`` of ``config_sentence_transformers.json`` in a local model
    directory, or None when it has no such file (a plain transformers directory or a Hub id)."""
    st_file = Path(model) / "config_sentence_transformers.json"
    if not st_file.is_file():
        return None
    st = _read_json(st_file, flag)
    prompts = st.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{flag}: {st_file}: 'prompts' must map names to strings")
    return {str(k): v for k, v in prompts.items()}, st.get("default_prompt_name")


def prompt_by_name(model: str, name: str, flag: str = "--teacher", name_flag: str = "--teacher-prompt-name") -> str:
    """The prompt called ``name`` in the model's ``config_sentence_transformers.json``; errors name the flag."""
    found = read_prompts(model, flag)
    st_file = Path(model) / "config_sentence_transformers.json"
    if found is None:
        raise ValueError(f"{name_flag} {name}: {st_file} does not exist (the model records no prompts)")
    if name not in found[0]:
        raise ValueError(f"{name_flag}: {name!r} is not one of the model's prompts {sorted(found[0])} ({st_file})")
    return found[0][name]


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
    found = read_prompts(teacher)
    if found is not None:
        name = prompt_name or found[1]
        if name:
            prompt = prompt_by_name(teacher, name)
    return TeacherSpec(pooling, normalize, prompt, str(path))
