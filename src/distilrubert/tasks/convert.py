"""``distilrubert convert-ner``: factRuEval character spans (``factru.json``) -> CoNLL IOB2 files.

Writes ``train.conll`` and ``eval.conll`` (split by whole texts, ``--eval-fraction`` held out) with the
tag set mapped to PER/LOC/ORG (LocOrg -> LOC; Project/Facility dropped or kept as MISC), ready for
``distilrubert finetune --task ner --train DIR/train.conll --eval DIR/eval.conll``.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Literal

from distilrubert.config import option, to_dict
from distilrubert.runinfo import atomic_output_dir, check_output_dir, run_info, write_json
from distilrubert.tasks import readers

logger = logging.getLogger(__name__)


@dataclass
class ConvertNerConfig:
    """Options of ``distilrubert convert-ner``."""

    input: str = option(help='factRuEval JSON: {"texts": [...], "labels": [[[type, start, end], ...]]}.',
                        metavar="FILE")
    output: str = option(help="Output directory for train.conll, eval.conll and stats.json.", metavar="DIR")
    eval_fraction: float = option(0.1, "Share of texts held out as eval.conll.")
    project: Literal["drop", "misc"] = option("drop", "Drop Project/Facility spans or keep them as MISC.")
    max_words: int = option(128, "Cut sentences longer than this many words.")
    seed: int = option(42, "Seed of the train/eval split.")
    overwrite: bool = option(False, "Replace an existing non-empty output directory.")

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_words < 8:
            raise ValueError(f"--max-words must be >= 8, got {self.max_words}")


def run(config: ConvertNerConfig) -> int:
    """CLI entry point of ``distilrubert convert-ner``."""
    check_output_dir(config.output, config.overwrite)
    texts = readers.read_factru_iob2(config.input, project=config.project, max_words=config.max_words)
    train, evaluation = readers.split_examples(texts, config.eval_fraction, config.seed)
    stats = {}
    with atomic_output_dir(config.output, overwrite=config.overwrite) as tmp:
        for name, part in (("train", train), ("eval", evaluation)):
            sentences = [s for text in part for s in text]
            readers.write_conll(sentences, tmp / f"{name}.conll")
            stats[name] = {"texts": len(part), "sentences": len(sentences),
                           "words": sum(len(s.tokens) for s in sentences),
                           "tags": dict(collections.Counter(t for s in sentences for t in s.tags).most_common())}
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "run.json", run_info("convert-ner", to_dict(config)))
    print(f"wrote {config.output}: train {stats['train']['sentences']} sentences, "
          f"eval {stats['eval']['sentences']} sentences")
    return 0
