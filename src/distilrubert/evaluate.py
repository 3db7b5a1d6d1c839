"""``distilrubert evaluate``: the encodechka probe suite (github.com/avidale/encodechka), re-implemented.

Frozen-encoder evaluation: sentences become vectors (``cls`` and ``mean`` pooling of the last hidden
state, and their L2-normalised forms ``cls_norm`` / ``mean_norm``), simple probes are fit on them, and
the best variant counts for each task, as in encodechka:

| code | file(s) | protocol | score |
|---|---|---|---|
| STS | ``stsb_dev.csv`` | Spearman of the pair's dot product vs ``similarity_score`` | rho |
| PI | ``para_gold.csv`` | Spearman of the pair's dot product vs ``class`` (-1/0/1) | rho |
| NLI | ``xnli_ru.csv`` | logistic regression on the dot product, 3-fold CV, vs ``gold_label`` | accuracy |
| SA | ``SentiRuEval2016_small_{train,test}.csv`` | logistic regression / 3-NN on train, test ``answer`` | accuracy |
| TI | ``toxic_{train,test}.csv`` | logistic regression, ``toxic`` | ROC AUC |
| IA | ``inappropriate_{train,test}.csv`` | logistic regression, ``y`` | ROC AUC |
| IC | ``intents_{train,test}.csv`` | logistic regression / 3-NN, ``label`` | accuracy |
| ICX | ``intents_{train,test}.csv`` | as IC, trained on the ``answer`` column, tested on ``text`` | accuracy |
| NE1 | ``factru.json`` | SGD logistic probe on word vectors (mean of a word's pieces), 50/50 split | macro F1 (not O) |
| NE2 | ``rudrec.json`` | as NE1 | macro F1 |
| CPU | ``sentences_sample.txt`` | one text at a time: tokenize + forward + copy out | ms / text |

Tasks whose files are missing are skipped with a message. The JSON holds every variant of every task;
a markdown table in encodechka's column layout (next to the published rows of peers, which were
measured on other hardware) is printed and written next to the JSON. ``--teacher DIR`` runs the same
suite on the teacher and reports retention = student score / teacher score per task.

Prompts: ``--prompt TEXT`` is put before every input text (sentences, the NER texts' words, the timed
texts); ``--prompt-name NAME`` takes it from the model's ``config_sentence_transformers.json``. Default:
no prompt for a model without that file; for a model with it, its ``query`` prompt when it has one (e5's
authors embed both sides of symmetric tasks — classification, STS, paraphrase — as queries), else its
``default_prompt_name``'s. ``--prompt ""`` forces none. ``--teacher-prompt`` / ``--teacher-prompt-name``
do the same for ``--teacher``. The prompt used is recorded per model in the JSON.

Embedding is batched and length-sorted (texts of similar length share a batch, so padding is small),
with a progress bar; the per-text CPU timing is separate, as encodechka measures it.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilrubert.config import option, to_dict
from distilrubert.probes import (  # noqa: F401  (re-exported: the probes were defined here)
    encodechka_word_labels,
    label_column,
    numeric_column,
    pair_cv_accuracy,
    pair_spearman,
    probe_accuracy,
    probe_auc,
    probe_ner,
    read_table,
    word_spans,
)
from distilrubert.runinfo import atomic_write_text, run_info, write_json

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("STS", "PI", "NLI", "SA", "TI", "IA", "IC", "ICX", "NE1", "NE2")
SENTENCE_TASKS = ("STS", "PI", "NLI", "SA", "TI", "IA", "IC", "ICX")
# Published encodechka rows (/work/shared/data/README.md, from the encodechka README): their hardware, not ours.
PUBLISHED = {
    "cointegrated/rubert-tiny2": {"SA": 0.74, "PI": 0.65, "NE1": 0.36, "CPU": 5.5},
    "cointegrated/rubert-tiny": {"SA": 0.71, "PI": 0.53, "NE1": 0.24, "CPU": 7.5},
    "DeepPavlov/rubert-base-cased-conversational": {"SA": 0.73, "PI": 0.52, "NE1": 0.41, "CPU": 127.5},
}
MAX_LENGTH_LIMIT = 4096
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # org/name, as the Hub spells repository ids


@dataclass
class EvaluateConfig:
    """Options of ``distilrubert evaluate``."""

    model: str = option(help="Encoder directory (AutoModel + AutoTokenizer loadable).", metavar="DIR")
    output: str = option(help="Results JSON file; the markdown table goes next to it (same name, .md).",
                         metavar="FILE.json")
    suite: Literal["encodechka", "builtin"] = option(
        "encodechka", "encodechka: the task files in --data-dir; builtin: the held-out probe shipped with the checkout "
        "(REG: register of held-out texts of the embedded sample corpus, for machines without encodechka data).")
    data_dir: str = option("../shared/data/encodechka", "Directory with the encodechka task files.", metavar="DIR")
    teacher: str | None = option(None, "Teacher directory: run the same suite on it and report retention.",
                                 metavar="DIR")
    tasks: list[str] | None = option(None, f"Only these task codes ({', '.join((*TABLE_COLUMNS, 'CPU'))}).")
    batch_size: int = option(64, "Texts per forward pass.")
    max_length: int = option(128, "Max tokens per sentence (encodechka: 128).")
    word_max_length: int = option(512, "Max tokens per text in the NER tasks (longer texts: words past it get "
                                  "zero vectors, as in encodechka).")
    max_examples: int | None = option(None, "Use at most N rows per task file (quick checks; not comparable).")
    speed: bool = option(True, "Measure CPU ms/text on sentences_sample.txt (one text at a time).")
    device: str = option("auto", "Device: auto (CUDA when available), cpu, cuda, cuda:N.")
    threads: int = option(1, "CPU threads for torch (0: torch's default). One thread keeps per-text timings "
                          "stable on a shared machine.")
    trust_remote_code: bool = option(False, "Allow custom model code in --model/--teacher (off: safe default).")
    prompt: str | None = option(None, "Text put before every input text (e5: 'query: '). Default: see "
                                "--prompt-name; '' for none.", metavar="TEXT")
    prompt_name: str | None = option(None, "Prompt named in the model's config_sentence_transformers.json "
                                     "(query, passage). Default: its 'query' prompt, else its default prompt; "
                                     "no prompt without that file.", metavar="NAME")
    teacher_prompt: str | None = option(None, "--prompt for --teacher.", metavar="TEXT")
    teacher_prompt_name: str | None = option(None, "--prompt-name for --teacher.", metavar="NAME")

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        for name in ("model", "teacher"):
            value = getattr(self, name)
            # A Hub id (org/name) is loaded by transformers (its prompts are read only from local directories).
            if value is not None and not Path(value).is_dir() and not HUB_ID.fullmatch(value):
                raise ValueError(f"--{name} {value}: no such directory (nor a Hub id such as org/name)")
        for side in ("", "teacher_"):
            if getattr(self, f"{side}prompt") is not None and getattr(self, f"{side}prompt_name") is not None:
                flag = f"--{side.replace('_', '-')}prompt"
                raise ValueError(f"{flag} and {flag}-name exclude each other")
        if self.teacher is None and (self.teacher_prompt is not None or self.teacher_prompt_name is not None):
            raise ValueError("--teacher-prompt / --teacher-prompt-name need --teacher")
        resolve_prompt(self.model, self.prompt, self.prompt_name)  # a bad prompt name fails now, not after a suite
        if self.teacher is not None:
            resolve_prompt(self.teacher, self.teacher_prompt, self.teacher_prompt_name, "--teacher")
        if self.suite == "encodechka" and not Path(self.data_dir).is_dir():
            raise ValueError(f"--data-dir {self.data_dir}: no such directory")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("max_length", "word_max_length"):
            if not 8 <= getattr(self, name) <= MAX_LENGTH_LIMIT:
                raise ValueError(f"--{name.replace('_', '-')} must be in [8, {MAX_LENGTH_LIMIT}]")
        if self.max_examples is not None and self.max_examples < 10:
            raise ValueError(f"--max-examples must be >= 10, got {self.max_examples}")
        if self.tasks:
            self.tasks = [t.upper() for t in self.tasks]
            unknown = [t for t in self.tasks if t not in (*TABLE_COLUMNS, *BUILTIN_COLUMNS, "CPU")]
            if unknown:
                raise ValueError(f"--tasks: unknown task code(s) {', '.join(unknown)}")


# ------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------

class ProbeEmbedder:
    """Sentence and word vectors from a transformers encoder, batched and length-sorted.

    A small self-contained embedder for the probes (it needs token-level vectors for NER, and all four
    sentence variants from one forward pass).

    Example:
        >>> emb = ProbeEmbedder("student/")  # doctest: +SKIP
        >>> emb.sentence_variants(["Привет!", "Как дела?"])["mean_norm"].shape  # doctest: +SKIP
        (2, 264)
    """

    def __init__(self, model_dir: str, device: str = "auto", batch_size: int = 64, max_length: int = 128,
                 trust_remote_code: bool = False, prompt: str = ""):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size, self.max_length, self.prompt = batch_size, max_length, prompt
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.position_limit = int(positions)
        self.dim = int(getattr(self.model.config, "hidden_size", None) or self.model.config.dim)

    def _inputs(self, encoded) -> dict:
        accepted = set(self.tokenizer.model_input_names) & {"input_ids", "attention_mask", "token_type_ids"}
        if self.model.config.model_type == "distilbert":
            accepted.discard("token_type_ids")  # DistilBERT has no segment embeddings
        return {k: v.to(self.device) for k, v in encoded.items() if k in accepted}

    def sentence_variants(self, texts: Sequence[str], desc: str = "embed") -> dict[str, np.ndarray]:
        """``{"cls", "mean", "cls_norm", "mean_norm"} -> (len(texts), dim)`` float32 arrays."""
        import torch
        from tqdm.auto import tqdm

        texts = [self.prompt + t for t in texts]
        unique = sorted(set(texts), key=len)  # length-sorted, duplicates embedded once
        index = {t: i for i, t in enumerate(unique)}
        cls = np.zeros((len(unique), self.dim), dtype=np.float32)
        mean = np.zeros((len(unique), self.dim), dtype=np.float32)
        max_length = min(self.max_length, self.position_limit)
        with torch.inference_mode():
            for begin in tqdm(range(0, len(unique), self.batch_size), desc=desc, unit="batch", leave=False):
                batch = unique[begin:begin + self.batch_size]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = self.model(**self._inputs(enc)).last_hidden_state.float()  # (batch, seq, dim)
                mask = enc["attention_mask"].to(self.device).unsqueeze(-1).float()  # (batch, seq, 1)
                cls[begin:begin + len(batch)] = hidden[:, 0].cpu().numpy()
                mean[begin:begin + len(batch)] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        rows = np.array([index[t] for t in texts], dtype=np.int64)
        out = {"cls": cls[rows], "mean": mean[rows]}
        for name in ("cls", "mean"):
            norms = np.linalg.norm(out[name], axis=1, keepdims=True)
            out[f"{name}_norm"] = out[name] / np.maximum(norms, 1e-12)
        return out

    def word_vectors(self, sentences: Sequence[Sequence[str]], max_length: int = 512,
                     desc: str = "words") -> list[np.ndarray]:
        """Per sentence a ``(n_words, dim)`` array: the mean of each word's pieces (zeros if it has none).

        The prompt's words lead every word list (so the encoder reads ``prompt + text``) and are dropped.
        """
        import torch
        from tqdm.auto import tqdm

        max_length = min(max_length, self.position_limit)
        lead = self.prompt.split()
        order = sorted(range(len(sentences)), key=lambda i: sum(len(w) for w in sentences[i]))
        result: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(sentences)
        with torch.inference_mode():
            for begin in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch", leave=False):
                idx = order[begin:begin + self.batch_size]
                batch = [lead + list(sentences[i]) for i in idx]
                enc = self.tokenizer(batch, is_split_into_words=True, padding=True, truncation=True,
                                     max_length=max_length, return_tensors="pt")
                hidden = self.model(**self._inputs(enc)).last_hidden_state.float().cpu().numpy()  # (b, seq, dim)
                for row, i in enumerate(idx):
                    vectors = np.zeros((len(sentences[i]), self.dim), dtype=np.float32)
                    counts = np.zeros(len(sentences[i]), dtype=np.float32)
                    for position, word in enumerate(enc.word_ids(row)):
                        if word is not None and word >= len(lead):
                            vectors[word - len(lead)] += hidden[row, position]
                            counts[word - len(lead)] += 1
                    result[i] = vectors / np.maximum(counts, 1)[:, None]
        return result

    def ms_per_text(self, texts: Sequence[str]) -> float:
        """encodechka's speed protocol: one text at a time, tokenize + forward + copy out; ms per text."""
        import torch

        with torch.inference_mode():
            self.sentence_variants(list(texts[:5]), desc="warm-up")
            start = time.perf_counter()
            for text in texts:
                enc = self.tokenizer(self.prompt + text, truncation=True,
                                     max_length=min(self.max_length, self.position_limit),
                                     return_tensors="pt")
                _ = self.model(**self._inputs(enc)).last_hidden_state[:, 0].cpu().numpy()
        return (time.perf_counter() - start) / max(len(texts), 1) * 1000.0


