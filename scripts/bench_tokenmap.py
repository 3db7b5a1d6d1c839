"""Time and measure TokenMap on real teacher vocabularies and on a synthetic 120K one.

Real teachers (``--teacher``, repeatable): a tokenizer directory (``AutoTokenizer``) or a
``tokenizer.json`` file, gzipped or not (e.g. the 250,002-piece SentencePiece vocabulary of
multilingual-e5-small in ``../shared/data/tokenizers``). For each: the teacher's tokenizer family, the
time to build the map (best of ``--repeats``), the share of teacher tokens covered without ``[UNK]``,
the mean number of student pieces per covered token (wall and CPU time: on a shared machine the CPU
time is the figure that does not depend on the other processes), the same share for the teacher tokens that hold a
Cyrillic letter and for those spelled only in Russian letters, and, on ``--sample-texts`` texts of
``--sample-corpus``, the share of running teacher tokens covered and their student pieces per token.

The synthetic teacher (``--teacher-size``, 0 to skip) imitates a multilingual BERT vocabulary (RuBERT's
has 119,547 entries): specials, 1,000 ``[unused*]`` entries, real words of the corpus and their ``##``
suffixes, then random strings in Cyrillic, Latin, Greek, Arabic and CJK scripts up to the target size.

Usage:
    python scripts/bench_tokenmap.py --student /tmp/v5k \\
        --teacher ../shared/data/tokenizers/multilingual-e5-small/tokenizer.json.gz \\
        --teacher ../shared/data/tokenizers/rubert-tiny2 [--output docs/tokenmap_bench.json]

``--student`` is a directory written by ``distilrubert build-vocab``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from distilrubert.corpus import Corpus
from distilrubert.runinfo import package_versions
from distilrubert.tokenmap import TokenMap, parse_token

SCRIPTS = {
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
}
CYRILLIC = re.compile(r"[\u0400-\u04FF]")
RUSSIAN_ONLY = re.compile(r"^[а-яёА-ЯЁ]+$")


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


def load_teacher_tokenizer(source: str, workdir: Path):
    """A tokenizer directory, or a (gzipped) tokenizer.json file."""
    path = Path(source)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    if path.suffix == ".gz":
        plain = workdir / path.stem
        with gzip.open(path, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        path = plain
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def measure(name: str, teacher, student, repeats: int, sample: list[str]) -> dict:
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        tmap = TokenMap.from_tokenizers(teacher, student)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # Text tokens only: specials and reserved entries are not part of the vocabulary's coverage.
    specials = set(tmap.special_targets)
    text_ids, cyr_ids, ru_ids = [], [], []
    for t_id, token in enumerate(tmap.teacher_tokens):
        if token is None or token in specials:
            continue
        text_ids.append(t_id)
        parsed = parse_token(token, tmap.family)
        surface = parsed[0] if parsed else ""
        if CYRILLIC.search(surface):
            cyr_ids.append(t_id)
            if RUSSIAN_ONLY.match(surface):
                ru_ids.append(t_id)

    def coverage(ids: list[int]) -> dict:
        ids = np.asarray(ids, dtype=np.int64)
        covered = tmap.covered[ids]
        return {"tokens": int(ids.size), "covered": int(covered.sum()), "share_covered": share(covered.sum(), ids.size),
                "mean_pieces": float(tmap.lengths[ids[covered]].mean()) if covered.any() else 0.0}

    counts = np.zeros(len(tmap.teacher_tokens), dtype=np.int64)
    for text in sample:
        np.add.at(counts, teacher(text, add_special_tokens=False)["input_ids"], 1)
    running = int(counts.sum())
    running_covered = int(counts[tmap.covered].sum())
    pieces = int((counts * np.where(tmap.covered, tmap.lengths, 0)).sum())
    return {
        "teacher": name, "family": tmap.family, "teacher_vocab_size": len(tmap.teacher_tokens),
        "student_vocab_size": len(tmap.student_tokens), "seconds_min": min(times), "seconds_all": times,
        "cpu_seconds_min": min(cpu), "load_average": os.getloadavg(),
        "text_tokens": coverage(text_ids), "cyrillic_tokens": coverage(cyr_ids),
        "russian_letter_tokens": coverage(ru_ids),
        "running_text": {"texts": len(sample), "teacher_tokens": running,
                         "share_covered": share(running_covered, running),
                         "pieces_per_covered_token": share(pieces, running_covered)},
        "stats": tmap.stats(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="student tokenizer directory (build-vocab output)")
    parser.add_argument("--teacher", action="append", default=[], help="a real teacher tokenizer (dir or json[.gz])")
    parser.add_argument("--corpus", nargs="+", default=["../shared/data/corpus/fortunes_ru.jsonl",
                                                       "../shared/data/corpus/docs_ru.jsonl"],
                        help="texts for the synthetic teacher's words")
    parser.add_argument("--sample-corpus", nargs="+",
                        default=["../shared/data/corpus/dialogues_movies_ru.jsonl.gz"],
                        help="running text for the covered share (not the student vocabulary's corpus)")
    parser.add_argument("--sample-texts", type=int, default=2000)
    parser.add_argument("--teacher-size", type=int, default=120_000, help="synthetic teacher size (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args()

    student = AutoTokenizer.from_pretrained(args.student)
    result: dict = {"student": args.student, "student_vocab_size": len(student.get_vocab()), "teachers": []}
    sample = list(itertools.islice(Corpus(args.sample_corpus), args.sample_texts)) if args.teacher else []
    with tempfile.TemporaryDirectory() as workdir:
        for source in args.teacher:
            teacher = load_teacher_tokenizer(source, Path(workdir))
            result["teachers"].append(measure(source, teacher, student, args.repeats, sample))
    if args.teacher_size:
        teacher_tokens = synthetic_teacher_vocab(list(Corpus(args.corpus)), args.teacher_size)
        teacher_vocab = {t: i for i, t in enumerate(teacher_tokens)}
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            tmap = TokenMap(teacher_vocab, student.get_vocab())
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        result["synthetic"] = {"teacher_vocab_size": len(teacher_tokens), "seconds_min": min(times),
                               "seconds_all": times, "cpu_seconds_min": min(cpu), "stats": tmap.stats()}
    result["versions"] = package_versions()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
