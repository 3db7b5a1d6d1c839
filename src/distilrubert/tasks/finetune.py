"""``distilrubert finetune``: fine-tune an encoder on sentiment, paraphrase, NER or extractive QA.

Built on transformers' ``AutoModelForSequenceClassification`` (sentiment; paraphrase as a sentence
pair), ``AutoModelForTokenClassification`` (NER) and ``AutoModelForQuestionAnswering`` (QA), with a
plain PyTorch loop: AdamW, linear warm-up/decay, evaluation after every epoch, early stopping on the
task metric (sentiment weighted F1, paraphrase F1, NER entity F1, QA F1) and the best epoch's weights
kept. The output directory loads with the matching ``AutoModelFor...`` class and transformers
``pipeline`` ("text-classification", "token-classification"); transformers 5 removed the
"question-answering" pipeline, so QA directories answer through :func:`answer_questions` (the same
windowing and span search as the evaluation).

Task mechanics:
    * NER: labels aligned to word pieces, the first piece of each word labelled and the others ignored
      (``-100``), or all pieces (continuations of ``B-X`` get ``I-X``) with ``--label-all-pieces``;
      predictions are read at first pieces; entity F1 by seqeval.
    * QA: questions and contexts tokenized with sliding windows (``--doc-stride``), offset mappings
      map logits back to characters, and the best span is searched over the ``--n-best`` start/end
      logits of every window with ``end - start < --max-answer-length``.

Example:
    distilrubert finetune --task sentiment --model student/ --train train.csv --eval test.csv --output ft/
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilrubert.config import option, to_dict
from distilrubert.runinfo import atomic_output_dir, check_output_dir, run_info, write_json
from distilrubert.tasks import readers
from distilrubert.tasks.features import (
    align_labels,
    best_spans,
    check_labels,
    ner_label_list,
    qa_eval_features,
    qa_train_features,
)
from distilrubert.tasks.metrics import classification_scores, majority_baseline, ner_scores, squad_scores
from distilrubert.vocab import save_pretrained_tokenizer

logger = logging.getLogger(__name__)

Task = Literal["sentiment", "paraphrase", "ner", "qa"]

# Defaults per task for a tiny (3 x 264) encoder: higher learning rates than BERT-base recipes.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sentiment": {"epochs": 4, "lr": 1e-4, "max_length": 128, "batch_size": 32},
    "paraphrase": {"epochs": 4, "lr": 1e-4, "max_length": 128, "batch_size": 32},
    "ner": {"epochs": 5, "lr": 2e-4, "max_length": 256, "batch_size": 16},
    "qa": {"epochs": 3, "lr": 1e-4, "max_length": 384, "batch_size": 16},
}
METRIC = {"sentiment": "weighted_f1", "paraphrase": "f1", "ner": "f1", "qa": "f1"}
METRICS = {"sentiment": ("weighted_f1", "accuracy", "macro_f1"),
           "paraphrase": ("f1", "accuracy", "weighted_f1", "macro_f1"),
           "ner": ("f1", "precision", "recall"), "qa": ("f1", "exact_match")}
# transformers 5 removed the "question-answering" pipeline: QA models answer through `answer_questions`.
PIPELINE = {"sentiment": "text-classification", "paraphrase": "text-classification",
            "ner": "token-classification", "qa": None}
CLASS_NAME = {"sentiment": "SequenceClassification", "paraphrase": "SequenceClassification",
              "ner": "TokenClassification", "qa": "QuestionAnswering"}
FORMATS = ("auto", "csv", "jsonl", "paraphraser", "conll", "factru", "squad")
MAX_LENGTH_LIMIT = 4096


@dataclass
class FinetuneConfig:
    """Options of ``distilrubert finetune``."""

    task: Task = option(help="Task: sentiment (text classification), paraphrase (pair classification), "
                        "ner (token classification) or qa (extractive QA, SQuAD v1.1).")
    model: str = option(help="Model directory (e.g. from `distilrubert init-student` or a distillation run).",
                        metavar="DIR")
    train: str = option(help="Training file (CSV/JSONL, ParaPhraser XML/CSV, CoNLL, factru.json, SQuAD JSON).",
                        metavar="FILE")
    output: str = option(help="Output directory for the fine-tuned model, metrics.json and model card.",
                         metavar="DIR")
    eval: str | None = option(None, "Evaluation file; without it --eval-fraction of --train is held out.",
                              metavar="FILE")
    format: str = option("auto", f"Input format: {', '.join(FORMATS)} (auto: from task and file extension).")
    eval_fraction: float = option(0.1, "Share of --train held out for evaluation when --eval is not given.")
    epochs: int | None = option(None, "Training epochs (default per task: sentiment/paraphrase 4, ner 5, qa 3).")
    lr: float | None = option(None, "Peak learning rate (default per task: 1e-4, ner 2e-4).")
    batch_size: int | None = option(None, "Batch size (default per task: 32, ner/qa 16).")
    max_length: int | None = option(None, "Max tokens per input (default per task: 128, ner 256, qa 384).")
    warmup_ratio: float = option(0.1, "Share of steps with linear learning-rate warm-up.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    patience: int = option(2, "Stop after this many evaluations without improvement of the task metric.")
    metric: str | None = option(None, "Eval metric for early stopping and the kept epoch (default per task: "
                                "sentiment weighted_f1, paraphrase f1, ner f1, qa f1).")
    seed: int = option(42, "Random seed (shuffling, head initialisation, the train/eval split).")
    paraphrase_labels: Literal["binary", "three"] = option(
        "binary", "Paraphrase labels: binary (class 0/1 = paraphrase vs -1, the paper's F1) or three classes.")
    label_all_pieces: bool = option(False, "NER: label every word piece (default: first piece only).")
    project: Literal["drop", "misc"] = option("drop", "factru: drop Project/Facility spans or keep them as MISC.")
    doc_stride: int = option(128, "QA: overlap (tokens) between sliding windows over long contexts.")
    max_answer_length: int = option(30, "QA: longest answer span in tokens.")
    n_best: int = option(20, "QA: start/end candidates searched per window.")
    max_train_examples: int | None = option(None, "Use only the first N training examples (quick runs).")
    device: str = option("auto", "Device: auto (CUDA when available), cpu, cuda, cuda:N.")
    threads: int = option(0, "CPU threads for torch (0: torch's default).")
    trust_remote_code: bool = option(False, "Allow custom model code in --model (off: safe default).")
    overwrite: bool = option(False, "Replace an existing non-empty output directory.")

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not Path(self.model).is_dir():
            raise ValueError(f"--model {self.model}: no such directory")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        for name in ("epochs", "batch_size", "max_length", "max_train_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.max_length is not None and self.max_length > MAX_LENGTH_LIMIT:
            raise ValueError(f"--max-length must be <= {MAX_LENGTH_LIMIT}, got {self.max_length}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.patience < 1:
            raise ValueError(f"--patience must be >= 1, got {self.patience}")
        if self.doc_stride < 1 or self.max_answer_length < 1 or self.n_best < 1:
            raise ValueError("--doc-stride, --max-answer-length and --n-best must be >= 1")
        if self.metric is None:
            self.metric = METRIC[self.task]
        elif self.metric not in METRICS[self.task]:
            raise ValueError(f"--metric for --task {self.task} must be one of {', '.join(METRICS[self.task])}")
        for key, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.task == "qa" and self.doc_stride >= self.max_length // 2:
            raise ValueError(f"--doc-stride {self.doc_stride} must be below half of --max-length {self.max_length}")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def _format_of(task: str, path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if task == "qa":
        return "squad"
    if task == "ner":
        return "factru" if suffix == ".json" else "conll"
    if suffix == ".xml":
        return "paraphraser"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if task == "paraphrase" and suffix == ".csv":
        # para_gold.csv (text_1,text_2,class with -1/0/1) vs a generic text,text_pair,label CSV.
        with path.open(encoding="utf-8") as handle:
            header = handle.readline().strip().split(",")
        if {"text_1", "text_2", "class"} <= set(header):
            return "paraphraser"
    return "csv"


def load_examples(config: FinetuneConfig, path: str) -> list:
    """Read one data file for ``config.task`` in ``config.format`` (flat list of examples)."""
    file = Path(path)
    fmt = _format_of(config.task, file, config.format)
    allowed = {"sentiment": ("csv", "jsonl"), "paraphrase": ("csv", "jsonl", "paraphraser"),
               "ner": ("conll", "factru"), "qa": ("squad",)}[config.task]
    if fmt not in allowed:
        raise ValueError(f"--format {fmt} does not fit --task {config.task} (use {', '.join(allowed)})")
    if fmt == "paraphraser":
        return readers.read_paraphrase(file, scheme=config.paraphrase_labels)
    if fmt in ("csv", "jsonl"):
        return readers.read_classification(file, pairs=config.task == "paraphrase")
    if fmt == "conll":
        return readers.read_conll(file)
    if fmt == "factru":
        return [s for text in readers.read_factru_iob2(file, project=config.project) for s in text]
    return readers.read_squad(file)


def load_splits(config: FinetuneConfig) -> tuple[list, list]:
    """Train and eval examples: both files, or --train split by --eval-fraction (factru: by text)."""
    if config.eval:
        train, evaluation = load_examples(config, config.train), load_examples(config, config.eval)
    elif config.task == "ner" and _format_of("ner", Path(config.train), config.format) == "factru":
        # Split whole news texts, so sentences of one text never land on both sides.
        texts = readers.read_factru_iob2(config.train, project=config.project)
        train_texts, eval_texts = readers.split_examples(texts, config.eval_fraction, config.seed)
        train, evaluation = [s for t in train_texts for s in t], [s for t in eval_texts for s in t]
    else:
        train, evaluation = readers.split_examples(load_examples(config, config.train), config.eval_fraction,
                                                   config.seed)
    if config.max_train_examples:
        train = train[:config.max_train_examples]
    return train, evaluation


def answer_questions(model_dir: str | Path, questions: list[str], contexts: list[str], max_length: int = 384,
                     doc_stride: int = 128, n_best: int = 20, max_answer_length: int = 30,
                     batch_size: int = 16) -> list[str]:
    """Answer questions with a fine-tuned extractive QA directory (windows + n-best span search).

    Example:
        >>> answer_questions("ft-qa", ["Где?"], ["Встреча прошла в Казани."])  # doctest: +SKIP
        ['в Казани']
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    max_length = min(max_length, position_limit(model))
    doc_stride = min(doc_stride, max_length // 4)
    examples = [readers.QAExample(str(i), q, c) for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]
    features, meta = qa_eval_features(tokenizer, examples, max_length, doc_stride)
    features = _keep_inputs(features, _accepted_inputs(model))
    device = select_device("auto")
    outputs = _predict(model.to(device), features, DataCollatorWithPadding(tokenizer), batch_size, device)
    spans = best_spans(examples, meta, [o["start"] for o in outputs], [o["end"] for o in outputs], n_best,
                       max_answer_length)
    return [spans[e.id] for e in examples]


# ------------------------------------------------------------------------------------------------
# the task adapters: features, labels and evaluation for each task
# ------------------------------------------------------------------------------------------------

@dataclass
class TaskSetup:
    """What the loop needs from a task: model, features, a collator and an ``evaluate(model)``."""

    model: Any
    train_features: list[dict]
    collator: Callable
    evaluate: Callable[[Any], dict[str, float]]
    baseline: dict[str, Any]
    labels: list[str] | None


def _predict(model, features: list[dict], collator, batch_size: int, device) -> list[dict[str, np.ndarray]]:
    """Run ``model`` over features in length-sorted batches; per feature its unpadded output arrays."""
    import torch

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list[dict[str, np.ndarray]] = [{}] * len(features)
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            idx = order[begin:begin + batch_size]
            batch = collator([{k: v for k, v in features[i].items() if k != "labels"} for i in idx])
            out = model(**{k: v.to(device) for k, v in batch.items()})
            for row, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                if hasattr(out, "start_logits") and out.start_logits is not None:
                    results[i] = {"start": out.start_logits[row, :n].float().cpu().numpy(),  # (n,)
                                  "end": out.end_logits[row, :n].float().cpu().numpy()}
                elif out.logits.dim() == 3:
                    results[i] = {"logits": out.logits[row, :n].float().cpu().numpy()}  # (n, labels)
                else:
                    results[i] = {"logits": out.logits[row].float().cpu().numpy()}  # (labels,)
    model.train()
    return results


def _keep_inputs(features: list[dict], accepted: set[str]) -> list[dict]:
    return [{k: v for k, v in f.items() if k in accepted} for f in features]


def setup_task(config: FinetuneConfig, tokenizer, train: list, evaluation: list, device) -> TaskSetup:
    """Build the model and features for ``config.task``."""
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    common = {"trust_remote_code": config.trust_remote_code}
    batch = config.batch_size
    limit = position_limit(AutoConfig.from_pretrained(config.model, **common))
    if config.max_length > limit:
        logger.warning("--max-length %d exceeds the model's %d positions: using %d", config.max_length, limit, limit)
        config.max_length = limit
        if config.task == "qa" and config.doc_stride >= limit // 2:
            config.doc_stride = limit // 4
    if config.task in ("sentiment", "paraphrase"):
        check_labels([e.label for e in train], [e.label for e in evaluation], config)
        labels = sorted({e.label for e in train})
        label2id = {label: i for i, label in enumerate(labels)}
        model = AutoModelForSequenceClassification.from_pretrained(
            config.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, **common)
        accepted = _accepted_inputs(model) | {"labels"}

        def encode(examples):
            pairs = [e.text_pair for e in examples] if config.task == "paraphrase" else None
            enc = tokenizer([e.text for e in examples], pairs, truncation=True, max_length=config.max_length)
            feats = [{k: enc[k][i] for k in enc} | {"labels": label2id[e.label]} for i, e in enumerate(examples)]
            return _keep_inputs(feats, accepted)

        collator = DataCollatorWithPadding(tokenizer)
        eval_features = encode(evaluation)
        positive = "paraphrase" if config.task == "paraphrase" and "paraphrase" in label2id else None
        if config.task == "paraphrase" and positive is None:
            positive = "1" if "1" in label2id else None

        def evaluate(m):
            outputs = _predict(m, eval_features, collator, batch * 2, device)
            predicted = [labels[int(np.argmax(o["logits"]))] for o in outputs]
            scores = classification_scores([e.label for e in evaluation], predicted, positive=positive)
            if config.task == "paraphrase" and "f1" not in scores:
                scores["f1"] = scores["macro_f1"]
            return scores

        baseline = majority_baseline([e.label for e in train], [e.label for e in evaluation], positive=positive)
        if config.task == "paraphrase" and "f1" not in baseline:
            baseline["f1"] = baseline["macro_f1"]
        return TaskSetup(model, encode(train), collator, evaluate, baseline, labels)

    if config.task == "ner":
        if not tokenizer.is_fast:
            raise ValueError(f"--model {config.model}: NER needs a fast tokenizer (word ids)")
        labels = ner_label_list(train + evaluation)
        label2id = {label: i for i, label in enumerate(labels)}
        model = AutoModelForTokenClassification.from_pretrained(
            config.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, **common)
        accepted = _accepted_inputs(model) | {"labels"}

        def encode(examples, all_pieces):
            enc = tokenizer([e.tokens for e in examples], is_split_into_words=True, truncation=True,
                            max_length=config.max_length)
            feats = []
            for i, e in enumerate(examples):
                feature = {k: enc[k][i] for k in enc}
                feature["labels"] = align_labels(enc.word_ids(i), e.tags, label2id, all_pieces)
                feature["word_ids"] = enc.word_ids(i)
                feats.append(feature)
            return feats

        eval_raw = encode(evaluation, False)
        eval_features = _keep_inputs(eval_raw, accepted)
        collator = DataCollatorForTokenClassification(tokenizer)

        def evaluate(m):
            outputs = _predict(m, eval_features, collator, batch * 2, device)
            predicted = []
            for example, feature, out in zip(evaluation, eval_raw, outputs, strict=True):
                tags = ["O"] * len(example.tokens)  # words cut off by --max-length count as O
                previous = None
                for k, word in enumerate(feature["word_ids"]):
                    if word is not None and word != previous:
                        tags[word] = labels[int(np.argmax(out["logits"][k]))]
                    previous = word
                predicted.append(_repair_iob2(tags))
            return ner_scores([e.tags for e in evaluation], predicted)

        baseline = {"majority_label": "O", **ner_scores([e.tags for e in evaluation],
                                                        [["O"] * len(e.tokens) for e in evaluation])}
        return TaskSetup(model, _keep_inputs(encode(train, config.label_all_pieces), accepted), collator, evaluate,
                         baseline, labels)

    # qa
    if not tokenizer.is_fast:
        raise ValueError(f"--model {config.model}: QA needs a fast tokenizer (offset mapping)")
    if tokenizer.padding_side != "right":
        raise ValueError(f"--model {config.model}: QA windows assume right padding")
    model = AutoModelForQuestionAnswering.from_pretrained(config.model, **common)
    accepted = _accepted_inputs(model) | {"start_positions", "end_positions"}
    train_features = _keep_inputs(qa_train_features(tokenizer, train, config.max_length, config.doc_stride), accepted)
    eval_features, meta = qa_eval_features(tokenizer, evaluation, config.max_length, config.doc_stride)
    eval_features = _keep_inputs(eval_features, accepted)
    collator = DataCollatorWithPadding(tokenizer)
    gold = {e.id: e.answers for e in evaluation}

    def evaluate(m):
        outputs = _predict(m, eval_features, collator, batch * 2, device)
        predictions = best_spans(evaluation, meta, [o["start"] for o in outputs], [o["end"] for o in outputs],
                                 config.n_best, config.max_answer_length)
        return squad_scores(predictions, gold)

    # QA has no majority class: the baseline is the empty answer (EM = F1 = 0 by construction).
    baseline = {"answer": "", **squad_scores({}, gold)}
    return TaskSetup(model, train_features, collator, evaluate, baseline, None)


def _repair_iob2(tags: list[str]) -> list[str]:
    """Turn an ``I-X`` that does not continue an ``X`` entity into ``B-X`` (the usual conlleval reading)."""
    fixed, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        fixed.append(tag)
        previous = tag
    return fixed


def position_limit(model_or_config) -> int:
    """Longest input the position embeddings of a model (or model config) allow."""
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "max_position_embeddings", None) or MAX_LENGTH_LIMIT)


