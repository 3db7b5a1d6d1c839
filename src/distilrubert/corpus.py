"""Streaming corpus reader: ``.txt`` / ``.jsonl`` / ``.csv`` (optionally ``.gz``) files and directories.

Documents are read lazily, one line (or CSV record) at a time, so a corpus far larger than memory
streams through. Every document is NFC-normalised and stripped; empty documents are skipped. Bad input
(invalid UTF-8, a JSON line that does not parse, a missing field, a missing file) raises
:class:`CorpusError` naming the file and line; with ``on_error="skip"`` such lines are counted instead
and reported by :meth:`Corpus.report`.

Formats:
    * ``.txt``: one document a line.
    * ``.jsonl``: one JSON object a line; the text is in ``text_field`` (default: the first of
      ``text``, ``sentence`` present in the object).
    * ``.csv``: a header row; the text is in column ``text_field`` (same default candidates).

Example:
    >>> corpus = Corpus(["../shared/data/corpus"])  # doctest: +SKIP
    >>> next(iter(corpus))[:20]  # doctest: +SKIP
    'Жизнь прекрасна и уд'
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import sys
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TEXT_FIELDS", "SUFFIXES", "Corpus", "CorpusError", "iter_documents", "sample_corpus",
           "split_heldout"]

DEFAULT_TEXT_FIELDS = ("text", "sentence")
SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
"""Recognised corpus file suffixes (each also with ``.gz``). ``.json`` is read as JSON lines."""
TABLE_SUFFIXES = (".parquet", ".arrow")
"""Columnar files, read (streamed) with the ``datasets`` library; not gzipped."""
HUB_PREFIX = "hf:"
"""``hf:NAME[:CONFIG][:SPLIT]`` names a Hugging Face Hub dataset (streamed with ``datasets``)."""

# CSV fields of long documents exceed the csv module's default 128 KiB limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class CorpusError(ValueError):
    """Malformed or missing corpus input; the message names the file and line."""


def _kind(path: Path) -> str | None:
    """``txt`` / ``jsonl`` / ``csv`` from the suffixes (``.gz`` ignored), or ``None`` if unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    if suffixes[-1] in TABLE_SUFFIXES and path.suffix.lower() != ".gz":
        return suffixes[-1][1:]
    return {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffixes[-1])


def _parse_fields(text_field: str | Iterable[str] | None) -> tuple[str, ...]:
    if text_field is None:
        return DEFAULT_TEXT_FIELDS
    if isinstance(text_field, str):
        return tuple(f.strip() for f in text_field.split(",") if f.strip())
    return tuple(text_field)


def sample_corpus(split: Literal["train", "heldout"] = "train") -> Path:
    """The embedded sample corpus of the source checkout (``data/sample_corpus.jsonl.gz``).

    Built from the five offline Russian corpora (the three small ones whole, a share of the two dialogue
    sets) by ``scripts/build_sample_corpus.py`` (sources, sizes and licenses in ``data/README.md``); used
    when a command is given no ``--corpus``.

    Raises:
        FileNotFoundError: the package is not run from a source checkout that holds ``data/``.
    """
    name = "sample_corpus.jsonl.gz" if split == "train" else "sample_heldout.jsonl.gz"
    path = Path(__file__).resolve().parents[2] / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"the embedded sample corpus {path} is missing (it ships with the source "
                                "checkout, not with a wheel): pass --corpus PATH")
    return path


