"""Readers for the paper's task formats (REFERENCE.md section 3) and for users' own data.

Every reader returns plain dataclasses and raises :class:`DataFormatError` (a ``ValueError``) naming the
file and the line (or the JSON record) of the first malformed row, so a bad file fails before training.

Formats:
    * classification CSV: RuSentiment ``label,text``; SentiRuEval (encodechka) ``text,answer,...``;
      generic ``text[,text_pair],label``. Columns are found by name.
    * classification JSONL: one ``{"text": ..., ["text_pair": ...,] "label": ...}`` object a line.
    * paraphrase: ParaPhraser XML (``<paraphrase><value name="text_1">...``) and its CSV
      ``id,id_1,id_2,text_1,text_2,class`` (``para_gold.csv``); class -1 = not, 0 = near, 1 = precise.
    * NER: CoNLL, ``token<TAB or space>tag`` a line (extra middle columns ignored), blank line between
      sentences, IOB2 tags; factRuEval character spans (``factru.json``) converted to IOB2.
    * QA: SQuAD v1.1 JSON (SberQuAD).

Example:
    >>> examples = read_classification("rusentiment_random_posts.csv")  # doctest: +SKIP
    >>> examples[0].label, examples[0].text  # doctest: +SKIP
    ('positive', 'Отличный день!')
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
import xml.parsers.expat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "FACTRU_TAGS",
    "DataFormatError",
    "QAExample",
    "TextExample",
    "TokenExample",
    "factru_to_iob2",
    "read_classification",
    "read_conll",
    "read_factru",
    "read_factru_iob2",
    "read_paraphrase",
    "read_squad",
    "split_examples",
    "write_conll",
]

# Large CSV fields (long posts) exceed csv's default 128 KB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# factRuEval-2016 span types -> the Collection-3 tag set (PER/LOC/ORG). Project (42 spans in factru.json)
# and Facility (3 spans, not in Collection-3's scheme either) are dropped or kept as MISC by option.
FACTRU_TAGS = {"Person": "PER", "Location": "LOC", "LocOrg": "LOC", "Org": "ORG", "Project": "MISC",
               "Facility": "MISC"}

TEXT_COLUMNS = ("text", "sentence", "text_1", "sentence1")
PAIR_COLUMNS = ("text_pair", "text_2", "sentence2")
LABEL_COLUMNS = ("label", "answer", "class", "sentiment", "gold_label")


class DataFormatError(ValueError):
    """A task data file is malformed; the message names the file and line (or record)."""


@dataclass
class TextExample:
    """One sentence (or sentence pair) with its class label (a string, as written in the file)."""

    text: str
    label: str
    text_pair: str | None = None


@dataclass
class TokenExample:
    """One sentence as words with their IOB2 tags."""

    tokens: list[str]
    tags: list[str]


@dataclass
class QAExample:
    """One SQuAD question: its context and the gold answers (texts and character starts)."""

    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# classification and pairs
# ------------------------------------------------------------------------------------------------

def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], path: Path, what: str,
          required: bool = True) -> str | None:
    if wanted:
        if wanted not in columns:
            raise DataFormatError(f"{path}:1: no column {wanted!r} for the {what} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    if required:
        raise DataFormatError(f"{path}:1: no {what} column; expected one of {', '.join(candidates)} "
                              f"(columns: {', '.join(columns)})")
    return None


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if not columns:
            raise DataFormatError(f"{path}:1: empty file or missing header")
        rows = []
        start = 2
        try:
            for row in reader:
                if None in row:
                    raise DataFormatError(f"{path}:{start}: {len(columns) + len(row[None])} fields, "
                                          f"header has {len(columns)}")
                if any(v is None for v in row.values()):
                    raise DataFormatError(f"{path}:{start}: fewer fields than the header's {len(columns)}")
                rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as err:
            raise DataFormatError(f"{path}:{reader.line_num}: {err}") from err
    return columns, rows


def paraphrase_label(value: str, scheme: Literal["binary", "three"], where: str) -> str:
    """Map a ParaPhraser class (-1, 0, 1) to a label: binary = paraphrase (0 or 1) vs not (-1)."""
    value = value.strip()
    try:
        number = int(float(value))
    except ValueError:
        raise DataFormatError(f"{where}: class {value!r} is not -1, 0 or 1") from None
    if number not in (-1, 0, 1):
        raise DataFormatError(f"{where}: class {value!r} is not -1, 0 or 1")
    if scheme == "three":
        return str(number)
    return "paraphrase" if number >= 0 else "not_paraphrase"


def read_classification(path: str | Path, text_column: str | None = None, label_column: str | None = None,
                        pair_column: str | None = None, pairs: bool = False) -> list[TextExample]:
    """Read labelled texts (or pairs with ``pairs=True``) from CSV or JSONL.

    Args:
        path: ``.csv`` (header row; columns found by name) or ``.jsonl``/``.json`` (one object a line).
        text_column: Text column; default the first of ``text, sentence, text_1, sentence1``.
        label_column: Label column; default the first of ``label, answer, class, sentiment, gold_label``.
        pair_column: Second text of a pair; default the first of ``text_pair, text_2, sentence2``.
        pairs: Require the second text (pair classification).

    Raises:
        DataFormatError: missing columns, empty texts or labels, bad JSON; names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[tuple[int, dict]]
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{number}: invalid JSON: {err.msg}") from None
                if not isinstance(obj, dict):
                    raise DataFormatError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
                rows.append((number, obj))
        columns = sorted({k for _, obj in rows for k in obj})
    else:
        columns, rows = _read_csv_rows(path)
    text_col = _pick(columns, text_column, TEXT_COLUMNS, path, "text")
    label_col = _pick(columns, label_column, LABEL_COLUMNS, path, "label")
    pair_col = _pick(columns, pair_column, PAIR_COLUMNS, path, "second text", required=pairs) if (
        pairs or pair_column) else None
    examples = []
    for number, row in rows:
        text, label = row.get(text_col), row.get(label_col)
        if text is None or not str(text).strip():
            raise DataFormatError(f"{path}:{number}: empty {text_col!r}")
        if label is None or str(label).strip() == "":
            raise DataFormatError(f"{path}:{number}: empty {label_col!r}")
        pair = None
        if pair_col is not None:
            pair = row.get(pair_col)
            if pair is None or not str(pair).strip():
                raise DataFormatError(f"{path}:{number}: empty {pair_col!r}")
            pair = str(pair)
        examples.append(TextExample(text=str(text), label=str(label).strip(), text_pair=pair))
    if not examples:
        raise DataFormatError(f"{path}: no examples")
    return examples


