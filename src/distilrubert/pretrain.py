"""``distilrubert pretrain``: masked-LM training from scratch (no teacher) with the distillation loop.

For training a teacher, and for the "no distillation" baselines: a BERT or DistilBERT of any shape
on a WordPiece vocabulary (``build-vocab``), or an existing masked-LM directory (``--init-from``),
trained with the same data pipeline (0.7-smoothed masking, length-grouped batches), checkpoints,
resume, validation and accelerate scaling as ``distill``.

Example:
    distilrubert pretrain --vocab v16k --model-type bert --layers 6 --dim 384 --heads 6 --ffn 1536 \\
        --corpus ../shared/data/corpus --max-steps 20000 --output teacher-6x384
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distilrubert.config import option
from distilrubert.losses import mlm_loss
from distilrubert.runinfo import write_json
from distilrubert.trainer import TrainOptions
from distilrubert.vocab import copy_tokenizer_files

logger = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "build_model", "pretrain", "run"]



@dataclass(kw_only=True)
class PretrainConfig(TrainOptions):
    """Options of ``distilrubert pretrain``."""

    vocab: str | None = option(None, "Tokenizer directory (from `distilrubert build-vocab`) for a new model.",
                               metavar="DIR")
    init_from: str | None = option(None, "Continue from an existing masked-LM directory instead of a new model.",
                                   metavar="DIR")
    model_type: Literal["bert", "distilbert"] = option("distilbert", "Architecture of a new model.")
    layers: int = option(3, "Transformer layers of a new model.")
    dim: int = option(264, "Hidden size of a new model.")
    heads: int = option(12, "Attention heads of a new model (must divide --dim).")
    ffn: int = option(792, "Feed-forward size of a new model.")
    max_position_embeddings: int = option(512, "Maximum positions of a new model.")
    dropout: float = option(0.1, "Dropout of a new model.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.vocab is None) == (self.init_from is None):
            raise ValueError("--vocab / --init-from: give exactly one (a tokenizer for a new model, or a model dir)")
        for flag, value in (("--layers", self.layers), ("--dim", self.dim), ("--heads", self.heads),
                            ("--ffn", self.ffn), ("--max-position-embeddings", self.max_position_embeddings)):
            if value < 1:
                raise ValueError(f"{flag}: must be >= 1")
        if self.dim % self.heads:
            raise ValueError(f"--heads: {self.heads} does not divide --dim {self.dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError("--dropout: must be in [0, 1)")
        if self.vocab is not None and self.max_length > self.max_position_embeddings:
            raise ValueError("--max-length: exceeds --max-position-embeddings")


def build_model(config: PretrainConfig) -> tuple[nn.Module, Any, Path]:
    """The masked-LM to train, its tokenizer and the directory the tokenizer files come from."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    source = Path(config.init_from or config.vocab)
    if not (source / "tokenizer.json").is_file() and not (source / "vocab.txt").is_file():
        flag = "--init-from" if config.init_from else "--vocab"
        raise FileNotFoundError(f"{flag}: {source} holds no tokenizer.json or vocab.txt")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if config.init_from:
        try:
            model = AutoModelForMaskedLM.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise ValueError(f"--init-from: cannot load a masked-LM model from {source}: {err}") from err
        return model, tokenizer, source
    vocab_size = max(tokenizer.get_vocab().values()) + 1
    torch.manual_seed(config.seed)
    if config.model_type == "bert":
        model_config = BertConfig(vocab_size=vocab_size, hidden_size=config.dim, num_hidden_layers=config.layers,
                                  num_attention_heads=config.heads, intermediate_size=config.ffn,
                                  max_position_embeddings=config.max_position_embeddings,
                                  hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
                                  pad_token_id=tokenizer.pad_token_id, architectures=["BertForMaskedLM"])
        return BertForMaskedLM(model_config), tokenizer, source
    model_config = DistilBertConfig(vocab_size=vocab_size, dim=config.dim, n_layers=config.layers, n_heads=config.heads,
                                    hidden_dim=config.ffn, max_position_embeddings=config.max_position_embeddings,
                                    dropout=config.dropout, attention_dropout=config.dropout,
                                    pad_token_id=tokenizer.pad_token_id, architectures=["DistilBertForMaskedLM"])
    return DistilBertForMaskedLM(model_config), tokenizer, source


