"""Whole-text training units for representation teachers: both tokenisations of every document, cached.

Sentence-level losses compare the student's embedding of a text with the teacher's embedding of the
same text, so the unit of training is a whole document (deduplicated across files), never a window cut
across documents as the masked-LM store (:mod:`distilrubert.data`) does:

* the student reads ``[CLS] text [SEP]``, truncated to ``max_length`` student tokens;
* the teacher reads its own tokenisation of ``prefix + text`` (the prompt its card names, e.g.
  ``"passage: "`` for e5), truncated its own way at ``teacher_max_length`` tokens;
* with ``span=True`` the span alignment's groups (:func:`distilrubert.align.span.span_groups`) are computed
  once here from the character offsets of both fast tokenizers and stored beside the ids.

Arrays on disk (memory-mapped; ``n`` units, ``G`` groups in all):

=====================  =========================  ==================================================
file                   shape / dtype              what
=====================  =========================  ==================================================
``student.bin``        flat int32                 student ids, ``[CLS] ... [SEP]``
``student_offsets``    ``(n + 1,)`` int64         unit ``i`` is ``student[off[i]:off[i + 1]]``
``teacher.bin``        flat int32                 teacher ids, e.g. ``<s> passage: ... </s>``
``teacher_offsets``    ``(n + 1,)`` int64
``doc_index.bin``      ``(n,)`` int64             the unit's document among the deduplicated documents
``student_group.bin``  flat int32 (as student)    span group of each student token within its unit, -1 none
``teacher_group.bin``  flat int32 (as teacher)    the same for the teacher tokens (prefix tokens: -1)
``group_offsets``      ``(n + 1,)`` int64         unit ``i`` owns groups ``go[i] .. go[i + 1] - 1``
=====================  =========================  ==================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilrubert.data import _vocab_digest, default_cache_root
from distilrubert.runinfo import sweep_stale_partials

logger = logging.getLogger(__name__)

__all__ = ["TextUnits", "build_text_units", "document_digest"]

CACHE_VERSION = 1
_DOC_BLOCK = 512
_FILES = {"student.bin": np.int32, "student_offsets.bin": np.int64, "teacher.bin": np.int32,
          "teacher_offsets.bin": np.int64, "doc_index.bin": np.int64, "student_group.bin": np.int32,
          "teacher_group.bin": np.int32, "group_offsets.bin": np.int64}


def document_digest(text: str) -> bytes:
    """The deduplication key of a document (exact text after the corpus reader's NFC + strip)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class TextUnits:
    """The cached units (see the module docstring for the arrays)."""

    path: Path
    arrays: dict[str, np.ndarray]
    report: dict[str, Any]

    def __len__(self) -> int:
        return len(self.arrays["student_offsets.bin"]) - 1

    def _slice(self, name: str, offsets: str, i: int) -> np.ndarray:
        off = self.arrays[offsets]
        return np.asarray(self.arrays[name][off[i]:off[i + 1]], dtype=np.int64)

    def student_ids(self, i: int) -> np.ndarray:
        return self._slice("student.bin", "student_offsets.bin", i)

    def teacher_ids(self, i: int) -> np.ndarray:
        return self._slice("teacher.bin", "teacher_offsets.bin", i)

    @property
    def has_groups(self) -> bool:
        return bool(self.report.get("span"))

    def groups(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(student_group, teacher_group, n_groups)`` of unit ``i`` (group ids local to the unit)."""
        go = self.arrays["group_offsets.bin"]
        return (self._slice("student_group.bin", "student_offsets.bin", i),
                self._slice("teacher_group.bin", "teacher_offsets.bin", i), int(go[i + 1] - go[i]))

    def group_offset(self, i: int) -> int:
        return int(self.arrays["group_offsets.bin"][i])

    @property
    def total_groups(self) -> int:
        return int(self.arrays["group_offsets.bin"][-1])

    def doc_index(self, i: int) -> int:
        return int(self.arrays["doc_index.bin"][i])

    @property
    def n_documents(self) -> int:
        """Deduplicated documents (the row count of a sentence-embedding cache)."""
        return int(self.report["documents_unique"])

    def lengths(self) -> np.ndarray:
        """``(n,)`` the longer of the two tokenisations (for length-grouped batches)."""
        return np.maximum(np.diff(self.arrays["student_offsets.bin"]), np.diff(self.arrays["teacher_offsets.bin"]))

    def student_counts(self, vocab_size: int) -> np.ndarray:
        counts = np.bincount(np.asarray(self.arrays["student.bin"]), minlength=vocab_size)
        return counts[:vocab_size].astype(np.int64)

    @classmethod
    def open(cls, path: Path) -> TextUnits:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        arrays = {}
        for name, dtype in _FILES.items():
            size = (path / name).stat().st_size // np.dtype(dtype).itemsize
            arrays[name] = (np.memmap(path / name, dtype=dtype, mode="r", shape=(size,)) if size
                            else np.zeros(0, dtype=dtype))
        return cls(path, arrays, meta)


def _encode_with_offsets(tokenizer: Any, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, offsets (n, 2))`` per text, no special tokens."""
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [(np.asarray(e.ids, dtype=np.int64), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2))
            for e in encodings]


def build_text_units(corpus_paths: Sequence[str | Path], student_tokenizer: Any, teacher_tokenizer: Any,
                     max_length: int = 128, teacher_max_length: int = 512, prefix: str = "",
                     cache_root: str | Path | None = None, text_field: str | None = None, span: bool = False,
                     max_unk_fraction: float = 0.5, progress: bool = True, on_error: str = "raise") -> TextUnits:
    """Tokenise a corpus into whole-text units for both models (built once, then reused from the cache)."""
    from tqdm.auto import tqdm

    from distilrubert.corpus import Corpus

    for name, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
        if getattr(tok, "backend_tokenizer", None) is None:
            raise ValueError(f"--{name}: whole-text units need a fast (Rust) tokenizer with character offsets")
    corpus = Corpus(corpus_paths, text_field=text_field, on_error=on_error)
    key_data = {"version": CACHE_VERSION, "kind": "text-units", "corpus": corpus.key(),
                "text_field": text_field, "student": _vocab_digest(student_tokenizer),
                "teacher": _vocab_digest(teacher_tokenizer), "max_length": max_length,
                "teacher_max_length": teacher_max_length, "prefix": prefix, "span": span,
                "max_unk_fraction": max_unk_fraction}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_root) if cache_root else default_cache_root()
    final = root / f"units-{key}"
    if (final / "meta.json").is_file():
        logger.info("using cached text units %s", final)
        return TextUnits.open(final)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(root)
    tmp = root / f".units-{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if span:
        from distilrubert.align.span import span_groups

    s_cls, s_sep, s_unk = student_tokenizer.cls_token_id, student_tokenizer.sep_token_id, student_tokenizer.unk_token_id
    t_cls, t_sep = teacher_tokenizer.cls_token_id, teacher_tokenizer.sep_token_id
    t_cls = teacher_tokenizer.bos_token_id if t_cls is None else t_cls
    t_sep = teacher_tokenizer.eos_token_id if t_sep is None else t_sep
    s_limit, t_limit = max_length - 2, teacher_max_length - 2
    report = {"documents": 0, "documents_unique": 0, "duplicates": 0, "units": 0, "dropped_unk": 0,
              "student_tokens": 0, "teacher_tokens": 0, "groups": 0, "span": span, "prefix": prefix,
              "max_length": max_length, "teacher_max_length": teacher_max_length, "key": key_data}
    seen: set[bytes] = set()
    handles = {name: open(tmp / name, "wb") for name in _FILES}  # noqa: SIM115 - closed in the finally below
    try:
        for name in ("student_offsets.bin", "teacher_offsets.bin", "group_offsets.bin"):
            handles[name].write(np.zeros(1, dtype=np.int64).tobytes())

        def flush(block: list[str], first_doc: int) -> None:
            s_enc = _encode_with_offsets(student_tokenizer, block)
            t_enc = _encode_with_offsets(teacher_tokenizer, [prefix + t for t in block])
            for j, (text, (s_ids, s_off), (t_ids, t_off)) in enumerate(zip(block, s_enc, t_enc, strict=True)):
                s_ids, s_off, t_ids, t_off = s_ids[:s_limit], s_off[:s_limit], t_ids[:t_limit], t_off[:t_limit]
                if len(s_ids) == 0 or np.count_nonzero(s_ids == s_unk) > max_unk_fraction * len(s_ids):
                    report["dropped_unk"] += 1
                    continue
                s_seq = np.concatenate([[s_cls], s_ids, [s_sep]]).astype(np.int32)
                t_seq = np.concatenate([[t_cls], t_ids, [t_sep]]).astype(np.int32)
                s_group = np.full(len(s_seq), -1, dtype=np.int32)
                t_group = np.full(len(t_seq), -1, dtype=np.int32)
                n_groups = 0
                if span:  # teacher offsets are into prefix + text; prefix tokens get no group
                    tg, sg, n_groups = span_groups(text, t_off, s_off, teacher_prefix=len(prefix))
                    s_group[1:-1], t_group[1:-1] = sg, tg
                for name, arr in (("student.bin", s_seq), ("teacher.bin", t_seq), ("student_group.bin", s_group),
                                  ("teacher_group.bin", t_group)):
                    handles[name].write(arr.tobytes())
                report["student_tokens"] += len(s_seq)
                report["teacher_tokens"] += len(t_seq)
                report["groups"] += n_groups
                report["units"] += 1
                handles["doc_index.bin"].write(np.asarray([first_doc + j], np.int64).tobytes())
                for name, value in (("student_offsets.bin", "student_tokens"),
                                    ("teacher_offsets.bin", "teacher_tokens"), ("group_offsets.bin", "groups")):
                    handles[name].write(np.asarray([report[value]], np.int64).tobytes())

        block: list[str] = []
        for doc in tqdm(corpus, desc="tokenising texts", unit="doc", disable=not progress, mininterval=1.0):
            report["documents"] += 1
            digest = document_digest(doc)
            if digest in seen:
                report["duplicates"] += 1
                continue
            seen.add(digest)
            block.append(doc)
            if len(block) >= _DOC_BLOCK:
                flush(block, report["documents_unique"])
                report["documents_unique"] += len(block)
                block = []
        if block:
            flush(block, report["documents_unique"])
            report["documents_unique"] += len(block)
    except BaseException:
        for handle in handles.values():
            handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for handle in handles.values():
        handle.close()
    if report["units"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"--corpus: {', '.join(map(str, corpus_paths))} produced no usable texts "
                         f"({report['documents']} documents, {report['dropped_unk']} dropped as mostly [UNK])")
    report["corpus_report"] = corpus.report()
    (tmp / "meta.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same cache first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("tokenised %d documents (%d duplicates) into %d text units (%d dropped as > %.0f%% [UNK]); cache %s",
                report["documents"], report["duplicates"], report["units"], report["dropped_unk"],
                100 * max_unk_fraction, final)
    return TextUnits.open(final)