def _accepted_inputs(model) -> set[str]:
    """Input names the model's forward takes (DistilBERT has no token_type_ids)."""
    return set(inspect.signature(model.forward).parameters)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------

def select_device(name: str):
    """``auto`` -> CUDA when available, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_loop(config: FinetuneConfig, setup: TaskSetup, device) -> dict[str, Any]:
    """AdamW + linear schedule; evaluate each epoch; early stopping; restore the best weights."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    model = setup.model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(setup.train_features, batch_size=config.batch_size, shuffle=True,
                                         collate_fn=setup.collator, generator=generator)
    steps = len(loader) * config.epochs
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(steps * config.warmup_ratio), steps)
    # bf16 autocast on GPUs that support it; CPU runs in fp32.
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    metric = config.metric
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, waited = -math.inf, 0, None, 0
    model.train()
    progress = tqdm(total=steps, desc=f"finetune {config.task}", unit="step")
    for epoch in range(1, config.epochs + 1):
        losses = []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        scores = setup.evaluate(model)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **scores})
        logger.info("epoch %d: train loss %.4f, eval %s %.4f", epoch, np.mean(losses), metric, scores[metric])
        if scores[metric] > best_score:
            best_score, best_epoch, waited = scores[metric], epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                logger.info("early stopping: no %s improvement for %d epoch(s)", metric, waited)
                break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_epoch": best_epoch, "metric": metric, "best_score": best_score,
            "steps_per_epoch": len(loader)}


