"""Teacher-output cache: the teacher's top-k log-probabilities per aligned position, on disk.

The teacher reads its own tokenisation unmasked and runs in eval mode, so its output for a sequence
is the same in every epoch. With ``--cache-teacher top-k`` the first time a sequence is seen the
teacher's top-k (default 64) log-probabilities over the alignment's support (vocabulary
intersection for ``match``, covered teacher tokens for ``reduce``) at every aligned position are
written to memory-mapped files; a batch whose sequences are all cached skips the teacher forward.

The KL against the cache is taken on the top-k support (:func:`distilrubert.losses.kl_div_topk`): the
teacher's k probabilities and the student's softened scores of the same k tokens, both renormalised
over them (so a cached step never touches the full teacher vocabulary). Storage: ``k x (4 + 2)``
bytes per teacher token (int32 id + float16 log-prob).
Hidden-state and attention losses need the teacher's states, which are not cached: the cache
requires ``--alpha-hidden 0 --alpha-attention 0``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TeacherCache"]


class TeacherCache:
    """Top-k teacher outputs for every sequence of a :class:`SequenceStore`.

    Args:
        directory: Where the cache files live (created by the main process).
        store: The sequences (its teacher offsets index the cache rows).
        k: Entries kept per position (at most the support size).
        main: Whether this is the main process (creates the files).
        key: What the cache depends on (data, teacher, alignment, temperature); a mismatch rebuilds it.
    """

    def __init__(self, directory: Path, store: Any, k: int, main: bool, key: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.k = k
        self.store = store
        self.rows = max(1, len(store.teacher))
        self.hits = 0
        self.misses = 0
        self._key = key
        if main:
            self._create()

    def _create(self) -> None:
        meta_path = self.directory / "cache.json"
        if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")) == self._key:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        np.memmap(self.directory / "ids.bin", dtype=np.int32, mode="w+", shape=(self.rows, self.k)).flush()
        np.memmap(self.directory / "logp.bin", dtype=np.float16, mode="w+", shape=(self.rows, self.k)).flush()
        np.memmap(self.directory / "filled.bin", dtype=np.uint8, mode="w+", shape=(len(self.store),)).flush()
        meta_path.write_text(json.dumps(self._key), encoding="utf-8")

    def open(self) -> None:
        """Map the files (every process, after the main one created them)."""
        self.ids = np.memmap(self.directory / "ids.bin", dtype=np.int32, mode="r+", shape=(self.rows, self.k))
        self.logp = np.memmap(self.directory / "logp.bin", dtype=np.float16, mode="r+", shape=(self.rows, self.k))
        self.filled = np.memmap(self.directory / "filled.bin", dtype=np.uint8, mode="r+", shape=(len(self.store),))

    def _rows(self, batch: dict[str, Any]) -> np.ndarray:
        width = batch["teacher_input_ids"].shape[1]
        t_index = batch["t_index"].cpu().numpy()
        seqs = batch["seq_index"].cpu().numpy()[t_index // width]
        return np.asarray(self.store.teacher_offsets[seqs], dtype=np.int64) + t_index % width  # (n,)

    def get(self, batch: dict[str, Any]) -> tuple[Any, Any] | None:
        """``(ids, logp)`` tensors ``(n_aligned, k)`` for the batch, or ``None`` if a sequence is missing."""
        import torch

        if not bool(self.filled[batch["seq_index"].cpu().numpy()].all()):
            self.misses += 1
            return None
        self.hits += 1
        rows = self._rows(batch)
        device = batch["t_index"].device
        ids = torch.as_tensor(np.asarray(self.ids[rows], dtype=np.int64), device=device)
        logp = torch.as_tensor(np.asarray(self.logp[rows], dtype=np.float32), device=device)
        return ids, logp

    def put(self, batch: dict[str, Any], ids: Any, logp: Any) -> None:
        """Store the batch's top-k (``(n_aligned, k)`` tensors) and mark its sequences filled."""
        rows = self._rows(batch)
        self.ids[rows] = ids.cpu().numpy().astype(np.int32)
        self.logp[rows] = logp.float().cpu().numpy().astype(np.float16)
        self.filled[batch["seq_index"].cpu().numpy()] = 1