class MlmModule(nn.Module):
    """A masked-LM whose forward returns the loss dictionary the loop expects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = mlm_loss(out.logits, batch["labels"])  # out.logits: (batch, len, vocab)
        return {"mlm": loss, "loss": loss}


class PretrainTask:
    """MLM-only task for the shared loop."""

    def __init__(self, config: PretrainConfig, model: nn.Module, tokenizer_dir: Path, extra: dict[str, Any]) -> None:
        self.config = config
        self.module = MlmModule(model)
        self.tokenizer_dir = tokenizer_dir
        self.extra = extra

    def setup(self, accelerator: Any) -> None:
        """Nothing to place besides the prepared module."""

    def step_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return model(batch)

    def eval_names(self) -> list[str]:
        return ["mlm"]

    def eval_sums(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
        n = float((batch["labels"] != -100).sum())
        return {"mlm": (float(module(batch)["mlm"]) * n, n)}

    def save_final(self, module: nn.Module, directory: Path, summary: dict[str, Any]) -> None:
        module.model.save_pretrained(directory, safe_serialization=True)
        copy_tokenizer_files(self.tokenizer_dir, directory)
        write_json(directory / "train_report.json", {**self.extra, **summary})
        cfg = module.model.config
        valid = summary["validation"][-1] if summary.get("validation") else {}
        n_params = sum(p.numel() for p in module.model.parameters())
        source = f"`{self.config.init_from}`" if self.config.init_from else "scratch"
        final_mlm = summary["final_train"].get("mlm", float("nan"))
        (directory / "README.md").write_text(
            f"---\nlanguage:\n- ru\nlibrary_name: transformers\npipeline_tag: fill-mask\n---\n\n"
            f"# {Path(self.config.output).name}\n\nA {cfg.model_type} masked-LM ({n_params:,} parameters, "
            f"vocabulary {cfg.vocab_size:,}) trained from {source} by `distilrubert pretrain` on "
            f"{', '.join(self.config.corpus)}: {summary['steps']} steps x {self.config.batch_size} x "
            f"{self.config.gradient_accumulation} x {summary['processes']} processes, {summary['tokens']:,} tokens. "
            f"Final training MLM loss {final_mlm:.4f}, validation MLM loss "
            f"{valid.get('valid_mlm', float('nan')):.4f}.\n", encoding="utf-8")


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train a masked-LM as configured; return the training report."""
    from accelerate.utils import set_seed

    from distilrubert.data import Collator, build_sequences, smoothed_token_probs
    from distilrubert.run_output import prepare_output, save_final_output
    from distilrubert.trainer import make_accelerator, train

    accelerator = make_accelerator(config)
    resume_from = prepare_output(config, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    model, tokenizer, tokenizer_dir = build_model(config)
    with accelerator.main_process_first():
        store = build_sequences(config.corpus, tokenizer, None, None, config.max_length, config.cache_dir,
                                config.text_field, progress=config.progress)
    probs = smoothed_token_probs(store.student_counts(model.config.vocab_size), tokenizer.all_special_ids,
                                 config.mlm_smoothing)
    collator = Collator(store, tokenizer, probs, None, seed=config.seed, mlm_probability=config.mlm_probability)
    extra = {"data": {k: v for k, v in store.report.items() if k != "key"}}
    task = PretrainTask(config, model, tokenizer_dir, extra)
    summary = train(config, task, store, collator, accelerator, resume_from)
    save_final_output("pretrain", config, task, accelerator, summary)
    return summary


def run(config: PretrainConfig) -> int:
    """CLI entry point of ``distilrubert pretrain``."""
    pretrain(config)
    return 0