# ------------------------------------------------------------------------------------------------
# the verb
# ------------------------------------------------------------------------------------------------

def model_card(config: FinetuneConfig, result: dict[str, Any], labels: list[str] | None) -> str:
    """README.md of the fine-tuned directory: task, data, metrics, how to load it."""
    eval_scores = result["eval"]
    lines = [
        f"# {Path(config.output).name}: {config.task} fine-tuned from {config.model}",
        "",
        f"- task: **{config.task}** (`AutoModelFor{CLASS_NAME[config.task]}`)",
        f"- base model: `{config.model}`",
        f"- train: `{config.train}` ({result['train_examples']} examples)",
        f"- eval: `{config.eval or f'{config.eval_fraction:.0%} of train held out (seed {config.seed})'}` "
        f"({result['eval_examples']} examples)",
        f"- epochs run: {len(result['history'])} (best: {result['best_epoch']}), lr {config.lr}, "
        f"batch {config.batch_size}, max length {config.max_length}",
    ]
    if labels:
        lines.append(f"- labels: {', '.join(labels)}")
    lines += ["", "## Eval metrics (best epoch)", "", "| metric | model | majority baseline |", "|---|---|---|"]
    for key, value in eval_scores.items():
        if isinstance(value, float):
            base = result["baseline"].get(key)
            lines.append(f"| {key} | {value:.4f} | {base:.4f} |" if isinstance(base, float) else
                         f"| {key} | {value:.4f} | |")
    name = Path(config.output).name
    if config.task == "qa":
        code = ["from distilrubert.tasks.finetune import answer_questions",
                f'answer_questions("{name}", ["Где прошла встреча?"], ["Встреча прошла в Казани."])']
    else:
        usage = {"sentiment": 'clf("Отличный сервис!")',
                 "paraphrase": 'clf({"text": "Привет", "text_pair": "Здравствуй"})',
                 "ner": 'clf("Владимир Путин посетил Казань.")'}[config.task]
        extra = ', aggregation_strategy="first"' if config.task == "ner" else ""
        code = ["from transformers import pipeline",
                f'clf = pipeline("{PIPELINE[config.task]}", model="{name}"{extra})', usage]
    lines += ["", "## Use", "", "```python", *code, "```", "",
              "Made with `distilrubert finetune`; see run.json for the full configuration.", ""]
    return "\n".join(lines)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.task`` and write the model, metrics.json and README.md.

    Returns:
        The metrics record (also in ``metrics.json``): eval scores of the best epoch, the majority-class
        baseline, per-epoch history.
    """
    import torch
    from transformers import AutoTokenizer

    check_output_dir(config.output, config.overwrite)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    train, evaluation = load_splits(config)
    logger.info("%s: %d train / %d eval examples", config.task, len(train), len(evaluation))
    tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
    device = select_device(config.device)
    setup = setup_task(config, tokenizer, train, evaluation, device)
    # Pipelines feed the model every input the tokenizer makes: keep only those its forward accepts.
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n in _accepted_inputs(setup.model)]
    loop = train_loop(config, setup, device)
    final = setup.evaluate(setup.model)
    result = {
        "task": config.task, "metric": loop["metric"], "eval": final, "baseline": setup.baseline,
        "best_epoch": loop["best_epoch"], "history": loop["history"], "train_examples": len(train),
        "eval_examples": len(evaluation), "train_features": len(setup.train_features),
        "steps_per_epoch": loop["steps_per_epoch"], "labels": setup.labels,
    }
    with atomic_output_dir(config.output, overwrite=config.overwrite) as tmp:
        setup.model.to("cpu").save_pretrained(tmp, safe_serialization=True)
        save_pretrained_tokenizer(tokenizer, tmp)
        write_json(tmp / "metrics.json", result)
        (tmp / "README.md").write_text(model_card(config, result, setup.labels), encoding="utf-8")
        write_json(tmp / "run.json", run_info("finetune", to_dict(config)))
    base = setup.baseline.get(loop["metric"])
    logger.info("wrote %s: eval %s %.4f (majority baseline %s)", config.output, loop["metric"], final[loop["metric"]],
                f"{base:.4f}" if isinstance(base, float) else "n/a")
    return result


def run(config: FinetuneConfig) -> int:
    """CLI entry point of ``distilrubert finetune``."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    result = finetune(config)
    metric = result["metric"]
    print(f"{config.task}: eval {metric} {result['eval'][metric]:.4f} "
          f"(majority baseline {result['baseline'].get(metric, float('nan')):.4f}); wrote {config.output}")
    return 0

