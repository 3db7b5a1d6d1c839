"""Teacher-output cache for representation teachers: sentence embeddings and pooled span-group states.

A teacher without an MLM head contributes two things to a step: its sentence embedding of each text and,
with the span loss, its hidden states mean-pooled over each span group (at the mapped layers). Both are
the same in every epoch, so they are written (fp16, memory-mapped) the first time a text is seen and
read afterwards: once every text is cached, a step does not run the teacher at all.

* ``sentence``: ``(documents, teacher_dim)`` rows indexed by the deduplicated document
  (:meth:`TextUnits.doc_index`), so every student of the same corpus, teacher and prompt shares them;
  it lives in the shared cache root (``~/.cache/distilrubert``, ``--cache-dir``).
* ``groups``: ``(total_groups, layers, teacher_dim)`` rows indexed by the unit's group offset; it also
  depends on the student tokenizer (the groups do) and the layer map.

Each part is a directory with ``key.json`` (what it depends on), ``values.f16`` and ``filled.u8`` (one byte
per row / unit). A key that differs, or files of the wrong size, are detected at open and the part is
rebuilt (logged); a non-finite cached value is treated as missing and recomputed. Writes go to the
memory map and are flushed every ``flush_every`` puts and at :meth:`close`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CachePart", "cache_key_digest", "teacher_identity"]


def cache_key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_identity(teacher: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies the teacher's weights: its config and weight files' sizes and times (a directory),
    or the Hub id and revision."""
    path = Path(teacher)
    if not path.is_dir():
        return {"hub_id": teacher, "revision": revision}
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return {"dir": str(path.resolve()),
            "files": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]}


class CachePart:
    """One cached array: ``rows`` x ``shape`` fp16 values plus a ``filled`` flag per ``slots`` entry.

    Args:
        directory: The part's directory.
        key: What the values depend on; stored in ``key.json`` and compared at open.
        rows: Rows of ``values``.
        shape: Shape of one row (e.g. ``(teacher_dim,)`` or ``(layers, teacher_dim)``).
        slots: Entries of the ``filled`` map (documents, or units for group states).
        main: Whether this process creates / repairs the files (others only open them).
    """

    def __init__(self, directory: Path, key: dict[str, Any], rows: int, shape: tuple[int, ...], slots: int,
                 main: bool = True, flush_every: int = 64) -> None:
        self.directory = Path(directory)
        # Through JSON once, so tuples compare equal to the lists read back from key.json.
        self.key = json.loads(json.dumps({**key, "rows": rows, "shape": list(shape), "slots": slots}, default=str))
        self.rows, self.shape, self.slots = rows, tuple(shape), slots
        self.flush_every = flush_every
        self.hits = self.misses = self.recomputed = 0
        self._puts = 0
        if main:
            self._prepare()
        self.values = np.memmap(self.directory / "values.f16", dtype=np.float16, mode="r+",
                                shape=(max(1, rows), *self.shape))
        self.filled = np.memmap(self.directory / "filled.u8", dtype=np.uint8, mode="r+", shape=(max(1, slots),))

    def _prepare(self) -> None:
        key_file = self.directory / "key.json"
        values_bytes = max(1, self.rows) * int(np.prod(self.shape)) * 2
        problem = None
        if key_file.is_file():
            try:
                stored = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                stored = None
            if stored != self.key:
                problem = "its key differs (other data, teacher or settings)"
            elif (not (self.directory / "values.f16").is_file()
                  or (self.directory / "values.f16").stat().st_size != values_bytes
                  or not (self.directory / "filled.u8").is_file()
                  or (self.directory / "filled.u8").stat().st_size != max(1, self.slots)):
                problem = "its files have the wrong size (corrupt or truncated)"
            if problem is None:
                return
            logger.warning("teacher cache %s: %s; rebuilding it", self.directory, problem)
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "values.f16", "wb") as handle:
            handle.truncate(values_bytes)
        with open(self.directory / "filled.u8", "wb") as handle:
            handle.truncate(max(1, self.slots))
        # key.json last: a directory without it is incomplete and rebuilt at the next open.
        (self.directory / "key.json").write_text(json.dumps(self.key, indent=2), encoding="utf-8")

    # ---------------------------------------------------------------------------------------------
    def complete(self, slots: np.ndarray) -> bool:
        """Whether every slot in ``slots`` is filled."""
        return bool(np.all(self.filled[slots]))

    def missing(self, slots: np.ndarray) -> np.ndarray:
        """``(len(slots),)`` bool: which slots are not filled yet."""
        return np.asarray(self.filled[slots]) == 0

    def get(self, slots: np.ndarray, rows: np.ndarray, count: bool = True) -> np.ndarray | None:
        """The rows (fp32) if every slot is filled and the values are finite; otherwise ``None`` (a miss).

        ``count=False`` leaves the hit / miss counters alone (a read right after filling the slots).
        """
        if not self.complete(slots):
            self.misses += count
            return None
        values = np.asarray(self.values[rows], dtype=np.float32)
        if not np.isfinite(values).all():
            logger.warning("teacher cache %s: non-finite cached values; recomputing them", self.directory)
            self.filled[slots] = 0
            self.recomputed += 1
            self.misses += count
            return None
        self.hits += count
        return values

    def put(self, slots: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
        self.values[rows] = values.astype(np.float16)
        self.filled[slots] = 1
        self._puts += 1
        if self._puts % self.flush_every == 0:
            self.flush()

    @property
    def filled_fraction(self) -> float:
        return float(np.count_nonzero(self.filled[: self.slots])) / max(1, self.slots)

    def flush(self) -> None:
        self.values.flush()
        self.filled.flush()

    def close(self) -> None:
        self.flush()
