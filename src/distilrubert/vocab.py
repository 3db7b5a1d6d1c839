"""Reduced student vocabulary: a cased WordPiece trained on the distillation corpus (REFERENCE 2.1).

The vocabulary is trained with the ``tokenizers`` WordPiece trainer and then completed so that every
character covering the corpus up to ``character_coverage`` is present in both forms (``ч`` and
``##ч``): this keeps ``[UNK]`` rare for any Russian text. The completion replaces the *last-learned*
merged tokens, so the result has exactly ``vocab_size`` entries.

Nothing is lower-cased and no accents are stripped: ``й`` and ``ё`` survive (``strip_accents=False``
would otherwise follow ``lowercase``). Text is NFC-normalised by the tokenizer itself, so NFD input
(``и`` + combining breve) tokenises like NFC input.

The output directory loads with ``transformers.AutoTokenizer.from_pretrained`` and also holds
``vocab_report.json`` / ``vocab_report.md``: UNK rate, tokens per word (fertility) and character
coverage on a held-out sample of the corpus, for each size asked with ``--sizes`` (plus a PNG plot).

Example:
    >>> from distilrubert.vocab import BuildVocabConfig, build_vocab
    >>> report = build_vocab(BuildVocabConfig(corpus=["corpus.jsonl"], output="v5k"))  # doctest: +SKIP
    >>> report["sizes"][0]["unk_rate"]  # doctest: +SKIP
    0.0003
"""

from __future__ import annotations

import collections
import json
import logging
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from distilrubert.config import option, to_dict
from distilrubert.corpus import Corpus, sample_corpus, split_heldout
from distilrubert.runinfo import atomic_output_dir, check_output_dir, run_info, write_json

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"
ALPHABET = "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдеёжзийклмнопрстуфхцчшщъыьэюя0123456789"
"""Characters kept whatever their corpus frequency (``Ё`` is rare in most corpora but must never be UNK)."""
MAX_LENGTH = 512
"""``model_max_length`` written into the tokenizer (the student's position embeddings)."""


