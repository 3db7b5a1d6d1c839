"""Training data: dual tokenisation, an on-disk sequence cache, MLM masking, length-grouped batches.

* :func:`build_sequences` tokenises every document with the teacher and the student tokenizer (fast
  tokenizers, batched, with character offsets), cuts it into sequences of at most ``max_length``
  tokens for *both* tokenizers (and for the teacher sequence rewritten in student tokens, which the
  ``reduce`` alignment feeds to the student), cutting at word boundaries where possible, and drops
  sequences that are more than half ``[UNK]`` for the student (counted in the report). The result is
  written as flat ``int32`` arrays plus offsets (raw files read through ``numpy.memmap``), so a
  corpus larger than memory works, and cached under a key of the corpus files (path, size, mtime),
  both vocabularies and ``max_length``: a second run or epoch does not re-tokenise.
* :func:`mask_tokens`: 15% of the student's tokens, chosen with probability proportional to
  ``count ** -0.7`` (the XLM / DistilBERT ``mlm_smoothing``: rare tokens are masked more often than
  their frequency says), then 80% ``[MASK]``, 10% a random token, 10% unchanged.
  Seeded per step, so a resumed run masks exactly as an uninterrupted one.
* :func:`length_grouped_batches`: shuffled groups of similar-length sequences (less padding);
  :class:`Collator` pads each batch to its own longest sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilrubert.runinfo import sweep_stale_partials

logger = logging.getLogger(__name__)

__all__ = ["Collator", "SequenceStore", "WordMasking", "build_sequences", "default_cache_root",
           "length_grouped_batches", "mask_same_words", "mask_tokens", "smoothed_token_probs", "split_train_valid",
           "word_ids", "word_masking"]

CACHE_VERSION = 1
_DOC_BLOCK = 256


def default_cache_root() -> Path:
    """``$DISTILRUBERT_CACHE`` or ``~/.cache/distilrubert``, plus ``/sequences``."""
    root = os.environ.get("DISTILRUBERT_CACHE") or Path.home() / ".cache" / "distilrubert"
    return Path(root) / "sequences"


def _vocab_digest(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass
class SequenceStore:
    """Pre-tokenised sequences on disk (memory-mapped), ``[CLS] ... [SEP]`` included.

    Attributes:
        path: The cache directory.
        student: Flat ``int32`` student ids; sequence ``i`` is ``student[student_offsets[i]:student_offsets[i+1]]``.
        teacher: Flat ``int32`` teacher ids (empty without a teacher).
        report: What the build counted (documents, sequences, dropped, tokens).
    """

    path: Path
    student: np.ndarray
    student_offsets: np.ndarray
    teacher: np.ndarray
    teacher_offsets: np.ndarray
    report: dict[str, Any]

    def __len__(self) -> int:
        return len(self.student_offsets) - 1

    def student_ids(self, i: int) -> np.ndarray:
        """Student ids of sequence ``i``."""
        return np.asarray(self.student[self.student_offsets[i]:self.student_offsets[i + 1]], dtype=np.int64)

    def teacher_ids(self, i: int) -> np.ndarray:
        """Teacher ids of sequence ``i``."""
        return np.asarray(self.teacher[self.teacher_offsets[i]:self.teacher_offsets[i + 1]], dtype=np.int64)

    @property
    def has_teacher(self) -> bool:
        return len(self.teacher_offsets) > 1

    def lengths(self) -> np.ndarray:
        """``(n,)`` the longer of the two tokenisations of each sequence (for length grouping)."""
        lengths = np.diff(self.student_offsets)
        if self.has_teacher:
            lengths = np.maximum(lengths, np.diff(self.teacher_offsets))
        return lengths

    def student_counts(self, vocab_size: int) -> np.ndarray:
        """``(vocab_size,)`` occurrences of each student id (for the 0.7 smoothing of masking)."""
        counts = np.load(self.path / "student_counts.npy")
        out = np.zeros(vocab_size, dtype=np.int64)
        out[: min(vocab_size, len(counts))] = counts[:vocab_size]
        return out

    @classmethod
    def open(cls, path: Path) -> SequenceStore:
        """Open a finished cache directory."""
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))

        def arr(name: str, dtype: Any, n: int) -> np.ndarray:
            if n == 0:
                return np.zeros(0, dtype=dtype)
            return np.memmap(path / name, dtype=dtype, mode="r", shape=(n,))

        n_seq = meta["sequences"]
        n_teacher_off = n_seq + 1 if meta["teacher_tokens"] else 0
        return cls(path, arr("student.bin", np.int32, meta["student_tokens"]),
                   arr("student_offsets.bin", np.int64, n_seq + 1),
                   arr("teacher.bin", np.int32, meta["teacher_tokens"]),
                   arr("teacher_offsets.bin", np.int64, n_teacher_off), meta)


def _encode(tokenizer: Any, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, start_offsets)`` of each text, no special tokens (the backend tokenizer, batched)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [(np.asarray(e.ids, dtype=np.int64), np.asarray([o[0] for o in e.offsets], dtype=np.int64))
                for e in encodings]
    out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(np.asarray(ids, dtype=np.int64), np.asarray([o[0] for o in offs], dtype=np.int64))
            for ids, offs in zip(out["input_ids"], out["offset_mapping"], strict=True)]


def _continuation_mask(tokenizer: Any) -> np.ndarray:
    vocab = tokenizer.get_vocab()
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for tok, i in vocab.items():
        mask[i] = tok.startswith("##") and len(tok) > 2
    return mask


def chunk_bounds(unit_starts: np.ndarray, unit_is_cont: np.ndarray, unit_cost: np.ndarray,
                 other_starts: np.ndarray | None, limit: int, unit_limit: int) -> list[tuple[int, int]]:
    """Cut a document into chunks ``[a, b)`` of units (primary tokens), preferring word boundaries.

    A chunk must hold at most ``limit`` units, at most ``unit_limit`` total ``unit_cost`` (the
    rewritten length), and at most ``limit`` tokens of the other tokenisation (counted by character
    start offsets).
    """
    n = len(unit_starts)
    bounds = []
    a = 0
    cum_cost = np.concatenate([[0], np.cumsum(unit_cost)])

    def other_count(a: int, b: int) -> int:
        if other_starts is None:
            return 0
        lo = -1 if a == 0 else unit_starts[a]
        hi = np.iinfo(np.int64).max if b == n else unit_starts[b]
        return int(np.searchsorted(other_starts, hi, "left") - np.searchsorted(other_starts, lo, "left"))

    while a < n:
        best, best_word = a + 1, None
        b = a + 1
        while b <= n:
            if b - a > limit or cum_cost[b] - cum_cost[a] > unit_limit or other_count(a, b) > limit:
                break
            best = b
            if b == n or not unit_is_cont[b]:
                best_word = b
            b += 1
        end = best_word if best_word is not None else best
        bounds.append((a, end))
        a = end
    return bounds


def build_sequences(corpus_paths: Sequence[str | Path], student_tokenizer: Any, teacher_tokenizer: Any | None = None,
                    token_map: Any | None = None, max_length: int = 128, cache_root: str | Path | None = None,
                    text_field: str | None = None, max_unk_fraction: float = 0.5,
                    progress: bool = True) -> SequenceStore:
    """Tokenise a corpus with both tokenizers into a cached :class:`SequenceStore` (built once).

    Args:
        corpus_paths: Corpus files or directories (see :class:`distilrubert.corpus.Corpus`).
        student_tokenizer: The student's fast tokenizer.
        teacher_tokenizer: The teacher's fast tokenizer, or ``None`` (``pretrain``: one tokenisation).
        token_map: The :class:`TokenMap` (bounds the rewritten teacher sequence by ``max_length`` too).
        max_length: Maximum sequence length including ``[CLS]`` and ``[SEP]``.
        cache_root: Where caches live (default :func:`default_cache_root`).
        text_field: JSONL/CSV text field(s).
        max_unk_fraction: Sequences with a larger share of student ``[UNK]`` are dropped.
        progress: Show a progress bar.

    Returns:
        The opened store (memory-mapped).
    """
    from tqdm.auto import tqdm

    from distilrubert.corpus import Corpus

    corpus = Corpus(corpus_paths, text_field=text_field)
    key_data = {"version": CACHE_VERSION, "corpus": corpus.key(), "text_field": text_field,
                "student": _vocab_digest(student_tokenizer), "max_length": max_length,
                "teacher": _vocab_digest(teacher_tokenizer) if teacher_tokenizer is not None else None,
                "max_unk_fraction": max_unk_fraction}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_root) if cache_root else default_cache_root()
    final = root / key
    if (final / "meta.json").is_file():
        logger.info("using cached sequences %s", final)
        return SequenceStore.open(final)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(root)
    tmp = root / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    s_cls, s_sep, s_unk = (student_tokenizer.cls_token_id, student_tokenizer.sep_token_id,
                           student_tokenizer.unk_token_id)
    limit = max_length - 2
    s_cont = _continuation_mask(student_tokenizer)
    if teacher_tokenizer is not None:
        t_cls, t_sep = teacher_tokenizer.cls_token_id, teacher_tokenizer.sep_token_id
        t_cont = _continuation_mask(teacher_tokenizer)
        t_cost = (np.asarray(token_map.lengths, dtype=np.int64) if token_map is not None
                  else np.ones(len(t_cont), dtype=np.int64))
    counts = np.zeros(max(student_tokenizer.get_vocab().values()) + 1, dtype=np.int64)
    report = {"documents": 0, "sequences": 0, "dropped_unk": 0, "dropped_empty": 0, "student_tokens": 0,
              "teacher_tokens": 0, "max_length": max_length, "key": key_data}
    handles = {name: open(tmp / name, "wb") for name in  # noqa: SIM115 - closed in the finally below
               ("student.bin", "student_offsets.bin", "teacher.bin", "teacher_offsets.bin")}
    try:
        handles["student_offsets.bin"].write(np.zeros(1, dtype=np.int64).tobytes())
        if teacher_tokenizer is not None:
            handles["teacher_offsets.bin"].write(np.zeros(1, dtype=np.int64).tobytes())

        def write(s_ids: np.ndarray, t_ids: np.ndarray | None) -> None:
            s_seq = np.concatenate([[s_cls], s_ids, [s_sep]]).astype(np.int32)
            handles["student.bin"].write(s_seq.tobytes())
            report["student_tokens"] += len(s_seq)
            handles["student_offsets.bin"].write(np.asarray([report["student_tokens"]], np.int64).tobytes())
            block_ids.append(s_seq)
            if t_ids is not None:
                t_seq = np.concatenate([[t_cls], t_ids, [t_sep]]).astype(np.int32)
                handles["teacher.bin"].write(t_seq.tobytes())
                report["teacher_tokens"] += len(t_seq)
                handles["teacher_offsets.bin"].write(np.asarray([report["teacher_tokens"]], np.int64).tobytes())
            report["sequences"] += 1

        def flush(block: list[str]) -> None:
            s_enc = _encode(student_tokenizer, block)
            t_enc = _encode(teacher_tokenizer, block) if teacher_tokenizer is not None else [None] * len(block)
            for (s_ids, s_starts), t in zip(s_enc, t_enc, strict=True):
                report["documents"] += 1
                if t is None:
                    bounds = chunk_bounds(s_starts, s_cont[s_ids], np.ones(len(s_ids), np.int64), None, limit, limit)
                    pieces = [(s_ids[a:b], None) for a, b in bounds]
                else:
                    t_ids, t_starts = t
                    bounds = chunk_bounds(t_starts, t_cont[t_ids], t_cost[t_ids], s_starts, limit, limit)
                    pieces = []
                    for a, b in bounds:
                        lo = 0 if a == 0 else np.searchsorted(s_starts, t_starts[a], "left")
                        hi = len(s_ids) if b == len(t_ids) else np.searchsorted(s_starts, t_starts[b], "left")
                        pieces.append((s_ids[lo:hi], t_ids[a:b]))
                for s_part, t_part in pieces:
                    if len(s_part) == 0 or (t_part is not None and len(t_part) == 0):
                        report["dropped_empty"] += 1
                        continue
                    if np.count_nonzero(s_part == s_unk) > max_unk_fraction * len(s_part):
                        report["dropped_unk"] += 1
                        continue
                    write(s_part, t_part)
            if block_ids:  # token counts for the masking weights, one bincount per block
                counts[:] += np.bincount(np.concatenate(block_ids), minlength=len(counts))[: len(counts)]
                block_ids.clear()

        block_ids: list[np.ndarray] = []
        block: list[str] = []
        for doc in tqdm(corpus, desc="tokenising", unit="doc", disable=not progress, mininterval=1.0):
            block.append(doc)
            if len(block) >= _DOC_BLOCK:
                flush(block)
                block = []
        if block:
            flush(block)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # closed first by the finally below (the order does not matter)
        raise
    finally:
        for handle in handles.values():
            handle.close()
    if report["sequences"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"--corpus: {', '.join(map(str, corpus_paths))} produced no usable sequences "
                         f"({report['documents']} documents, {report['dropped_unk']} dropped as mostly [UNK])")
    np.save(tmp / "student_counts.npy", counts)
    (tmp / "meta.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process (a DDP rank, a parallel run) finished the same cache first: use theirs.
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("tokenised %d documents into %d sequences (%d dropped as > %.0f%% [UNK]); cache %s",
                report["documents"], report["sequences"], report["dropped_unk"], 100 * max_unk_fraction, final)
    return SequenceStore.open(final)


def split_train_valid(n: int, valid_fraction: float, max_valid: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation sequences: the last ``valid_fraction`` (at most ``max_valid``)."""
    n_valid = 0 if n < 2 or valid_fraction <= 0 else min(max_valid, max(1, round(n * valid_fraction)), n - 1)
    return np.arange(n - n_valid), np.arange(n - n_valid, n)