# ------------------------------------------------------------------------------------------------
# the suite
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """One encodechka task: code, files, and the function that scores an embedder on them."""

    code: str
    files: tuple[str, ...]
    metric: str
    run: Callable[[ProbeEmbedder, list[Path], EvaluateConfig], dict[str, float]]


def _pairs(kind: str, text1: str, text2: str, y: str):
    def run(embedder: ProbeEmbedder, paths: list[Path], config: EvaluateConfig) -> dict[str, float]:
        data = read_table(paths[0], (text1, text2, y), config.max_examples)
        emb1 = embedder.sentence_variants(data[text1], desc=f"{paths[0].name} 1")
        emb2 = embedder.sentence_variants(data[text2], desc=f"{paths[0].name} 2")
        if kind == "spearman":
            return pair_spearman(emb1, emb2, numeric_column(data[y], paths[0], y))
        return pair_cv_accuracy(emb1, emb2, label_column(data[y]))
    return run


def _classification(kind: str, y: str, x: str = "text", x_test: str | None = None):
    def run(embedder: ProbeEmbedder, paths: list[Path], config: EvaluateConfig) -> dict[str, float]:
        train = read_table(paths[0], (x, y), config.max_examples)
        test = read_table(paths[1], (x_test or x, y), config.max_examples)
        e_train = embedder.sentence_variants(train[x], desc=paths[0].name)
        e_test = embedder.sentence_variants(test[x_test or x], desc=paths[1].name)
        y_train, y_test = label_column(train[y]), label_column(test[y])
        if kind == "auc":
            return probe_auc(e_train, y_train, e_test, y_test)
        return probe_accuracy(e_train, y_train, e_test, y_test)
    return run