def split_heldout(text: str, fraction: float) -> bool:
    """Whether ``text`` belongs to the held-out split: a stable hash of its content, not its position.

    The same document lands on the same side in every run and whatever the file order.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class Corpus:
    """A re-iterable stream of documents from files and directories.

    Args:
        paths: Files or directories (searched recursively for recognised suffixes, sorted).
        text_field: JSON field / CSV column holding the text; a comma-separated list tries each in turn.
        on_error: ``"raise"`` stops at the first bad line; ``"skip"`` counts it (see :attr:`skipped`).
        normalize: Unicode normalisation form applied to each document (``None`` to keep it as is).

    Raises:
        CorpusError: on iteration, at a malformed line (``on_error="raise"``) or a missing path.
    """

    def __init__(self, paths: Iterable[str | Path], text_field: str | Iterable[str] | None = None,
                 on_error: Literal["raise", "skip"] = "raise", normalize: str | None = "NFC") -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        paths = list(paths)
        if not paths:
            raise CorpusError("--corpus: no corpus path given")
        self.hub = [HubDataset.parse(str(p)) for p in paths if str(p).startswith(HUB_PREFIX)]
        self.paths = [Path(p) for p in paths if not str(p).startswith(HUB_PREFIX)]
        if on_error not in ("raise", "skip"):
            raise ValueError(f"--on-error must be 'raise' or 'skip', got {on_error!r}")
        self.text_fields = _parse_fields(text_field)
        if not self.text_fields:
            raise ValueError("--text-field: give at least one field name")
        self.on_error = on_error
        self.normalize = normalize
        self.skipped: dict[str, int] = {}
        """Skipped lines per file (``on_error="skip"``), over all iterations so far."""
        self.first_errors: list[str] = []
        self.documents_read = 0
        self._files: list[Path] | None = None

    # ---------------------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """The corpus files, in reading order. Raises :class:`CorpusError` for a missing path."""
        if self._files is None:
            files: list[Path] = []
            for path in self.paths:
                if path.is_dir():
                    found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None
                                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
                    if not found:
                        kinds = "/".join(SUFFIXES + TABLE_SUFFIXES)
                        raise CorpusError(f"--corpus: directory {path} holds no {kinds} files (text ones optionally "
                                          ".gz)")
                    files += found
                elif path.is_file():
                    if _kind(path) is None:
                        raise CorpusError(f"--corpus: {path}: unknown file type; expected one of "
                                          f"{', '.join(SUFFIXES)} (optionally .gz), {', '.join(TABLE_SUFFIXES)}, or "
                                          f"a Hub dataset as {HUB_PREFIX}NAME[:CONFIG][:SPLIT]")
                    files.append(path)
                else:
                    raise CorpusError(f"--corpus: {path} does not exist")
            self._files = files
        return self._files

    def __iter__(self) -> Iterator[str]:
        for path in self.files():
            yield from self._read_file(path)
        for spec in self.hub:
            yield from self._read_records(spec.label, spec.rows(), "row")

    def key(self) -> list[Any]:
        """What the corpus's caches depend on: each file's path, size and time; each Hub dataset's name."""
        files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in self.files()]
        return files + [["hf", spec.name, spec.config, spec.split] for spec in self.hub]

    def report(self) -> str:
        """One line on what was read and skipped."""
        files = self.files()
        hub = f" and {len(self.hub)} Hub dataset(s)" if self.hub else ""
        msg = f"corpus: {len(files)} file(s){hub}, {self.documents_read:,} documents read"
        if self.skipped:
            total = sum(self.skipped.values())
            per_file = ", ".join(f"{name}: {n}" for name, n in self.skipped.items())
            msg += f"; {total:,} malformed line(s) skipped ({per_file}); first: {'; '.join(self.first_errors[:3])}"
        return msg

    # ---------------------------------------------------------------------------------------------
    def _bad(self, path: Path, line: int, what: str) -> None:
        message = f"{path}:{line}: {what}"
        if self.on_error == "raise":
            raise CorpusError(message + " (pass --on-error skip to skip such lines)")
        self.skipped[str(path)] = self.skipped.get(str(path), 0) + 1
        if len(self.first_errors) < 10:
            self.first_errors.append(message)

    def _clean(self, text: str) -> str:
        if self.normalize:
            text = unicodedata.normalize(self.normalize, text)
        return text.strip()

    def _lines(self, path: Path) -> Iterator[tuple[int, str | None]]:
        """``(line_number, text)``; ``text`` is ``None`` for a line that is not valid UTF-8."""
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        try:
            raw = opener(path, "rb")
        except OSError as err:
            raise CorpusError(f"{path}: cannot open: {err.strerror or err}") from err
        number = 0
        with raw:
            try:
                for number, line in enumerate(raw, start=1):
                    try:
                        yield number, line.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError as err:
                        yield number, None
                        logger.debug("%s:%d: %s", path, number, err)
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
                where = f"after line {number}" if number else "at the start"
                message = f"{path}: cannot read {where} (corrupt or truncated file?): {err}"
                if self.on_error == "raise":
                    raise CorpusError(message + " (pass --on-error skip to keep the lines read before it)") from err
                # The lines before the damage were good and are kept; the rest of the file is lost.
                logger.warning("%s; the %d lines before it are kept, the rest of the file is skipped", message,
                               number)
                self.skipped[str(path)] = self.skipped.get(str(path), 0) + 1
                if len(self.first_errors) < 10:
                    self.first_errors.append(message)

    def _field(self, record: dict, path: Path, line: int) -> str | None:
        for name in self.text_fields:
            if name in record:
                value = record[name]
                if value is None:
                    return ""
                if not isinstance(value, str):
                    self._bad(path, line, f"field {name!r} is {type(value).__name__}, not a string")
                    return None
                return value
        self._bad(path, line, f"no field {' / '.join(map(repr, self.text_fields))} "
                              f"(has: {', '.join(map(str, record)) or 'nothing'}; choose one with --text-field)")
        return None

    def _read_file(self, path: Path) -> Iterator[str]:
        kind = _kind(path)
        if kind == "csv":
            yield from self._read_csv(path)
            return
        if kind in ("parquet", "arrow"):
            yield from self._read_records(path, _table_rows(path, kind), "row")
            return
        for number, line in self._lines(path):
            if line is None:
                self._bad(path, number, "invalid UTF-8")
                continue
            if kind == "jsonl":
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    self._bad(path, number, f"invalid JSON: {err.msg} at column {err.colno}")
                    continue
                except RecursionError:
                    self._bad(path, number, "invalid JSON: nested too deeply")
                    continue
                if not isinstance(record, dict):
                    self._bad(path, number, f"expected a JSON object, got {type(record).__name__}")
                    continue
                text = self._record_text(record, path, number)
                if text is None:
                    continue
            else:
                text = line
            text = self._clean(text)
            if text:
                self.documents_read += 1
                yield text

    def _record_text(self, record: dict, path: Path | str, number: int) -> str | None:
        """The text field of one record, or ``None`` (reported) when it has none or it is not valid Unicode."""
        text = self._field(record, path, number)
        if text is None or text.isascii():
            return text
        # A JSON \ud800 escape decodes to a lone surrogate, which no tokenizer takes (and UTF-8 cannot hold);
        # bytes read as UTF-8 never give one, so only record-based sources need the check.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            self._bad(path, number, f"not valid Unicode: a lone surrogate (U+{ord(text[err.start]):04X}) at "
                                    f"character {err.start}")
            return None
        return text

    def _read_records(self, source: Path | str, rows: Iterator[dict], unit: str) -> Iterator[str]:
        """Texts of a table or Hub dataset's rows (errors name the source and the row number)."""
        for number, record in enumerate(rows, start=1):
            text = self._record_text(record, source, number)
            if text is None:
                continue
            text = self._clean(text)
            if text:
                self.documents_read += 1
                yield text

    def _read_csv(self, path: Path) -> Iterator[str]:
        # csv needs text lines; decode line by line so a bad byte names its line instead of killing the file.
        current = {"line": 0}

        def text_lines() -> Iterator[str]:
            for number, line in self._lines(path):
                current["line"] = number
                if line is None:
                    self._bad(path, number, "invalid UTF-8")
                    continue
                yield line + "\n"

        reader = csv.reader(text_lines())
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise CorpusError(f"{path}:1: cannot parse the CSV header: {err}") from err
        header = [h.strip().lstrip("\ufeff") for h in header]
        column = next((header.index(f) for f in self.text_fields if f in header), None)
        if column is None:
            raise CorpusError(f"{path}:1: no column {' / '.join(map(repr, self.text_fields))} in the header "
                              f"({', '.join(header)}); choose one with --text-field")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                self._bad(path, current["line"], f"malformed CSV: {err}")
                continue
            if not row:
                continue
            if len(row) <= column:
                self._bad(path, current["line"], f"row has {len(row)} column(s), expected at least {column + 1}")
                continue
            text = self._clean(row[column])
            if text:
                self.documents_read += 1
                yield text


