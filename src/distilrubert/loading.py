"""Loading a teacher (with its masked-LM head when it has one) and a student tokenizer, for init and distill."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["MLM_HEAD_PREFIXES", "checkpoint_has_mlm_head", "has_mlm_head", "load_student_tokenizer", "load_teacher"]


# Parameter-name prefixes of masked-LM heads: BERT (``cls.predictions``), DistilBERT (``vocab_transform``,
# ``vocab_projector``), RoBERTa / XLM-R (``lm_head``).
MLM_HEAD_PREFIXES = ("cls.predictions.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "lm_head.")


def has_mlm_head(model) -> bool:
    """Whether a loaded model carries a masked-LM head (a ``*ForMaskedLM`` class, as :func:`load_teacher` picks)."""
    return type(model).__name__.endswith("ForMaskedLM")


def _checkpoint_keys(directory: Path) -> set[str] | None:
    """Parameter names stored in a local checkpoint directory, read from file headers only (no weights).

    ``None`` when the directory holds no weight file this function can read.
    """
    index = next((directory / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (directory / n).is_file()), None)
    if index is not None:
        return set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    if (directory / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
            return set(f.keys())
    if (directory / "pytorch_model.bin").is_file():
        import torch

        # mmap + weights_only: names without reading the tensors and without running pickled code.
        return set(torch.load(directory / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True))
    return None


def checkpoint_has_mlm_head(source: str, config) -> bool:
    """Whether the checkpoint at ``source`` has MLM head weights.

    A local directory is decided by its parameter names (a ``BertModel`` saved with a ForMaskedLM
    ``architectures`` entry by hand still has no head); a Hub id, or a directory whose weights cannot be
    listed, by the config's ``architectures`` (``*ForMaskedLM`` / ``*ForPreTraining``).
    """
    path = Path(source)
    keys = _checkpoint_keys(path) if path.is_dir() else None
    if keys is not None:
        # Base-model prefixes (``bert.``, ``roberta.``) never start a head name, so a plain prefix test works.
        return any(k.startswith(MLM_HEAD_PREFIXES) for k in keys)
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in getattr(config, "architectures", None) or ())


def load_teacher(name_or_dir: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a teacher and its tokenizer from the Hub or a local directory.

    A checkpoint with masked-LM head weights is loaded as ``AutoModelForMaskedLM`` (its logits are the
    KL target); one without (an embedding model such as e5, saved as ``BertModel``) as the base
    ``AutoModel``, so no randomly initialised head pretends to be the teacher's. Tell them apart with
    :func:`has_mlm_head`.

    Raises:
        FileNotFoundError: a path-looking argument that does not exist.
        ValueError: the model could not be loaded (offline, unknown id, unsupported architecture).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    path = Path(name_or_dir).expanduser()
    looks_local = path.exists() or name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"--teacher: directory {name_or_dir} does not exist")
    source = str(path) if path.is_dir() else name_or_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        model_config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        auto = AutoModelForMaskedLM if checkpoint_has_mlm_head(source, model_config) else AutoModel
        model = auto.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        where = "directory" if path.is_dir() else "Hugging Face Hub id (needs network access or a local cache)"
        raise ValueError(f"--teacher: cannot load a model and tokenizer from {where} "
                         f"{name_or_dir!r}: {err}") from err
    return model.eval(), tokenizer


def load_student_tokenizer(vocab_dir: str | Path):
    """Load the student tokenizer written by ``build-vocab``."""
    from transformers import AutoTokenizer

    path = Path(vocab_dir)
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise FileNotFoundError(f"--vocab: {path} holds no tokenizer.json or vocab.txt "
                                "(create it with `distilrubert build-vocab`)")
    return AutoTokenizer.from_pretrained(str(path))
