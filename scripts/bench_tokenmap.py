"""Time TokenMap construction for a synthetic 120K-token teacher vocabulary.

The teacher vocabulary imitates a multilingual BERT one (RuBERT's has 119,547 entries): specials,
1,000 ``[unused*]`` entries, real words of the corpus and their ``##`` suffixes, then random strings
in Cyrillic, Latin, Greek, Arabic and CJK scripts up to the target size.

Usage:
    python scripts/bench_tokenmap.py --student /tmp/v5k [--teacher-size 120000] [--output docs/tokenmap_bench.json]

``--student`` is a directory written by ``distilrubert build-vocab``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import time
from pathlib import Path

from transformers import AutoTokenizer

from distilrubert.corpus import Corpus
from distilrubert.runinfo import package_versions
from distilrubert.tokenmap import TokenMap

SCRIPTS = {
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
}


def synthetic_teacher_vocab(corpus: list[str], size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(1000)]
    words = collections.Counter(w for text in corpus for w in re.findall(r"\w+", text))
    seen = set(tokens)

    def add(token: str) -> None:
        if token not in seen and len(tokens) < size:
            seen.add(token)
            tokens.append(token)

    for word, _ in words.most_common():
        add(word)
        if len(word) > 3:
            add("##" + word[rng.randint(1, len(word) - 2):])
    alphabets = list(SCRIPTS.values())
    while len(tokens) < size:
        alphabet = rng.choice(alphabets)
        token = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        add(("##" if rng.random() < 0.3 else "") + token)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="student tokenizer directory (build-vocab output)")
    parser.add_argument("--corpus", nargs="+", default=["../shared/data/corpus/fortunes_ru.jsonl",
                                                       "../shared/data/corpus/docs_ru.jsonl"])
    parser.add_argument("--teacher-size", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args()

    student = AutoTokenizer.from_pretrained(args.student)
    teacher_tokens = synthetic_teacher_vocab(list(Corpus(args.corpus)), args.teacher_size)
    teacher_vocab = {t: i for i, t in enumerate(teacher_tokens)}
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        tmap = TokenMap(teacher_vocab, student.get_vocab())
        times.append(time.perf_counter() - start)
    result = {"teacher_vocab_size": len(teacher_tokens), "student_vocab_size": len(student.get_vocab()),
              "seconds_min": min(times), "seconds_all": times, "stats": tmap.stats(),
              "versions": package_versions()}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