@dataclass
class BuildVocabConfig:
    """Options of ``distilrubert build-vocab``."""

    output: str = option(help="Output directory for the tokenizer and its report.", metavar="DIR")
    corpus: list[str] = option([], "Corpus files or directories (.txt/.jsonl/.csv, optionally .gz); "
                               "default: the embedded sample corpus (data/sample_corpus.jsonl.gz).", metavar="PATH")
    vocab_size: int = option(5000, "Exact number of tokens, special tokens included.")
    sizes: list[int] = option([], "Also train these sizes and compare them in the report (e.g. 2000,5000,10000).")
    text_field: str | None = option(None, "JSON field / CSV column holding the text; comma-separated "
                                    "candidates allowed (default: text,sentence).")
    on_error: Literal["raise", "skip"] = option("raise", "Stop at a malformed corpus line, or skip and count it.")
    character_coverage: float = option(0.9999, "Keep the most frequent characters covering this share of "
                                       "all characters; each gets a word-initial and a ## token.")
    keep_characters: str = option(ALPHABET, "Characters always in the vocabulary (both forms), however rare.")
    min_frequency: int = option(2, "Minimum pair frequency for a merge in the WordPiece trainer.")
    heldout_fraction: float = option(0.02, "Share of documents (chosen by content hash) held out for the report.")
    heldout_max_docs: int = option(5000, "At most this many held-out documents are scored.")
    max_docs: int | None = option(None, "Read at most this many documents (quick runs).")
    overwrite: bool = option(False, "Replace an existing non-empty output directory.")

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIAL_TOKENS) + 2:
            raise ValueError(f"--vocab-size must be larger than {len(SPECIAL_TOKENS) + 1}, got {self.vocab_size}")
        for size in self.sizes:
            if size < len(SPECIAL_TOKENS) + 2:
                raise ValueError(f"--sizes: {size} is too small")
        if not 0.5 <= self.character_coverage <= 1.0:
            raise ValueError(f"--character-coverage must be in [0.5, 1], got {self.character_coverage}")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ValueError(f"--heldout-fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if self.min_frequency < 1:
            raise ValueError(f"--min-frequency must be >= 1, got {self.min_frequency}")
        if self.heldout_max_docs < 1:
            raise ValueError(f"--heldout-max-docs must be >= 1, got {self.heldout_max_docs}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"--max-docs must be >= 1, got {self.max_docs}")


# --------------------------------------------------------------------------------------------------
# tokenizer pipeline


def _new_tokenizer(vocab: dict[str, int] | None = None):
    """A cased BERT-style WordPiece pipeline (NFC, no lower-casing, no accent stripping)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=PREFIX,
                             max_input_chars_per_word=100) if vocab else models.WordPiece(unk_token="[UNK]")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                   lowercase=False),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
    if vocab:
        from tokenizers import processors

        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return tokenizer


def _is_countable_char(ch: str) -> bool:
    # Whitespace and control/format characters are removed or split on by the BERT normalizer and
    # pre-tokenizer, so they never need a token.
    return not ch.isspace() and unicodedata.category(ch)[0] != "C"


def required_characters(char_counts: collections.Counter, coverage: float) -> list[str]:
    """The most frequent characters whose occurrences add up to ``coverage`` of all characters."""
    total = sum(char_counts.values())
    chosen: list[str] = []
    covered = 0
    for ch, count in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if total and covered / total >= coverage:
            break
        chosen.append(ch)
        covered += count
    return chosen


def complete_vocab(learned: list[str], chars: list[str], size: int) -> list[str]:
    """Specials, every required character and its ``##`` form, then learned tokens in merge order.

    Args:
        learned: Trainer vocabulary in id order (= the order the trainer added tokens: alphabet, merges).
        chars: Characters that must be present in both forms.
        size: Exact size of the result.

    Raises:
        ValueError: if ``size`` is smaller than the required tokens or larger than what was learned.
    """
    required = list(SPECIAL_TOKENS)
    for ch in chars:
        required += [ch, PREFIX + ch]
    required = list(dict.fromkeys(required))
    if len(required) > size:
        raise ValueError(f"--vocab-size {size} is smaller than the {len(required)} special and character tokens "
                         "needed; raise it or lower --character-coverage")
    required_set = set(required)
    rest = [t for t in dict.fromkeys(learned) if t not in required_set]
    missing = size - len(required)
    if len(rest) < missing:
        raise ValueError(f"the corpus yields only {len(required) + len(rest)} distinct tokens, fewer than the "
                         f"{size} asked; use a larger corpus, a smaller --vocab-size or --min-frequency 1")
    return required + rest[:missing]


def train_wordpiece(texts: Iterable[str], size: int, chars: list[str], min_frequency: int,
                    n_texts: int | None = None):
    """Train a WordPiece of exactly ``size`` tokens (see :func:`complete_vocab`)."""
    from tokenizers import trainers

    tokenizer = _new_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=chars,
        # Rare characters beyond the coverage set would take merges' places; they become [UNK].
        limit_alphabet=len(chars),
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=n_texts)
    learned = [tok for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = complete_vocab(learned, chars, size)
    return _new_tokenizer({tok: i for i, tok in enumerate(tokens)})


def to_transformers(tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer that keeps its exact pipeline.

    transformers' ``BertTokenizer`` class would rebuild the normalizer from its flags on loading and
    drop the NFC step; the generic fast tokenizer loads ``tokenizer.json`` as written. DistilBERT takes
    no token type ids, so the tokenizer does not produce them.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
"""What a tokenizer directory written by :func:`save_tokenizer` holds."""


PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class a written ``tokenizer_config.json`` names when transformers 5 would write ``TokenizersBackend``:
it exists in transformers 4.x and 5.x and reads ``tokenizer.json`` as it is."""


def make_tokenizer_portable(directory: str | Path) -> None:
    """Let a tokenizer directory load on transformers 4.x too.

    transformers 5 saves a tokenizer built from a ``tokenizers`` object as ``"tokenizer_class":
    "TokenizersBackend"``, a class 4.x does not have (``AutoTokenizer`` fails there). Such a config, or one
    without a class, is rewritten to :data:`PORTABLE_TOKENIZER_CLASS` when ``tokenizer.json`` is present;
    other classes (``BertTokenizer`` ...) exist in both and are kept.
    """
    directory = Path(directory)
    path = directory / "tokenizer_config.json"
    if not path.is_file() or not (directory / "tokenizer.json").is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_pretrained_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """``tokenizer.save_pretrained(directory)``, written so that transformers 4.x and 5.x both load it."""
    tokenizer.save_pretrained(str(directory))
    make_tokenizer_portable(directory)


def copy_tokenizer_files(source: str | Path, target: str | Path) -> None:
    """Copy the tokenizer files present in ``source`` into the model directory ``target`` (made portable)."""
    import shutil

    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(target) / name)
    make_tokenizer_portable(target)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json, vocab.txt and special_tokens_map.json."""
    save_pretrained_tokenizer(to_transformers(tokenizer), directory)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (directory / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab), encoding="utf-8")
    special = {f"{name}_token": f"[{name.upper()}]" for name in ("unk", "sep", "pad", "cls", "mask")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# evaluation


def score_tokenizer(tokenizer, texts: list[str], batch_size: int = 1000) -> dict[str, float]:
    """UNK rate, tokens per word and character coverage of ``tokenizer`` on ``texts``."""
    vocab = tokenizer.get_vocab()
    unk_id = vocab["[UNK]"]
    alphabet = {tok for tok in vocab if len(tok) == 1}
    n_tokens = n_unk = n_words = n_words_unk = n_single = 0
    n_chars = n_chars_known = 0
    for start in range(0, len(texts), batch_size):
        for enc in tokenizer.encode_batch(texts[start:start + batch_size], add_special_tokens=False):
            ids = enc.ids
            n_tokens += len(ids)
            n_unk += sum(1 for i in ids if i == unk_id)
            per_word: dict[int, list[int]] = collections.defaultdict(list)
            for token_id, word in zip(ids, enc.word_ids, strict=True):
                per_word[word].append(token_id)
            n_words += len(per_word)
            n_words_unk += sum(1 for pieces in per_word.values() if unk_id in pieces)
            n_single += sum(1 for pieces in per_word.values() if len(pieces) == 1 and pieces[0] != unk_id)
    for text in texts:
        for ch in unicodedata.normalize("NFC", text):
            if _is_countable_char(ch):
                n_chars += 1
                n_chars_known += ch in alphabet
    return {
        "tokens": n_tokens,
        "words": n_words,
        "unk_rate": n_unk / max(n_tokens, 1),
        "words_with_unk": n_words_unk / max(n_words, 1),
        "fertility": n_tokens / max(n_words, 1),
        "single_token_words": n_single / max(n_words, 1),
        "character_coverage": n_chars_known / max(n_chars, 1),
    }


def _markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# Vocabulary report: {report['vocab_size']} tokens",
        "",
        f"Corpus: {', '.join(report['corpus'])}; {report['train_documents']:,} training documents, "
        f"{report['heldout_documents']:,} held-out documents scored ({report['heldout_words']:,} words).",
        f"Characters kept: {report['characters']} (coverage target {report['character_coverage_target']}).",
        "",
        "| vocab size | UNK rate | words with UNK | tokens per word | one-token words | char coverage |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sizes"]:
        mark = " **(saved)**" if row["vocab_size"] == report["vocab_size"] else ""
        lines.append(
            f"| {row['vocab_size']:,}{mark} | {row['unk_rate']:.4%} | {row['words_with_unk']:.4%} | "
            f"{row['fertility']:.3f} | {row['single_token_words']:.1%} | {row['character_coverage']:.4%} |"
        )
    lines += ["", "Measured on held-out documents of the corpus (never seen by the trainer)."]
    if report.get("plot"):
        lines += ["", f"![fertility vs vocabulary size]({report['plot']})"]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["vocab_size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(sizes, [r["fertility"] for r in rows], marker="o", label="tokens per word")
    ax.set_xscale("log")
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("tokens per word (held-out)")
    ax.set_title("Fertility vs vocabulary size")
    ax.grid(True, which="both", alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(sizes, [100 * r["unk_rate"] for r in rows], marker="s", color="tab:red", label="UNK %")
    ax2.set_ylabel("UNK rate, %", color="tab:red")
    for size, row in zip(sizes, rows, strict=True):
        ax.annotate(f"{row['fertility']:.2f}", (size, row["fertility"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# the verb


def build_vocab(config: BuildVocabConfig) -> dict[str, Any]:
    """Train the vocabulary, score it on held-out text and write the output directory.

    Returns:
        The report (also written to ``vocab_report.json``).
    """
    output = check_output_dir(config.output, config.overwrite)
    if not config.corpus:
        config.corpus = [str(sample_corpus())]
        logger.info("no --corpus given: using the embedded sample corpus %s", config.corpus[0])
    corpus = Corpus(config.corpus, text_field=config.text_field, on_error=config.on_error)
    corpus.files()  # fail fast on a missing path

    def documents() -> Iterator[str]:
        for i, text in enumerate(corpus):
            if config.max_docs is not None and i >= config.max_docs:
                return
            yield text

    # Pass 1: character counts of the training part, held-out sample, document count.
    char_counts: collections.Counter = collections.Counter()
    heldout: list[str] = []
    n_train = 0
    for text in tqdm(documents(), desc="reading corpus", unit=" docs", total=config.max_docs):
        if split_heldout(text, config.heldout_fraction):
            if len(heldout) < config.heldout_max_docs:
                heldout.append(text)
        else:
            n_train += 1
            char_counts.update(text)
    logger.info("%s", corpus.report())
    if n_train == 0:
        raise ValueError(f"--corpus: no documents found in {', '.join(config.corpus)}")
    if not heldout:
        logger.warning("no document fell into the held-out split; scoring on training documents instead")
        heldout = [t for _, t in zip(range(config.heldout_max_docs), documents(), strict=False)]
    char_counts = collections.Counter({c: n for c, n in char_counts.items() if _is_countable_char(c)})
    chars = required_characters(char_counts, config.character_coverage)
    kept = [ch for ch in unicodedata.normalize("NFC", config.keep_characters) if _is_countable_char(ch)]
    chars = list(dict.fromkeys(chars + kept))
    logger.info("%d training documents, %d held out; %d distinct characters, %d kept (coverage %.4f)",
                n_train, len(heldout), len(char_counts), len(chars), config.character_coverage)

    def training_texts() -> Iterator[str]:
        return (t for t in documents() if not split_heldout(t, config.heldout_fraction))

    sizes = sorted(set(config.sizes) | {config.vocab_size})
    rows: list[dict[str, Any]] = []
    saved = None
    for size in tqdm(sizes, desc="training vocabularies", unit=" size", disable=len(sizes) == 1):
        try:
            tokenizer = train_wordpiece(training_texts(), size, chars, config.min_frequency, n_train)
        except ValueError as err:
            if size == config.vocab_size:
                raise
            logger.warning("size %d skipped: %s", size, err)
            continue
        scores = score_tokenizer(tokenizer, heldout)
        rows.append({"vocab_size": size, **scores})
        logger.info("size %6d: UNK %.4f%%, %.3f tokens/word", size, 100 * scores["unk_rate"], scores["fertility"])
        if size == config.vocab_size:
            saved = tokenizer

    report: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "corpus": [str(p) for p in config.corpus],
        "files": [str(p) for p in corpus.files()],
        "train_documents": n_train,
        "heldout_documents": len(heldout),
        "heldout_words": next(r["words"] for r in rows if r["vocab_size"] == config.vocab_size),
        "skipped_lines": corpus.skipped,
        "characters": len(chars),
        "distinct_characters_seen": len(char_counts),
        "character_coverage_target": config.character_coverage,
        "sizes": rows,
        "plot": "fertility_vs_size.png" if len(rows) > 1 else None,
    }
    with atomic_output_dir(output, overwrite=config.overwrite) as tmp:
        save_tokenizer(saved, tmp)
        write_json(tmp / "vocab_report.json", report)
        (tmp / "vocab_report.md").write_text(_markdown_report(report), encoding="utf-8")
        if len(rows) > 1:
            _plot(rows, tmp / "fertility_vs_size.png")
        write_json(tmp / "run.json", run_info("build-vocab", to_dict(config), metrics=rows))
    logger.info("wrote %s (%d tokens); report: %s", output, config.vocab_size, output / "vocab_report.md")
    print(_markdown_report(report))
    return report


def run(config: BuildVocabConfig) -> int:
    """CLI entry point of ``distilrubert build-vocab``."""
    build_vocab(config)
    return 0