def _ner(embedder: ProbeEmbedder, paths: list[Path], config: EvaluateConfig) -> dict[str, float]:
    from sklearn.model_selection import train_test_split

    from distilrubert.tasks.readers import read_factru

    texts, labels = read_factru(paths[0])
    if config.max_examples:
        texts, labels = texts[:config.max_examples], labels[:config.max_examples]
    # encodechka's split: half the texts for the probe's training, random_state 1.
    texts_train, texts_test, labels_train, labels_test = train_test_split(texts, labels, test_size=0.5,
                                                                          random_state=1)

    def xy(part_texts, part_labels, desc):
        labelled = [encodechka_word_labels(t, spans) for t, spans in zip(part_texts, part_labels, strict=True)]
        vectors = embedder.word_vectors([w for w, _ in labelled], config.word_max_length, desc=desc)
        return np.concatenate(vectors), np.array([tag for _, tags in labelled for tag in tags])

    x_train, y_train = xy(texts_train, labels_train, f"{paths[0].name} train")
    x_test, y_test = xy(texts_test, labels_test, f"{paths[0].name} test")
    return {"word_mean_pieces": probe_ner(x_train, y_train, x_test, y_test)}


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("STS", ("stsb_dev.csv",), "spearman", _pairs("spearman", "sentence1", "sentence2", "similarity_score")),
    TaskSpec("PI", ("para_gold.csv",), "spearman", _pairs("spearman", "text_1", "text_2", "class")),
    TaskSpec("NLI", ("xnli_ru.csv",), "accuracy", _pairs("cv", "sentence1", "sentence2", "gold_label")),
    TaskSpec("SA", ("SentiRuEval2016_small_train.csv", "SentiRuEval2016_small_test.csv"), "accuracy",
             _classification("accuracy", "answer")),
    TaskSpec("TI", ("toxic_train.csv", "toxic_test.csv"), "roc_auc", _classification("auc", "toxic")),
    TaskSpec("IA", ("inappropriate_train.csv", "inappropriate_test.csv"), "roc_auc", _classification("auc", "y")),
    TaskSpec("IC", ("intents_train.csv", "intents_test.csv"), "accuracy", _classification("accuracy", "label")),
    TaskSpec("ICX", ("intents_train.csv", "intents_test.csv"), "accuracy",
             _classification("accuracy", "label", x="answer", x_test="text")),
    TaskSpec("NE1", ("factru.json",), "macro_f1", _ner),
    TaskSpec("NE2", ("rudrec.json",), "macro_f1", _ner),
)
SPEED_FILE = "sentences_sample.txt"
BUILTIN_COLUMNS = ("REG",)