def smoothed_token_probs(counts: np.ndarray, special_ids: Iterable[int], smoothing: float = 0.7) -> np.ndarray:
    """Masking weight of each token id: ``max(count, 1) ** -smoothing``, 0 for special tokens.

    The 0.7 smoothing comes from XLM (Lample & Conneau 2019) and HF DistilBERT's ``mlm_smoothing``.
    """
    probs = np.maximum(counts, 1).astype(np.float64) ** -smoothing
    probs[list(special_ids)] = 0.0
    return probs


def mask_tokens(ids: np.ndarray, attention: np.ndarray, token_probs: np.ndarray, rng: np.random.Generator,
                mask_id: int, random_ids: np.ndarray, mlm_probability: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``mlm_probability`` of the maskable tokens (weighted by ``token_probs``), then 80/10/10.

    Args:
        ids: ``(batch, len)`` token ids.
        attention: ``(batch, len)`` 1 for real tokens.
        token_probs: ``(vocab,)`` masking weights (0 = never, e.g. special tokens).
        rng: The step's generator.
        mask_id: The ``[MASK]`` id.
        random_ids: Ids a "random" replacement is drawn from (the non-special vocabulary).
        mlm_probability: Share of maskable tokens to predict.

    Returns:
        ``(masked_ids, labels)``, labels ``-100`` where nothing is predicted.
    """
    flat = ids.reshape(-1)
    weights = token_probs[flat] * attention.reshape(-1)  # (batch * len,)
    candidates = np.flatnonzero(weights > 0)
    labels = np.full_like(flat, -100)
    masked = flat.copy()
    if len(candidates):
        n_target = max(1, math.ceil(mlm_probability * len(candidates)))
        p = weights[candidates] / weights[candidates].sum()
        chosen = rng.choice(candidates, size=n_target, replace=False, p=p)
        labels[chosen] = flat[chosen]
        roll = rng.random(n_target)
        masked[chosen[roll < 0.8]] = mask_id
        replace = chosen[(roll >= 0.8) & (roll < 0.9)]
        masked[replace] = rng.choice(random_ids, size=len(replace))
    return masked.reshape(ids.shape), labels.reshape(ids.shape)


def word_ids(ids: np.ndarray, continuation: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Word index of each token (a ``##`` piece continues the previous word); ``-1`` for special tokens.

    Both tokenizers split text into words the same way (BERT pre-tokenisation: whitespace and
    punctuation), so word ``k`` of a teacher sequence and word ``k`` of the student sequence cut from the
    same text are the same word.
    """
    ids = np.asarray(ids, dtype=np.int64)
    is_special = special[ids]
    starts = ~continuation[ids] & ~is_special
    words = np.cumsum(starts) - 1
    return np.where(is_special, -1, words)


@dataclass
class WordMasking:
    """What :func:`mask_same_words` needs of one tokenizer: its continuation/special masks and ids."""

    continuation: np.ndarray  # (vocab,) bool: a ``##`` piece
    special: np.ndarray  # (vocab,) bool
    mask_id: int
    random_ids: np.ndarray  # non-special ids a "random" replacement is drawn from


def mask_same_words(student_ids: np.ndarray, teacher_ids: np.ndarray, student: WordMasking, teacher: WordMasking,
                    rng: np.random.Generator, mlm_probability: float = 0.15
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Mask the same words in a student and a teacher sequence of one text (``--kl-positions masked-words``).

    ``mlm_probability`` of the words (at least one) are chosen uniformly; each chosen word gets one
    decision shared by both sides: 80% every piece ``[MASK]``, 10% every piece a random token of that
    side's vocabulary, 10% unchanged (whole-word masking, as HF's ``DataCollatorForWholeWordMask``, with
    the DistilBERT recipe's "the teacher reads the same masked input"). When the two sequences do not
    have the same number of words (a different pre-tokenisation, a cut inside a word), only the student
    is masked and no teacher position is chosen.

    Returns:
        ``(student_masked, labels, teacher_masked, teacher_chosen, paired)``: labels ``-100`` outside the
        chosen words; ``teacher_chosen`` marks the teacher positions of chosen words (where the KL goes);
        ``paired`` says whether the word counts agreed.
    """
    s_words = word_ids(student_ids, student.continuation, student.special)
    t_words = word_ids(teacher_ids, teacher.continuation, teacher.special)
    n_words = int(s_words.max()) + 1 if len(s_words) else 0
    paired = n_words == (int(t_words.max()) + 1 if len(t_words) else 0)
    s_masked, t_masked = student_ids.copy(), teacher_ids.copy()
    labels = np.full_like(student_ids, -100)
    t_chosen = np.zeros(len(teacher_ids), dtype=bool)
    if n_words == 0:
        return s_masked, labels, t_masked, t_chosen, paired
    n_chosen = max(1, math.ceil(mlm_probability * n_words))
    chosen = rng.choice(n_words, size=n_chosen, replace=False)
    action = np.zeros(n_words, dtype=np.int8)  # 0 keep out, 1 mask, 2 random, 3 unchanged
    roll = rng.random(n_chosen)
    action[chosen] = np.where(roll < 0.8, 1, np.where(roll < 0.9, 2, 3))
    s_act = np.where(s_words >= 0, action[np.maximum(s_words, 0)], 0)
    labels[s_act > 0] = student_ids[s_act > 0]
    s_masked[s_act == 1] = student.mask_id
    s_masked[s_act == 2] = rng.choice(student.random_ids, size=int((s_act == 2).sum()))
    if paired:
        t_act = np.where(t_words >= 0, action[np.maximum(t_words, 0)], 0)
        t_chosen = t_act > 0
        t_masked[t_act == 1] = teacher.mask_id
        t_masked[t_act == 2] = rng.choice(teacher.random_ids, size=int((t_act == 2).sum()))
    return s_masked, labels, t_masked, t_chosen, paired


def word_masking(tokenizer: Any) -> WordMasking:
    """The :class:`WordMasking` of a fast tokenizer.

    ``[UNK]`` is a word (WordPiece writes a word it cannot spell as one ``[UNK]``), the other special
    tokens are not; random replacements never draw a special token.
    """
    continuation = _continuation_mask(tokenizer)
    special = np.zeros(len(continuation), dtype=bool)
    special[[i for i in tokenizer.all_special_ids if i < len(special)]] = True
    random_ids = np.flatnonzero(~special)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id < len(special):
        special[tokenizer.unk_token_id] = False
    return WordMasking(continuation, special, int(tokenizer.mask_token_id), random_ids)


def length_grouped_batches(lengths: np.ndarray, indices: np.ndarray, batch_size: int, seed: int, epoch: int,
                           group_batches: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar-length sequences, the same for a given ``(seed, epoch)``.

    The indices are shuffled, cut into groups of ``group_batches`` batches, sorted by length inside each
    group, cut into batches, and the batches shuffled again (the HF DistilBERT / Megatron recipe).
    """
    rng = np.random.default_rng([seed, epoch])
    perm = np.asarray(indices)[rng.permutation(len(indices))]
    batches: list[np.ndarray] = []
    group = batch_size * group_batches
    for start in range(0, len(perm), group):
        part = perm[start:start + group]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _pad(seqs: list, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences to the longest one: ``(ids, attention_mask)``, both ``(batch, width)``."""
    ids = np.full((len(seqs), max(len(x) for x in seqs)), pad_id, dtype=np.int64)
    att = np.zeros_like(ids)
    for b, x in enumerate(seqs):
        ids[b, : len(x)] = x
        att[b, : len(x)] = 1
    return ids, att


class MaskingCollator:
    """What every collator shares: the padding ids, the seeded MLM masking (``mask_tokens``) and its weights."""

    def _init_masking(self, student_tokenizer: Any, token_probs: np.ndarray, seed: int, mlm_probability: float,
                      teacher_pad_id: int) -> None:
        self.seed = seed
        self.token_probs = token_probs
        self.mlm_probability = mlm_probability
        self.pad_id = student_tokenizer.pad_token_id
        self.mask_id = student_tokenizer.mask_token_id
        special = set(student_tokenizer.all_special_ids)
        self.random_ids = np.asarray([i for i in range(len(token_probs)) if i not in special], dtype=np.int64)
        self.teacher_pad_id = teacher_pad_id

    def _mask(self, ids: np.ndarray, attention: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return mask_tokens(ids, attention, self.token_probs, rng, self.mask_id, self.random_ids, self.mlm_probability)


class Collator(MaskingCollator):
    """Turns sequence indices into a padded, masked batch (numpy arrays) for one step.

    Args:
        store: The sequences.
        student_tokenizer: For the special ids.
        token_probs: Masking weights (:func:`smoothed_token_probs`).
        alignment: An :class:`distilrubert.align.Alignment`, or ``None`` (no teacher).
        seed: The run's seed; a step's masks depend only on ``(seed, step)``.
        mlm_probability: Share of tokens to predict.
        teacher_pad_id: The teacher's ``[PAD]`` id.
        same_words: ``(student, teacher)`` :class:`WordMasking`: mask the same words on both sides and keep
            only the teacher positions of masked words for the KL (``--kl-positions masked-words``;
            :func:`mask_same_words`), instead of token masking on the student side only.
    """

    def __init__(self, store: SequenceStore, student_tokenizer: Any, token_probs: np.ndarray,
                 alignment: Any | None = None, seed: int = 0, mlm_probability: float = 0.15,
                 teacher_pad_id: int = 0, same_words: tuple[WordMasking, WordMasking] | None = None) -> None:
        self.same_words = same_words
        self.unpaired = 0
        self.store = store
        self.alignment = alignment
        self._init_masking(student_tokenizer, token_probs, seed, mlm_probability, teacher_pad_id)

    def __call__(self, indices: np.ndarray, step: int, stream: int = 0) -> dict[str, np.ndarray]:
        """The batch of ``indices``; ``step`` and ``stream`` seed its masking."""
        s_seqs = [self.store.student_ids(int(i)) for i in indices]
        s_ids, s_att = _pad(s_seqs, self.pad_id)  # (batch, width) each
        width = s_ids.shape[1]
        rng = np.random.default_rng([self.seed, stream, step])
        if self.same_words is not None and self.alignment is not None:
            return self._same_words_batch(indices, s_seqs, s_att, rng)
        masked, labels = self._mask(s_ids, s_att, rng)
        batch = {"input_ids": masked, "attention_mask": s_att, "labels": labels,
                 "seq_index": np.asarray(indices, dtype=np.int64)}
        if self.alignment is not None and self.store.has_teacher:
            t_seqs = [self.store.teacher_ids(int(i)) for i in indices]
            t_ids, t_att = _pad(t_seqs, self.teacher_pad_id)  # (batch, t_width) each
            t_width = t_ids.shape[1]
            batch.update(teacher_input_ids=t_ids, teacher_attention_mask=t_att)
            batch.update(self.alignment.collate(t_seqs, s_seqs, t_width, width))
        return batch

    def _same_words_batch(self, indices, s_seqs, s_att, rng) -> dict[str, np.ndarray]:
        student, teacher = self.same_words
        t_seqs = [np.asarray(self.store.teacher_ids(int(i)), dtype=np.int64) for i in indices]
        parts = [mask_same_words(np.asarray(s, dtype=np.int64), t, student, teacher, rng, self.mlm_probability)
                 for s, t in zip(s_seqs, t_seqs, strict=True)]
        self.unpaired += sum(not p[4] for p in parts)  # sequences whose word counts differ: no KL rows
        masked, _ = _pad([p[0] for p in parts], self.pad_id)
        labels, _ = _pad([p[1] for p in parts], -100)
        t_masked = [p[2] for p in parts]
        t_ids, t_att = _pad(t_masked, self.teacher_pad_id)
        width, t_width = masked.shape[1], t_ids.shape[1]
        # The alignment of the original sequences (matching works on the real tokens), or of what the teacher
        # reads when the student side rewrites it (reduce); then only the teacher positions of masked words.
        source = t_masked if self.alignment.reads_teacher_sequence else t_seqs
        extra = self.alignment.collate(source, s_seqs, t_width, width)
        keep = np.concatenate([np.pad(p[3], (0, t_width - len(p[3]))) for p in parts])  # (batch * t_width,)
        extra = self.alignment.keep_rows(extra, keep[extra["t_index"]])
        return {"input_ids": masked, "attention_mask": s_att, "labels": labels,
                "seq_index": np.asarray(indices, dtype=np.int64), "teacher_input_ids": t_ids,
                "teacher_attention_mask": t_att, **extra}