def iter_documents(paths: Iterable[str | Path], text_field: str | None = None,
                   on_error: Literal["raise", "skip"] = "raise") -> Iterator[str]:
    """Stream the documents of ``paths`` (see :class:`Corpus`)."""
    yield from Corpus(paths, text_field=text_field, on_error=on_error)


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise CorpusError("--corpus: Parquet / Arrow files and hf: datasets are read with the `datasets` library: "
                          "pip install datasets (or the project's datasets extra)") from err
    return datasets


def _table_rows(path: Path, kind: str) -> Iterator[dict]:
    """The rows of a Parquet / Arrow file, streamed (never loaded whole)."""
    datasets = _datasets()
    try:
        stream = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True)
        yield from stream
    except CorpusError:
        raise
    except Exception as err:  # the readers raise many kinds (ArrowInvalid, OSError, ...): one line naming the file
        raise CorpusError(f"{path}: cannot read as {kind}: {type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class HubDataset:
    """``hf:NAME[:CONFIG][:SPLIT]``: a dataset on the Hugging Face Hub (split ``train`` by default)."""

    name: str
    config: str | None = None
    split: str = "train"

    @classmethod
    def parse(cls, spec: str) -> HubDataset:
        parts = spec[len(HUB_PREFIX):].split(":")
        if not parts[0] or len(parts) > 3 or any(not p for p in parts[1:]):
            raise CorpusError(f"--corpus {spec}: expected hf:NAME[:CONFIG][:SPLIT]")
        return cls(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train")

    @property
    def label(self) -> str:
        return HUB_PREFIX + ":".join(p for p in (self.name, self.config, self.split) if p)

    def rows(self) -> Iterator[dict]:
        datasets = _datasets()
        try:
            stream = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True)
            yield from stream
        except CorpusError:
            raise
        except Exception as err:  # offline, unknown name, no such split ...: one line
            raise CorpusError(f"--corpus {self.label}: cannot load it from the Hub ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no message'})") from err