def _read_paraphraser_xml(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``<paraphrase><value name=...>`` records with the line each record starts on (expat, no entities)."""
    records: list[tuple[int, dict[str, str]]] = []
    state: dict = {"record": None, "name": None, "chars": []}
    # ParaPhraser declares encoding="UTF8", a name expat does not know: the files are UTF-8, say so.
    parser = xml.parsers.expat.ParserCreate(encoding="utf-8")

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag == "paraphrase":
            state["record"] = (parser.CurrentLineNumber, {})
        elif tag == "value" and state["record"] is not None:
            if "name" not in attrs:
                raise DataFormatError(f"{path}:{parser.CurrentLineNumber}: <value> without a name attribute")
            state["name"], state["chars"] = attrs["name"], []

    def end(tag: str) -> None:
        if tag == "value" and state["record"] is not None and state["name"] is not None:
            state["record"][1][state["name"]] = "".join(state["chars"])
            state["name"] = None
        elif tag == "paraphrase" and state["record"] is not None:
            records.append(state["record"])
            state["record"] = None

    def chars(data: str) -> None:
        if state["name"] is not None:
            state["chars"].append(data)

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, chars
    try:
        with path.open("rb") as handle:
            parser.ParseFile(handle)
    except xml.parsers.expat.ExpatError as err:
        raise DataFormatError(f"{path}:{err.lineno}: invalid XML: {xml.parsers.expat.ErrorString(err.code)}") from None
    return records


def read_paraphrase(path: str | Path, scheme: Literal["binary", "three"] = "binary") -> list[TextExample]:
    """Read ParaPhraser pairs from its XML or from the CSV of ``para_gold.csv``.

    Args:
        path: ``.xml`` (ParaPhraser corpus) or ``.csv`` with ``text_1,text_2,class``.
        scheme: ``binary``: label ``paraphrase`` for class 0 or 1, ``not_paraphrase`` for -1 (the paper's
            metric); ``three``: the class itself as the label.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".xml":
        rows = _read_paraphraser_xml(path)
    else:
        columns, rows = _read_csv_rows(path)
        for name in ("text_1", "text_2", "class"):
            if name not in columns:
                raise DataFormatError(f"{path}:1: no column {name!r} (columns: {', '.join(columns)})")
    examples = []
    for number, row in rows:
        where = f"{path}:{number}"
        for name in ("text_1", "text_2", "class"):
            if not (row.get(name) or "").strip():
                raise DataFormatError(f"{where}: missing or empty {name!r}")
        examples.append(TextExample(text=row["text_1"].strip(), text_pair=row["text_2"].strip(),
                                    label=paraphrase_label(row["class"], scheme, where)))
    if not examples:
        raise DataFormatError(f"{path}: no paraphrase pairs")
    return examples


# ------------------------------------------------------------------------------------------------
# NER
# ------------------------------------------------------------------------------------------------

_TAG = re.compile(r"^(O|[BI]-[^\s]+)$")


def check_iob2(tags: Sequence[str], where: Sequence[str]) -> None:
    """Raise if a tag is not ``O``/``B-X``/``I-X`` or an ``I-X`` does not continue an ``X`` entity."""
    previous = "O"
    for tag, place in zip(tags, where, strict=True):
        if not _TAG.match(tag):
            raise DataFormatError(f"{place}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise DataFormatError(f"{place}: {tag} follows {previous} (IOB2 starts every entity with B-)")
        previous = tag


def read_conll(path: str | Path) -> list[TokenExample]:
    """Read CoNLL NER: ``token<TAB or space>tag`` a line, a blank line between sentences, IOB2 tags.

    The first column is the token and the last the tag (POS/chunk columns in between are ignored);
    ``-DOCSTART-`` lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    places: list[str] = []

    def flush() -> None:
        if tokens:
            check_iob2(tags, places)
            examples.append(TokenExample(tokens=list(tokens), tags=list(tags)))
            tokens.clear(), tags.clear(), places.clear()

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if parts[0].startswith("-DOCSTART-"):
                continue
            if len(parts) < 2 or not parts[0] or not parts[-1].strip():
                raise DataFormatError(f"{path}:{number}: expected 'token<TAB>tag', got {line[:60]!r}")
            tokens.append(parts[0])
            tags.append(parts[-1].strip())
            places.append(f"{path}:{number}")
    flush()
    if not examples:
        raise DataFormatError(f"{path}: no sentences")
    return examples


def write_conll(examples: Sequence[TokenExample], path: str | Path) -> None:
    """Write sentences as CoNLL (``token<TAB>tag``, blank line between sentences)."""
    from distilrubert.runinfo import atomic_write_text

    text = "".join("".join(f"{t}\t{g}\n" for t, g in zip(e.tokens, e.tags, strict=True)) + "\n" for e in examples)
    atomic_write_text(path, text)


_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]", re.UNICODE)
_SENTENCE_END = {".", "!", "?", "…"}


def factru_to_iob2(text: str, spans: Sequence[Sequence], project: Literal["drop", "misc"] = "drop",
                   max_words: int = 128, where: str = "") -> list[TokenExample]:
    """Convert one text with character-span entities to IOB2 sentences.

    Words are ``\\w+`` runs (inner hyphens/apostrophes kept) and single punctuation marks. A word takes
    the type of the first span (by start, longer first) that overlaps it; the first word of a span is
    ``B-``, the rest ``I-``. Types map by :data:`FACTRU_TAGS` (LocOrg -> LOC); ``Project`` and
    ``Facility`` are dropped or kept as MISC. Sentences end at a line break, or after ``. ! ? …`` and
    whitespace before an upper-case/digit word; never inside an entity; and are cut into pieces of at
    most ``max_words`` words.
    """
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
    tags = ["O"] * len(words)
    checked = []
    for j, span in enumerate(spans):
        place = f"{where} labels entry {j}"
        if not isinstance(span, list | tuple) or len(span) != 3:
            raise DataFormatError(f"{place}: expected [type, start, end], got {span!r}")
        kind, start, end = span
        if kind not in FACTRU_TAGS:
            raise DataFormatError(f"{place}: unknown entity type {kind!r} (known: {', '.join(FACTRU_TAGS)})")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise DataFormatError(f"{place}: span {start}..{end} is outside the text of {len(text)} characters")
        checked.append((kind, start, end))
    for kind, start, end in sorted(checked, key=lambda s: (s[1], -(s[2] - s[1]))):
        tag = FACTRU_TAGS[kind]
        if tag == "MISC" and project == "drop":
            continue
        inside = [i for i, (_, ws, we) in enumerate(words) if ws < end and we > start]
        if not inside or any(tags[i] != "O" for i in inside):
            continue  # nested or overlapping span: the outer/earlier one wins
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + tag
    sentences: list[TokenExample] = []
    current: list[int] = []
    for i in range(len(words)):
        current.append(i)
        nxt = i + 1
        if nxt == len(words):
            continue
        if len(current) >= max_words:
            boundary = True
        elif tags[nxt].startswith("I-"):
            continue
        else:
            gap = text[words[i][2]:words[nxt][1]]
            following = words[nxt][0]
            sentence_end = words[i][0] in _SENTENCE_END and gap != "" and gap.strip() == ""
            starts_sentence = following[0].isupper() or following[0].isdigit() or following[0] in "«\"-—"
            boundary = "\n" in gap or (sentence_end and starts_sentence)
        if boundary:
            sentences.append(TokenExample([words[k][0] for k in current], [tags[k] for k in current]))
            current = []
    if current:
        sentences.append(TokenExample([words[k][0] for k in current], [tags[k] for k in current]))
    for sentence in sentences:  # a cut at max_words inside an entity starts the next piece with I-
        if sentence.tags[0].startswith("I-"):
            sentence.tags[0] = "B-" + sentence.tags[0][2:]
    return sentences


def _load_json(path: Path):
    """A whole JSON file; a missing file or invalid JSON is an error naming the file (and line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None


def read_factru(path: str | Path) -> tuple[list[str], list[list]]:
    """Read ``{"texts": [str], "labels": [[[type, start, end], ...]]}`` (encodechka's factru.json)."""
    path = Path(path)
    data = _load_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("texts"), list) and isinstance(data.get("labels"), list)):
        raise DataFormatError(f'{path}: expected {{"texts": [...], "labels": [...]}}')
    texts, labels = data["texts"], data["labels"]
    if len(texts) != len(labels):
        raise DataFormatError(f"{path}: {len(texts)} texts but {len(labels)} label lists")
    for i, (text, spans) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str) or not isinstance(spans, list):
            raise DataFormatError(f"{path}: texts[{i}] must be a string and labels[{i}] a list")
    return texts, labels


