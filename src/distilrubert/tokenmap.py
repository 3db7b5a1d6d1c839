"""Teacher-to-student token map for any teacher tokenizer family: split, inverse map, intersection (REFERENCE 2.1).

The student is a WordPiece vocabulary (``##`` marks a continuation). A teacher token is first read as
text plus a *word-start* flag, the way its own family writes them:

=================  ===========================  ======================================================
family             word start                   example -> (surface, word start)
=================  ===========================  ======================================================
``wordpiece``      no ``##`` prefix             ``привет`` -> (привет, yes); ``##ами`` -> (ами, no)
``sentencepiece``  ``▁`` (U+2581) prefix        ``▁привет`` -> (привет, yes); ``ами`` -> (ами, no)
                   (Unigram or BPE, Metaspace)
``byte-level``     ``Ġ`` prefix = a space byte  ``ĠÐ¿ÑĢÐ¸`` -> (при, yes): the token's characters are
                   (GPT-2 / RoBERTa BPE)        bytes (GPT-2's byte-to-unicode alphabet), decoded as
                                                UTF-8; a token that is not valid UTF-8 on its own (a
                                                piece of a multi-byte character) is uncovered
=================  ===========================  ======================================================

Then the surface is spelled with student pieces by greedy longest-prefix match, the way WordPiece
itself tokenises a word: a word-start token begins with a word-initial student piece and continues
with ``##`` pieces; a continuation token uses ``##`` pieces only. The surface is cut the way the
student's own pre-tokenizer cuts text: a word boundary inside (``▁New▁York``, a byte-level token with an
inner space) starts a new word, and for a BERT student (every ``build-vocab`` one; ``split_punctuation``,
read from the student tokenizer) each punctuation character is a word of its own and the text after it
starts a word, so SentencePiece's continuation ``,`` maps to ``,`` (the token the student really sees),
not to ``##,``. A token with no text at all (the bare ``▁`` of SentencePiece, a bare ``Ġ``: only a
space marker; the student writes spaces as token boundaries, not tokens) is **uncovered**: it maps to
``[UNK]`` with ``covered = False``, which the inverse map, the intersection and the ``reduce`` losses
ignore. The same holds for a token some part of which has no student piece (a character outside the
student alphabet).

Special tokens map **by role**, not by name: the teacher's CLS/BOS (``<s>``), SEP/EOS (``</s>``), PAD,
UNK and MASK tokens go to the student's ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ``[MASK]``
(:meth:`TokenMap.from_tokenizers` reads the roles from the tokenizers; without tokenizers the
conventional names of :data:`CONVENTIONAL_ROLES` are used). Other specials and bracketed reserved
entries (``[unused17]``) are never spelled out: they map to the identically named student token if
there is one, else to ``[UNK]``.

From the split follow:

* :attr:`TokenMap.teacher_to_student`: a padded ``(teacher_vocab, max_pieces)`` int64 matrix of student
  ids (``-1`` = padding), with :attr:`TokenMap.lengths` and :attr:`TokenMap.covered` beside it: the form
  the ``reduce`` alignment gathers from, never a dense one-hot matrix.
* :attr:`TokenMap.student_to_teacher`: for each student id, the teacher ids whose split starts with it
  (the inverse map, used to initialise student embedding rows).
* :attr:`TokenMap.intersection`: ``(n, 2)`` pairs ``(teacher_id, student_id)`` of the same token: the
  teacher token is spelled by exactly one student token of the same text, so with the same word-start
  flag (``▁привет`` ~ ``привет``, ``ами`` ~ ``##ами``; the continuation ``кот`` is not ``кот``), and the
  specials paired by role; at most one teacher token per student token (``▁,`` rather than ``,`` for
  ``,``): the ``match`` alignment's KL support.

One dictionary lookup per candidate prefix: the 250,002-piece e5 vocabulary maps in about a second
(``scripts/bench_tokenmap.py``; the measured figures are in ``docs/tokenmap.md``).

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tmap = TokenMap.from_tokenizers(AutoTokenizer.from_pretrained("intfloat/multilingual-e5-small"),
    ...                                 AutoTokenizer.from_pretrained("v5k"))  # doctest: +SKIP
    >>> tmap.family, tmap.split_teacher_token("▁приветствие")  # doctest: +SKIP
    ('sentencepiece', ['привет', '##ств', '##ие'])
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

__all__ = ["CONVENTIONAL_ROLES", "DEFAULT_SPECIALS", "FAMILIES", "TokenMap", "bytes_to_unicode", "detect_family",
           "detect_family_from_vocab", "greedy_split", "parse_token", "splits_punctuation"]

DEFAULT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Student token of each role, and the conventional teacher names of that role (used when no tokenizer
# says which token plays it).
ROLES = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}
CONVENTIONAL_ROLES = {"[CLS]": "[CLS]", "[SEP]": "[SEP]", "[PAD]": "[PAD]", "[UNK]": "[UNK]", "[MASK]": "[MASK]",
                      "<s>": "[CLS]", "</s>": "[SEP]", "<pad>": "[PAD]", "<unk>": "[UNK]", "<mask>": "[MASK]"}
FAMILIES = ("wordpiece", "sentencepiece", "byte-level")
PREFIX = "##"
METASPACE = "\u2581"  # ▁
BYTE_SPACE = "\u0120"  # Ġ, the space byte in GPT-2's alphabet
# Reserved vocabulary entries such as [unused17], [UNK], <s>: never spelled out character by character.
_BRACKETED = re.compile(r"^(\[[A-Za-z_]+\d*\]|<[A-Za-z_/]+\d*>)$")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE vocabularies are written in it).

    >>> bytes_to_unicode()[ord(" ")], bytes_to_unicode()[ord("a")]
    ('Ġ', 'a')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@cache
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def parse_token(token: str, family: str, prefix: str = PREFIX) -> tuple[str, bool] | None:
    """A teacher token as ``(surface text, starts a word)`` in its family's notation.

    Returns ``None`` for a byte-level token that is not valid UTF-8 on its own. The surface may be empty
    (a bare ``▁``) or hold spaces / ``▁`` inside (several words); :class:`TokenMap` handles both.

    >>> parse_token("##ами", "wordpiece"), parse_token("▁привет", "sentencepiece"), parse_token("ами", "sentencepiece")
    (('ами', False), ('привет', True), ('ами', False))
    >>> parse_token("ĠÐ¿ÑĢÐ¸", "byte-level"), parse_token("Ð", "byte-level")
    (('при', True), None)
    """
    if family == "wordpiece":
        if token.startswith(prefix) and len(token) > len(prefix):
            return token[len(prefix):], False
        return token, True
    if family == "sentencepiece":
        return (token[1:], True) if token.startswith(METASPACE) else (token, False)
    if family == "byte-level":
        decoder = _byte_decoder()
        if all(c in decoder for c in token):
            try:
                token = bytes(decoder[c] for c in token).decode("utf-8")
            except UnicodeDecodeError:
                return None
        # else: an added token written in plain text, not in the byte alphabet.
        return (token[1:], True) if token.startswith(" ") else (token, False)
    raise ValueError(f"unknown tokenizer family {family!r}; expected one of {', '.join(FAMILIES)}")


def detect_family_from_vocab(vocab: Iterable[str]) -> str:
    """The family whose word marker most tokens carry: ``##`` (continuation), ``▁`` or ``Ġ`` (word start).

    >>> detect_family_from_vocab(["<s>", "▁a", "b", "▁ab"]), detect_family_from_vocab(["[CLS]", "a", "##b"])
    ('sentencepiece', 'wordpiece')
    """
    counts = {"wordpiece": 0, "sentencepiece": 0, "byte-level": 0}
    for token in vocab:
        if token.startswith(PREFIX):
            counts["wordpiece"] += 1
        elif token.startswith(METASPACE):
            counts["sentencepiece"] += 1
        elif token.startswith(BYTE_SPACE):
            counts["byte-level"] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] else "wordpiece"  # whole words only: nothing to tell, WordPiece reads them as-is


def detect_family(tokenizer: Any) -> str:
    """The family of a transformers tokenizer (or a ``tokenizers.Tokenizer``).

    A fast tokenizer is decided by its backend: a WordPiece model, else a ``ByteLevel`` or ``Metaspace``
    pre-tokenizer / decoder. Anything else (a slow tokenizer, a custom pipeline) by its vocabulary
    (:func:`detect_family_from_vocab`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and hasattr(tokenizer, "pre_tokenizer") and hasattr(tokenizer, "model"):
        backend = tokenizer  # a tokenizers.Tokenizer
    if backend is not None:
        if type(backend.model).__name__ == "WordPiece":
            return "wordpiece"
        # Pipeline components serialise to small JSON; a Sequence lists its members inside.
        state = b"".join(part.__getstate__() for part in (backend.pre_tokenizer, backend.decoder) if part is not None)
        if b'"ByteLevel"' in state:
            return "byte-level"
        if b'"Metaspace"' in state:
            return "sentencepiece"
    return detect_family_from_vocab(tokenizer.get_vocab())


@cache
def _is_punctuation(char: str) -> bool:
    """BERT's punctuation: ASCII punctuation or a Unicode ``P*`` character (what ``BertPreTokenizer`` isolates)."""
    return (char.isascii() and not char.isalnum() and char.isprintable() and not char.isspace()) or \
        unicodedata.category(char).startswith("P")


def splits_punctuation(tokenizer: Any) -> bool:
    """Whether a (student) tokenizer's pre-tokenizer isolates punctuation: BERT's, or a ``Punctuation`` step.

    A tokenizer without a readable backend is taken to be a BERT WordPiece one (it isolates punctuation).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return backend is None
    state = backend.pre_tokenizer.__getstate__()
    return b'"BertPreTokenizer"' in state or b'"Punctuation"' in state


def _greedy(body: str, word_start: bool, student_vocab: Mapping[str, int] | set[str], max_len: int,
            prefix: str) -> list[str] | None:
    """Greedy longest-prefix WordPiece spelling of one word's text (``None`` if a part has no piece)."""
    pieces: list[str] = []
    start = 0
    while start < len(body):
        mark = "" if (word_start and start == 0) else prefix
        end = min(len(body), start + max_len)
        while end > start:
            candidate = mark + body[start:end]
            if candidate in student_vocab:
                pieces.append(candidate)
                break
            end -= 1
        else:
            return None
        start = end
    return pieces


def greedy_split(token: str, student_vocab: Mapping[str, int] | set[str], max_len: int | None = None,
                 prefix: str = PREFIX) -> list[str] | None:
    """Greedy longest-prefix split of one WordPiece-notation token into student tokens.

    Args:
        token: A token; a leading ``prefix`` (``##``) marks a word continuation.
        student_vocab: The student tokens (a mapping or a set).
        max_len: Length of the longest student token (an upper bound for the prefix search).
        prefix: The continuation prefix.

    Returns:
        The student pieces, or ``None`` if some part of the token has no student piece.

    >>> greedy_split("abcd", {"ab", "a", "##cd", "##c", "##d"})
    ['ab', '##cd']
    >>> greedy_split("##xyz", {"##x", "##y", "##yz"})
    ['##x', '##yz']
    >>> greedy_split("aq", {"a", "##b"}) is None
    True
    """
    if max_len is None:
        max_len = max((len(t) for t in student_vocab), default=0)
    body, word_start = parse_token(token, "wordpiece", prefix)
    return _greedy(body, word_start, student_vocab, max_len, prefix)


class TokenMap:
    """The alignment of a teacher vocabulary (any family) onto a WordPiece student vocabulary.

    Build it with :meth:`from_tokenizers` (two transformers tokenizers) or :meth:`from_vocabs` (two
    token-to-id mappings). All arrays are indexed by token id.

    Args:
        teacher_vocab, student_vocab: ``token -> id`` mappings.
        teacher_specials: The teacher's special tokens: a mapping ``teacher token -> student token``
            (by role), or names, each mapped through :data:`CONVENTIONAL_ROLES` or else to itself.
        student_unk: The student's unknown token.
        prefix: The student's (and a WordPiece teacher's) continuation prefix.
        family: The teacher's tokenizer family (:data:`FAMILIES`); ``None`` detects it from the vocabulary.
        split_punctuation: The student's pre-tokenizer makes every punctuation character a word of its own
            (BERT's does): spell teacher text the same way (``,`` -> ``,``, never ``##,``).

    Attributes:
        family: The teacher's tokenizer family.
        teacher_tokens: Teacher token strings by id (``None`` for unused ids).
        student_tokens: Student token strings by id.
        teacher_to_student: ``(teacher_vocab, max_pieces)`` int64 student ids, ``-1`` padded.
        lengths: ``(teacher_vocab,)`` number of pieces of each teacher token (1 for ``[UNK]``).
        covered: ``(teacher_vocab,)`` bool, whether the teacher token has a real mapping (not ``[UNK]``).
        word_start: ``(teacher_vocab,)`` bool, whether the teacher token starts a word (its family's marker).
        student_to_teacher: list, for each student id, of the int64 teacher ids whose split starts with it.
        intersection: ``(n, 2)`` int64 pairs ``(teacher_id, student_id)`` of the same token.
    """

    def __init__(self, teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int],
                 teacher_specials: Mapping[str, str] | Iterable[str] = tuple(CONVENTIONAL_ROLES),
                 student_unk: str = "[UNK]", prefix: str = PREFIX, family: str | None = None,
                 split_punctuation: bool = True) -> None:
        if student_unk not in student_vocab:
            raise ValueError(f"the student vocabulary has no unknown token {student_unk!r}")
        self.family = family or detect_family_from_vocab(teacher_vocab)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown tokenizer family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        self.prefix = prefix
        self.split_punctuation = split_punctuation
        self._boundary = {"sentencepiece": METASPACE, "byte-level": " "}.get(self.family)
        self.student_vocab = dict(student_vocab)
        self.teacher_vocab = dict(teacher_vocab)
        self.student_unk_id = self.student_vocab[student_unk]
        if isinstance(teacher_specials, Mapping):
            self.special_targets = dict(teacher_specials)
        else:
            self.special_targets = {t: CONVENTIONAL_ROLES.get(t, t) for t in teacher_specials}
        self.teacher_specials = set(self.special_targets)
        n_teacher = max(self.teacher_vocab.values(), default=-1) + 1
        n_student = max(self.student_vocab.values(), default=-1) + 1
        self.teacher_tokens: list[str | None] = [None] * n_teacher
        for tok, i in self.teacher_vocab.items():
            self.teacher_tokens[i] = tok
        self.student_tokens: list[str | None] = [None] * n_student
        for tok, i in self.student_vocab.items():
            self.student_tokens[i] = tok
        self._max_len = max((len(t) for t in self.student_vocab), default=0)
        # The student's own tokens as (surface, word start), for the intersection; its specials excluded.
        student_specials = set(self.special_targets.values()) | set(DEFAULT_SPECIALS) | {student_unk}
        self._student_keys = {parse_token(t, "wordpiece", prefix): i for t, i in self.student_vocab.items()
                              if t not in student_specials and not _BRACKETED.match(t)}

        splits: list[list[int]] = []
        covered = np.zeros(n_teacher, dtype=bool)
        word_start = np.zeros(n_teacher, dtype=bool)
        # Intersection candidates per student id: (rank, teacher id); rank 0 = the teacher's own flag agrees.
        shared: dict[int, tuple[int, int]] = {}
        for t_id, token in enumerate(self.teacher_tokens):
            ids, start, same = self._split_ids(token) if token is not None else (None, False, None)
            word_start[t_id] = start
            if same is not None:
                candidate = (same[1], t_id)
                if same[0] not in shared or candidate < shared[same[0]]:
                    shared[same[0]] = candidate
            if ids is None:
                splits.append([self.student_unk_id])
            else:
                splits.append(ids)
                covered[t_id] = True
        self.lengths = np.fromiter((len(s) for s in splits), dtype=np.int64, count=n_teacher)
        max_pieces = int(self.lengths.max()) if n_teacher else 1
        matrix = np.full((n_teacher, max_pieces), -1, dtype=np.int64)
        rows = np.repeat(np.arange(n_teacher), self.lengths)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(self.lengths) - self.lengths, self.lengths)
        matrix[rows, cols] = np.fromiter((i for s in splits for i in s), dtype=np.int64, count=len(rows))
        self.teacher_to_student = matrix
        self.covered = covered
        self.word_start = word_start

        # Inverse map: student id -> teacher ids whose split starts with it (sorted, covered only).
        first = matrix[:, 0]
        order = np.argsort(first, kind="stable")
        order = order[covered[order]]
        bounds = np.searchsorted(first[order], np.arange(n_student + 1))
        self.student_to_teacher = [order[bounds[s]:bounds[s + 1]] for s in range(n_student)]
        pairs = sorted((t_id, s_id) for s_id, (_, t_id) in shared.items())
        self.intersection = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def from_vocabs(cls, teacher_vocab: Mapping[str, int], student_vocab: Mapping[str, int],
                    teacher_specials: Mapping[str, str] | Iterable[str] = tuple(CONVENTIONAL_ROLES),
                    family: str | None = None) -> TokenMap:
        """Build from two ``token -> id`` mappings (e.g. read from ``vocab.txt`` files)."""
        return cls(teacher_vocab, student_vocab, teacher_specials=teacher_specials, family=family)

    @classmethod
    def from_tokenizers(cls, teacher_tokenizer: Any, student_tokenizer: Any, family: str | None = None) -> TokenMap:
        """Build from two transformers tokenizers.

        The teacher's family comes from :func:`detect_family` unless ``family`` is given; its specials
        map by role (``cls_token`` or else ``bos_token`` -> the student's ``cls_token``; ``sep_token`` or
        else ``eos_token`` -> ``sep_token``; ``pad``, ``unk``, ``mask`` alike); other special tokens
        through :data:`CONVENTIONAL_ROLES` or to the same name.
        """
        student_unk = getattr(student_tokenizer, "unk_token", None) or "[UNK]"
        targets = {role: getattr(student_tokenizer, f"{role}_token", None) or name for role, name in ROLES.items()}
        specials: dict[str, str] = {}
        for role, fallback in (("cls", "bos"), ("sep", "eos"), ("pad", None), ("unk", None), ("mask", None)):
            for attr in (role, fallback):
                token = getattr(teacher_tokenizer, f"{attr}_token", None) if attr else None
                if isinstance(token, str) and token not in specials:
                    specials[token] = targets[role]
                    break
        teacher_vocab = teacher_tokenizer.get_vocab()
        for token in [*getattr(teacher_tokenizer, "all_special_tokens", ()), *CONVENTIONAL_ROLES]:
            if token not in specials and token in teacher_vocab:
                specials[token] = CONVENTIONAL_ROLES.get(token, token)
        return cls(teacher_vocab, student_tokenizer.get_vocab(), teacher_specials=specials,
                   student_unk=student_unk, family=family or detect_family(teacher_tokenizer),
                   split_punctuation=splits_punctuation(student_tokenizer))

    # ---------------------------------------------------------------------------------------------
    def _split_ids(self, token: str) -> tuple[list[int] | None, bool, tuple[int, int] | None]:
        """``(student ids or None, word start, (student id, rank) of the same token or None)``."""
        if token in self.special_targets or _BRACKETED.match(token):
            # Special and reserved tokens map by role / name or to [UNK], never spelled out.
            target = self.student_vocab.get(self.special_targets.get(token, token))
            return (None if target is None else [target]), True, (None if target is None else (target, 0))
        parsed = parse_token(token, self.family, self.prefix)
        if parsed is None:
            return None, False, None
        surface, start = parsed
        pieces: list[str] = []
        segments = self._segments(surface, start)
        for text, initial in segments:
            part = _greedy(text, initial, self.student_vocab, self._max_len, self.prefix)
            if part is None:
                return None, start, None
            pieces += part
        if not pieces:  # only space markers: no text to spell
            return None, start, None
        ids = [self.student_vocab[p] for p in pieces]
        same = None
        if len(segments) == 1 and len(ids) == 1:
            # One student token with the teacher token's text: the same token. Rank 1 when only the
            # student's punctuation rule made the flags agree ("," ~ "," while "▁," ~ "," ranks first).
            same = (ids[0], int(segments[0][1] != start))
        return ids, start, same

    def _segments(self, surface: str, start: bool) -> list[tuple[str, bool]]:
        """The surface as the student's pre-tokenizer would cut it: ``(text, word start)`` segments.

        A word boundary inside the token (``▁`` or a space) starts a new word; with punctuation
        isolation (BERT's pre-tokenizer, every ``build-vocab`` student) each punctuation character is a
        word of its own and the text after it starts a word too.
        """
        boundary = self._boundary
        punct = self.split_punctuation
        if not (boundary and boundary in surface) and not (punct and any(map(_is_punctuation, surface))):
            return [(surface, start)] if surface else []
        segments: list[tuple[str, bool]] = []
        begin, initial = 0, start
        for i, char in enumerate(surface):
            is_boundary = char == boundary
            if is_boundary or (punct and _is_punctuation(char)):
                if i > begin:
                    segments.append((surface[begin:i], initial))
                if not is_boundary:
                    segments.append((char, True))
                begin, initial = i + 1, True
        if begin < len(surface):
            segments.append((surface[begin:], initial))
        return segments

    def split_teacher_token(self, token: str) -> list[str]:
        """The student pieces of a teacher token string (``['[UNK]']`` if it cannot be covered).

        Works for any string in the teacher's notation, in the teacher vocabulary or not.
        """
        t_id = self.teacher_vocab.get(token)
        if t_id is not None:
            ids = self.teacher_to_student[t_id, : self.lengths[t_id]]
        else:
            ids = self._split_ids(token)[0] or [self.student_unk_id]
        return [self.student_tokens[i] for i in ids]

    def teacher_tokens_for(self, student_token: str) -> list[str]:
        """The teacher tokens whose split starts with ``student_token`` (the inverse map), as strings."""
        s_id = self.student_vocab[student_token]
        return [self.teacher_tokens[i] for i in self.student_to_teacher[s_id]]

    def rewrite(self, teacher_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewrite a teacher id sequence as student ids (the ``reduce`` alignment's input).

        Returns:
            ``(student_ids, owner)``: the concatenated pieces and, for each piece, the index of the
            teacher position it came from.

        >>> tmap = TokenMap({"[UNK]": 0, "abc": 1}, {"[UNK]": 0, "ab": 1, "##c": 2})
        >>> [a.tolist() for a in tmap.rewrite([1, 1])]
        [[1, 2, 1, 2], [0, 0, 1, 1]]
        """
        teacher_ids = np.asarray(teacher_ids, dtype=np.int64)
        rows = self.teacher_to_student[teacher_ids]  # (n, max_pieces)
        mask = rows >= 0
        owner = np.broadcast_to(np.arange(len(teacher_ids))[:, None], rows.shape)[mask]
        return rows[mask], owner

    def stats(self) -> dict[str, Any]:
        """Coverage figures for reports."""
        n_teacher = len(self.teacher_tokens)
        covered_lengths = self.lengths[self.covered]
        has_source = sum(1 for ids in self.student_to_teacher if len(ids))
        return {
            "family": self.family,
            "teacher_vocab_size": n_teacher,
            "student_vocab_size": len(self.student_tokens),
            "teacher_tokens_covered": int(self.covered.sum()),
            "teacher_tokens_unk": int(n_teacher - self.covered.sum()),
            "mean_pieces": float(covered_lengths.mean()) if covered_lengths.size else 0.0,
            "max_pieces": int(self.teacher_to_student.shape[1]),
            "intersection_size": len(self.intersection),
            "student_tokens_with_teacher_source": has_source,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (f"TokenMap({s['family']}, teacher={s['teacher_vocab_size']}, student={s['student_vocab_size']}, "
                f"covered={s['teacher_tokens_covered']}, intersection={s['intersection_size']})")
