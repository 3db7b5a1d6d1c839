"""Build the embedded sample corpus (``data/sample_corpus.jsonl.gz`` + held-out split) from ../shared/data.

All three offline sources (fortunes, technical docs, top subtitle sentences) are read with the project's
corpus reader, deduplicated on whitespace-collapsed text, and split by a hash of each text's content
(``distilrubert.corpus.split_heldout``): the held-out part never reaches training and serves for
validation and probes. Output is deterministic (sorted sources, gzip without timestamps), so rerunning
the script reproduces the committed files byte for byte.

Usage:
    python scripts/build_sample_corpus.py [--shared ../shared/data/corpus] [--output data] [--heldout 0.05]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path

from distilrubert.corpus import Corpus, split_heldout

SOURCES = {
    "fortunes": "fortunes_ru.jsonl",
    "docs": "docs_ru.jsonl",
    "subtitles": "subtitles_ru_top_sentences.csv",
}


def write_jsonl_gz(path: Path, records: list[dict]) -> str:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    data = gzip.compress(payload, compresslevel=9, mtime=0)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/data/corpus")
    parser.add_argument("--output", default="data")
    parser.add_argument("--heldout", type=float, default=0.05, help="share of texts held out")
    args = parser.parse_args()

    seen: set[str] = set()
    train: list[dict] = []
    heldout: list[dict] = []
    counts: dict[str, dict[str, int]] = {}
    for source, name in SOURCES.items():
        stats = counts.setdefault(source, {"read": 0, "duplicates": 0, "train": 0, "heldout": 0})
        for text in Corpus([Path(args.shared) / name], text_field="text,sentence"):
            stats["read"] += 1
            key = re.sub(r"\s+", " ", text)
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            if split_heldout(text, args.heldout):
                heldout.append({"text": text, "source": source})
                stats["heldout"] += 1
            else:
                train.append({"text": text, "source": source})
                stats["train"] += 1
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    sha_train = write_jsonl_gz(out / "sample_corpus.jsonl.gz", train)
    sha_held = write_jsonl_gz(out / "sample_heldout.jsonl.gz", heldout)
    summary = {"heldout_fraction": args.heldout, "sources": counts, "train_texts": len(train),
               "heldout_texts": len(heldout), "train_chars": sum(len(r["text"]) for r in train),
               "sha256": {"sample_corpus.jsonl.gz": sha_train, "sample_heldout.jsonl.gz": sha_held}}
    (out / "sample_corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