def read_factru_iob2(path: str | Path, project: Literal["drop", "misc"] = "drop",
                     max_words: int = 128) -> list[list[TokenExample]]:
    """``factru.json`` -> IOB2 sentences, grouped per text (split by text, never inside one)."""
    texts, labels = read_factru(path)
    return [factru_to_iob2(text, spans, project=project, max_words=max_words, where=f"{path}: texts[{i}]")
            for i, (text, spans) in enumerate(zip(texts, labels, strict=True))]


# ------------------------------------------------------------------------------------------------
# QA
# ------------------------------------------------------------------------------------------------

def read_squad(path: str | Path) -> list[QAExample]:
    """Read SQuAD v1.1 JSON (SberQuAD): ``data[].paragraphs[].qas[]`` with ``answers[]``.

    An ``answer_start`` that does not point at the answer text is moved to the nearest occurrence of
    the text in the context (SberQuAD has a few off-by-some starts); an answer not in the context at all
    is an error naming the question.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataFormatError(f'{path}: expected SQuAD JSON {{"data": [...]}}')
    examples = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            place = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context:
                raise DataFormatError(f"{place}: missing 'context'")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{place}.qas[{q}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or "id" not in qa:
                    raise DataFormatError(f"{where}: a question needs 'id' and 'question'")
                where = f"{where} (id {qa['id']})"
                texts, starts = [], []
                for answer in qa.get("answers", []):
                    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
                        raise DataFormatError(f"{where}: an answer needs 'text' and 'answer_start'")
                    text, start = answer["text"], answer.get("answer_start")
                    if not isinstance(start, int):
                        raise DataFormatError(f"{where}: answer_start {start!r} is not an integer")
                    if context[start:start + len(text)] != text:
                        found = [m.start() for m in re.finditer(re.escape(text), context)]
                        if not found:
                            raise DataFormatError(f"{where}: answer {text!r} is not in the context")
                        start = min(found, key=lambda s, start=start: abs(s - start))
                    texts.append(text)
                    starts.append(start)
                if not texts:
                    raise DataFormatError(f"{where}: no answers (SQuAD v1.1 questions are answerable)")
                examples.append(QAExample(id=str(qa["id"]), question=qa["question"], context=context,
                                          answers=texts, answer_starts=starts))
    if not examples:
        raise DataFormatError(f"{path}: no questions")
    return examples


# ------------------------------------------------------------------------------------------------
# splitting
# ------------------------------------------------------------------------------------------------

def split_examples(items: Sequence, eval_fraction: float, seed: int = 42) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``eval_fraction`` of the items (at least one each side)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in (0, 1), got {eval_fraction}")
    if len(items) < 2:
        raise ValueError(f"cannot split {len(items)} example(s) into train and eval")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(items) - 1, max(1, round(len(items) * eval_fraction)))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]
