"""The ONNX graphs ``Encoder`` exports on first use: one cache directory per model *content*.

``Encoder.from_pretrained(DIR)`` on a directory without an exported graph exports it once (fp32, fused,
and its dynamic int8 quantisation) into ``$DISTILRUBERT_ONNX_CACHE`` or ``~/.cache/distilrubert/onnx``,
under a key that is the SHA-256 of the model's config, tokenizer and weight files, together with the
parity report of the export (``parity.json``: int8 vs fp32 mean cosine on built-in Russian sentences).
A later call (any process) finds it by the same key; a model whose files change gets a new key.

The directory is built under ``.KEY.partial-PID`` and renamed into place: a concurrent first use in
another process builds its own copy and the first rename wins (the loser's copy is removed), so a reader
never sees half a directory. Directories of killed builds are swept at the next build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from distilrubert.runinfo import sweep_stale_partials

logger = logging.getLogger(__name__)

__all__ = ["INT8_MIN_COSINE", "cached_export", "content_key", "int8_passes", "onnx_cache_root"]

INT8_MIN_COSINE = 0.99
"""int8 is used by default only if its mean-pooled vectors keep this mean cosine to fp32's."""

ONNX_CACHE_ENV = "DISTILRUBERT_ONNX_CACHE"
_CONTENT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "model.safetensors",
                  "pytorch_model.bin", "model.safetensors.index.json")


def onnx_cache_root() -> Path:
    """``$DISTILRUBERT_ONNX_CACHE``, else ``$DISTILRUBERT_CACHE/onnx``, else ``~/.cache/distilrubert/onnx``."""
    if os.environ.get(ONNX_CACHE_ENV):
        return Path(os.environ[ONNX_CACHE_ENV])
    return Path(os.environ.get("DISTILRUBERT_CACHE") or Path.home() / ".cache" / "distilrubert") / "onnx"


def content_key(model_dir: str | Path) -> str:
    """SHA-256 (20 hex digits) of the files that define the model's outputs (names and bytes)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    names = [*_CONTENT_FILES, *sorted(p.name for p in model_dir.glob("model-*.safetensors"))]
    for name in names:
        path = model_dir / name
        if not path.is_file():
            continue
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def int8_passes(directory: Path) -> bool:
    """Whether the cached int8 graph met :data:`INT8_MIN_COSINE` in its parity check."""
    try:
        report = json.loads((directory / "parity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return float(report.get("mean_cosine_int8_vs_fp32", 0.0)) >= INT8_MIN_COSINE


def cached_export(model_dir: str | Path, root: str | Path | None = None, trust_remote_code: bool = False) -> Path:
    """The cache directory holding ``model.onnx``, ``model_quantized.onnx`` and ``parity.json`` for ``model_dir``."""
    from distilrubert.export import DEFAULT_SENTENCES, export_encoder_onnx, parity_check
    from distilrubert.runinfo import write_json

    model_dir = Path(model_dir)
    root = Path(root) if root is not None else onnx_cache_root()
    final = root / content_key(model_dir)
    if (final / "parity.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(root)
    tmp = root / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: exporting to ONNX once (fp32 + int8) into %s", model_dir, final)
    try:
        paths = export_encoder_onnx(model_dir, tmp, quantize=True, task="encoder",
                                    trust_remote_code=trust_remote_code)
        report = parity_check(model_dir, paths["fp32"], paths["int8"], "encoder", list(DEFAULT_SENTENCES),
                              trust_remote_code=trust_remote_code)
        report["source"] = str(model_dir)
        write_json(tmp / "parity.json", report)  # last: its presence marks a complete directory
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use its copy
            if not (final / "parity.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
