"""Build the embedded sample corpus (``data/``: train + held-out split, summary, README) from ../shared/data.

The five offline sources are read with the project's corpus reader (NFC + strip), deduplicated across and
within files on whitespace-collapsed text (which also removes every exact duplicate; fortunes and the
joke dialogues overlap), then:

* the three small sources (fortunes, technical docs, top subtitle sentences) are kept whole;
* of each dialogue set, a share (``--dialogue-share``) of its remaining texts is drawn with a fixed seed
  (``--seed``), in file order: the conversational register is the model's target, and the whole sets
  (~16M characters) would not fit in the repository.

Every kept text is split by a hash of its content (``distilrubert.corpus.split_heldout``), the same rule
every verb uses, so a held-out text of the sample is held out of a run on the full corpora too. Output is
deterministic (fixed order and seed, gzip without timestamps): rerunning reproduces ``data/`` byte for
byte. ``sample_corpus.json`` records per source file its documents, characters, license and origin and
the compressed size of both outputs; ``README.md`` is generated from the same numbers.

Usage:
    python scripts/build_sample_corpus.py [--shared ../shared/data/corpus] [--output data]
        [--heldout 0.05] [--dialogue-share 0.14] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import textwrap
from pathlib import Path
from typing import Any

from distilrubert.corpus import Corpus, split_heldout

TRAIN_FILE, HELDOUT_FILE = "sample_corpus.jsonl.gz", "sample_heldout.jsonl.gz"

# Earlier sources first: a duplicate is dropped from the later file, so the three small sources stay whole.
SOURCES: dict[str, dict[str, Any]] = {
    "fortunes": {
        "file": "fortunes_ru.jsonl", "sampled": False,
        "what": "Russian jokes, aphorisms and quotes (conversational, informal)",
        "license": "GPL-2", "origin": "Debian package `fortunes-ru` 1.52"},
    "docs": {
        "file": "docs_ru.jsonl", "sampled": False,
        "what": "paragraphs of Russian technical documentation (formal)",
        "license": "MPL-2.0 / GPL-compatible free licenses",
        "origin": "Debian packages `libreoffice-help-ru` (MPL-2.0), `debian-faq-ru`, `developers-reference-ru`, "
                  "`maint-guide-ru` (GPL-compatible free licenses)"},
    "subtitles": {
        "file": "subtitles_ru_top_sentences.csv", "sampled": False,
        "what": "the 10,000 most frequent Russian sentences of OpenSubtitles2018 (very short utterances)",
        "license": "same license as OpenSubtitles (OPUS)", "origin": "github.com/orgtre/top-open-subtitles-sentences"},
    "dialogues_anekdots": {
        "file": "dialogues_anekdots_ru.jsonl.gz", "sampled": True,
        "what": "short dialogues extracted from Russian jokes, one `- реплика` a line (conversational)",
        "license": "CC0-1.0",
        "origin": "github.com/Koziev/NLP_Datasets (`Conversations/Data/extract_dialogues_from_anekdots.txt`)"},
    "dialogues_movies": {
        "file": "dialogues_movies_ru.jsonl.gz", "sampled": True,
        "what": "Cornell movie-dialogs corpus in a (machine) Russian translation, same format (conversational)",
        "license": "CC0-1.0",
        "origin": "github.com/Koziev/NLP_Datasets (`Conversations/Data/cornell_movie_corpus.txt`)"},
}


def write_jsonl_gz(path: Path, records: list[dict]) -> dict[str, Any]:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    data = gzip.compress(payload, compresslevel=9, mtime=0)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {"documents": len(records), "characters": sum(len(r["text"]) for r in records),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build(shared: Path, heldout_fraction: float, dialogue_share: float, seed: int
          ) -> tuple[list[dict], list[dict], dict[str, dict[str, Any]]]:
    """The train and held-out records (grouped by source, in file order) and per-source statistics."""
    seen: set[str] = set()
    train: list[dict] = []
    heldout: list[dict] = []
    stats: dict[str, dict[str, Any]] = {}
    for source, meta in SOURCES.items():
        texts: list[str] = []
        read = 0
        for text in Corpus([shared / meta["file"]], text_field="text,sentence"):
            read += 1
            key = re.sub(r"\s+", " ", text)
            if key not in seen:
                seen.add(key)
                texts.append(text)
        unique = len(texts)
        if meta["sampled"]:
            # A seeded draw per source (not one shared stream), so changing one source's share leaves the others.
            rng = random.Random(f"{seed}:{source}")
            keep = sorted(rng.sample(range(unique), round(dialogue_share * unique)))
            texts = [texts[i] for i in keep]
        held = [t for t in texts if split_heldout(t, heldout_fraction)]
        kept = [t for t in texts if not split_heldout(t, heldout_fraction)]
        train += [{"text": t, "source": source} for t in kept]
        heldout += [{"text": t, "source": source} for t in held]
        stats[source] = {
            "file": meta["file"], "license": meta["license"], "origin": meta["origin"], "what": meta["what"],
            "read": read, "duplicates": read - unique, "share": dialogue_share if meta["sampled"] else 1.0,
            "train_documents": len(kept), "train_characters": sum(map(len, kept)),
            "heldout_documents": len(held), "heldout_characters": sum(map(len, held)),
        }
    return train, heldout, stats


def _para(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=104, break_on_hyphens=False, break_long_words=False)


def readme(summary: dict[str, Any], command: str) -> str:
    """``data/README.md``: every number is taken from ``summary`` (the content of ``sample_corpus.json``)."""
    files = summary["files"]
    tr, he = files[TRAIN_FILE], files[HELDOUT_FILE]
    rows = "\n".join(
        f"| `{name}` | `{s['file']}` | {s['what']} | {s['share']:.0%} | {s['train_documents']:,} / "
        f"{s['heldout_documents']:,} | {s['train_characters']:,} / {s['heldout_characters']:,} | "
        f"{s['license']}; {s['origin']} |"
        for name, s in summary["sources"].items())
    intro = _para(f"""
        `{TRAIN_FILE}` ({tr['documents']:,} texts, {tr['characters']:,} characters, {tr['bytes']:,} bytes) and
        `{HELDOUT_FILE}` ({he['documents']:,} texts, {he['characters']:,} characters, {he['bytes']:,} bytes;
        held out: never used for training) are the default corpus of distilrubert commands run without
        `--corpus`. One JSON object a line: `{{"text": ..., "source": ...}}`, grouped by source in the order
        of the table below. `sample_corpus.json` gives these counts per source file, their licenses and the
        SHA-256 of both files.""")
    method = _para(f"""
        Texts are read with the project's corpus reader (NFC-normalised, stripped) and deduplicated on
        whitespace-collapsed text across and within files (earlier sources win: the joke dialogues lose the
        texts they share with the fortunes). The three small sources are kept whole; of each dialogue set a
        {summary['dialogue_share']:.0%} share of its texts is drawn with a fixed seed ({summary['seed']}),
        since the whole sets would not fit in the repository. Every text is then split into train / held-out
        by a hash of its content ({summary['heldout_fraction']:.0%} held out;
        `distilrubert.corpus.split_heldout`), the rule every verb uses, so a held-out text here is held out of
        a run on the full corpora too.""")
    return f"""# The embedded sample corpus