def _register_probe(embedder: ProbeEmbedder, paths: list[Path], config: EvaluateConfig) -> dict[str, float]:
    """The built-in probe: which source (fortunes / docs / subtitles / the two dialogue sets) a held-out text is from.

    Texts of ``data/sample_heldout.jsonl.gz`` (never trained on) are split 70/30 by a hash of their content.
    """
    from distilrubert.corpus import split_heldout

    rows = _read_jsonl_gz(paths[0])
    if config.max_examples and len(rows) > config.max_examples:  # an even spread over the (grouped) sources
        rows = rows[::-(-len(rows) // config.max_examples)]
    # The held-out file was itself chosen by a content hash: salt it for an independent 70/30 split.
    test = [split_heldout("register-probe\n" + r["text"], 0.3) for r in rows]
    texts = {part: [r["text"] for r, t in zip(rows, test, strict=True) if t == part] for part in (False, True)}
    labels = {part: label_column([r["source"] for r, t in zip(rows, test, strict=True) if t == part])
              for part in (False, True)}
    e_train = embedder.sentence_variants(texts[False], desc="register train")
    e_test = embedder.sentence_variants(texts[True], desc="register test")
    return probe_accuracy(e_train, labels[False], e_test, labels[True])


BUILTIN_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("REG", ("sample_heldout.jsonl.gz",), "accuracy", _register_probe),
)


def _read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _suite_files(config: EvaluateConfig) -> tuple[tuple[TaskSpec, ...], Path, list[str] | None]:
    """The suite's tasks, their data directory and, for the built-in suite, the texts timed for speed."""
    if config.suite == "builtin":
        from distilrubert.corpus import sample_corpus

        path = sample_corpus("heldout")
        lines = [row["text"] for row in _read_jsonl_gz(path)]
        return BUILTIN_TASKS, path.parent, [t for t in lines if len(t) < 400][:min(300, config.max_examples or 300)]
    return TASKS, Path(config.data_dir), None


def resolve_prompt(model_dir: str, prompt: str | None, prompt_name: str | None,
                   flag: str = "--model") -> tuple[str, str]:
    """``(prompt, where it came from)`` by the rules in the module docstring; ``flag`` names the side."""
    from distilrubert.teacher_spec import prompt_by_name, read_prompts

    side = "--teacher-" if flag == "--teacher" else "--"
    if prompt is not None:
        return prompt, f"{side}prompt"
    if prompt_name is not None:
        return prompt_by_name(model_dir, prompt_name, flag, f"{side}prompt-name"), f"{side}prompt-name {prompt_name}"
    found = read_prompts(model_dir, flag)
    if found is None:
        return "", "none (no config_sentence_transformers.json)"
    prompts, default_name = found
    # e5's convention: symmetric tasks (all the probes here) embed every text as a query.
    for name, why in (("query", "symmetric tasks"), (default_name, "the model's default_prompt_name")):
        if name in prompts:
            return prompts[name], f"{name!r} of config_sentence_transformers.json ({why})"
    return "", "none (config_sentence_transformers.json has no query or default prompt)"


def run_suite(model_dir: str, config: EvaluateConfig, label: str = "model") -> dict[str, Any]:
    """Every available task of the suite on one encoder: per task its best score and all variants."""
    tasks, data_dir, speed_texts = _suite_files(config)
    side = "teacher_" if label == "teacher" else ""
    prompt, prompt_source = resolve_prompt(model_dir, getattr(config, f"{side}prompt"),
                                           getattr(config, f"{side}prompt_name"), "--" + (side[:-1] or "model"))
    logger.info("%s prompt: %r (%s)", label, prompt, prompt_source)
    embedder = ProbeEmbedder(model_dir, config.device, config.batch_size, config.max_length, config.trust_remote_code,
                             prompt)
    results: dict[str, Any] = {"model": str(model_dir), "suite": config.suite, "prompt": prompt,
                               "prompt_source": prompt_source, "tasks": {}, "skipped": {}}
    wanted = config.tasks or [*TABLE_COLUMNS, *BUILTIN_COLUMNS, "CPU"]
    for spec in tasks:
        if spec.code not in wanted:
            continue
        paths = [data_dir / name for name in spec.files]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            message = f"{spec.code}: skipped, {', '.join(missing)} not in {data_dir}"
            logger.info(message)
            results["skipped"][spec.code] = message
            continue
        start = time.perf_counter()
        variants = spec.run(embedder, paths, config)
        best = max(variants, key=lambda k: variants[k])
        results["tasks"][spec.code] = {"score": variants[best], "best_variant": best, "metric": spec.metric,
                                       "variants": variants, "files": list(spec.files),
                                       "seconds": round(time.perf_counter() - start, 2)}
        logger.info("%s %s: %s %.4f (best variant %s)", label, spec.code, spec.metric, variants[best], best)
    speed_path = data_dir / SPEED_FILE
    if "CPU" in wanted and config.speed:
        if speed_texts or speed_path.is_file():
            sentences = speed_texts or [s.strip() for s in speed_path.read_text(encoding="utf-8").splitlines()
                                        if s.strip()]
            results["speed"] = {
                "ms_per_text": embedder.ms_per_text(sentences), "texts": len(sentences),
                "device": str(embedder.device), "threads": _threads(),
                "protocol": f"one text at a time, max length {config.max_length}, tokenize + forward + copy out"}
        else:
            results["skipped"]["CPU"] = f"CPU: skipped, {SPEED_FILE} not in {data_dir}"
            logger.info(results["skipped"]["CPU"])
    if not results["tasks"] and "speed" not in results:
        raise ValueError(f"--data-dir {data_dir}: no task of the suite could run (its files are missing: "
                         f"{'; '.join(results['skipped'].values()) or 'no task selected'})")
    scores = [results["tasks"][c]["score"] for c in (*SENTENCE_TASKS, *BUILTIN_COLUMNS) if c in results["tasks"]]
    results["mean_sentence_tasks"] = float(np.mean(scores)) if scores else None
    return results


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[tuple[str, dict[str, Any]]], retention: dict[str, float] | None = None) -> str:
    """encodechka's column layout (model | STS | PI | NLI | SA | TI | IA | IC | ICX | NE1 | NE2 | CPU)."""
    builtin = [c for c in BUILTIN_COLUMNS if any(c in r.get("tasks", {}) for _, r in rows)]
    columns = (*TABLE_COLUMNS, *builtin)
    header = "| model | " + " | ".join(columns) + " | CPU ms/text |"
    lines = [header, "|:--|" + "--:|" * (len(columns) + 1)]
    for name, result in rows:
        tasks = result.get("tasks", {})
        speed = result.get("speed", {}).get("ms_per_text")
        cells = [_cell(tasks[c]["score"]) if c in tasks else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(speed, 1)} |")
    if retention:
        cells = [f"{retention[c]:.0%}" if c in retention else "" for c in columns]
        lines.append("| retention (student / teacher) | " + " | ".join(cells) + " | |")
    for name, published in PUBLISHED.items():
        cells = [_cell(published.get(c)) for c in columns]
        lines.append(f"| {name} (published, other hardware) | " + " | ".join(cells)
                     + f" | {_cell(published.get('CPU'), 1)} |")
    return "\n".join(lines) + "\n"


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Run the suite on ``config.model`` (and ``config.teacher``); write the JSON and the markdown table."""
    started = time.perf_counter()
    student = run_suite(config.model, config, label="model")
    report: dict[str, Any] = {"suite": config.suite, "data_dir": str(config.data_dir), "model": student}
    rows = [(Path(config.model).name or str(config.model), student)]
    retention = None
    if config.teacher:
        teacher = run_suite(config.teacher, config, label="teacher")
        report["teacher"] = teacher
        retention = {code: student["tasks"][code]["score"] / teacher["tasks"][code]["score"]
                     for code in student["tasks"] if code in teacher["tasks"] and teacher["tasks"][code]["score"]}
        report["retention"] = retention
        if student.get("speed") and teacher.get("speed"):
            report["speedup"] = teacher["speed"]["ms_per_text"] / student["speed"]["ms_per_text"]
        rows.append((f"{Path(config.teacher).name} (teacher)", teacher))
    table = markdown_table(rows, retention)
    report["table_markdown"] = table
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["run"] = run_info("evaluate", to_dict(config))
    output = Path(config.output)
    write_json(output, report)
    atomic_write_text(output.with_suffix(".md"), table)
    return report


def run(config: EvaluateConfig) -> int:
    """CLI entry point of ``distilrubert evaluate``."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    report = evaluate(config)
    for message in report["model"]["skipped"].values():
        print(message)
    for side in ("model", "teacher"):
        if side in report:
            print(f"{side} prompt: {report[side]['prompt']!r} ({report[side]['prompt_source']})")
    print(report["table_markdown"])
    if "retention" in report:
        parts = [f"{code} {value:.1%}" for code, value in report["retention"].items()]
        print("retention (student / teacher): " + ", ".join(parts))
        if "speedup" in report:
            print(f"speed-up vs teacher (ms/text): {report['speedup']:.1f}x")
    print(f"wrote {config.output} and {Path(config.output).with_suffix('.md')} ({report['seconds']:.0f} s)")
    return 0

