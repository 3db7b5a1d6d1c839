"""distilrubert: compact Russian conversational encoders by distillation with vocabulary reduction.

The heavy parts (torch, transformers) are imported lazily, so ``import distilrubert`` is cheap.

Example:
    >>> from distilrubert import TokenMap  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> the module that defines them (imported on first access).
_LAZY = {
    "Corpus": "distilrubert.corpus",
    "CorpusError": "distilrubert.corpus",
    "iter_documents": "distilrubert.corpus",
    "TokenMap": "distilrubert.tokenmap",
    "build_vocab": "distilrubert.vocab",
    "init_student": "distilrubert.student_init",
    "Encoder": "distilrubert.encoder",
    "create_app": "distilrubert.serve",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distilrubert' has no attribute {name!r}")