<!-- Generated by scripts/build_sample_corpus.py from the numbers it writes to sample_corpus.json. -->

{intro}

Regenerate (byte-identical) from the offline corpora with:

```bash
{command}
```

{method}

## Sources, sizes and licenses

Documents and characters: train / held-out.

| source | file (`../shared/data/corpus/`) | what | share kept | documents | characters | license; origin |
|---|---|---|---|---|---|---|
{rows}

The corpus as a whole is distributed under the terms of its most restrictive part (GPL-2 for the
fortunes). It is far smaller than the original model's training data (billions of tokens): enough for
a 5K vocabulary and for CPU-scale experiments, not for a production-quality model.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/data/corpus")
    parser.add_argument("--output", default="data")
    parser.add_argument("--heldout", type=float, default=0.05, help="share of texts held out")
    parser.add_argument("--dialogue-share", type=float, default=0.14,
                        help="share of each dialogue set's (deduplicated) texts kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dialogue draw")
    args = parser.parse_args()
    if not 0.0 < args.heldout < 1.0:
        parser.error(f"--heldout must be in (0, 1), got {args.heldout}")
    if not 0.0 < args.dialogue_share <= 1.0:
        parser.error(f"--dialogue-share must be in (0, 1], got {args.dialogue_share}")

    train, heldout, stats = build(Path(args.shared), args.heldout, args.dialogue_share, args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {TRAIN_FILE: write_jsonl_gz(out / TRAIN_FILE, train),
             HELDOUT_FILE: write_jsonl_gz(out / HELDOUT_FILE, heldout)}
    summary = {"heldout_fraction": args.heldout, "dialogue_share": args.dialogue_share, "seed": args.seed,
               "dedup": "NFC + strip (corpus reader), then whitespace-collapsed text, across and within files",
               "sources": stats, "files": files,
               "total_bytes": sum(f["bytes"] for f in files.values())}
    (out / "sample_corpus.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    command = (f"python scripts/build_sample_corpus.py --shared {args.shared} --output {args.output} "
               f"--heldout {args.heldout} --dialogue-share {args.dialogue_share} --seed {args.seed}")
    (out / "README.md").write_text(readme(summary, command), encoding="utf-8")
    print(json.dumps({"files": files, "total_bytes": summary["total_bytes"]}, indent=2))


if __name__ == "__main__":
    main()
