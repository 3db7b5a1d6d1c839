"""``distilrubert distill``: distil a BERT teacher into a student with a different vocabulary.

What each model reads (the released code's choice, REFERENCE 2.4):

* The teacher reads its own tokenisation **unmasked**, in eval mode, without gradients (half
  precision on a GPU). The KL is taken at every aligned non-padding position.
* The student reads its own tokenisation **masked** (15%, 0.7 smoothing, 80/10/10) for the MLM loss.
* ``match``: the KL and hidden-state losses use that masked pass at the matched positions.
* ``reduce``: the student makes a second, unmasked pass over the teacher sequence rewritten in
  student tokens; KL and hidden-state losses use it.

Loss = ``alpha_kl * KL x T^2 + alpha_mlm * MLM + alpha_hidden * hidden + alpha_attention * attention``
(defaults 2.0 / 0.5 / 0.1 / 0, T = 2, the released scripts'). The hidden-state loss goes through one
trainable linear projection (student width -> teacher width) per layer pair; the projections are
checkpointed with the student but not saved into the final model directory.

Example:
    distilrubert distill --teacher DeepPavlov/rubert-base-cased-conversational --student student-5k \\
        --corpus corpus.jsonl --alignment reduce --max-steps 10000 --output distilled-5k
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distilrubert.cards import card_front_matter, training_tables
from distilrubert.config import option, to_dict
from distilrubert.losses import (
    attention_mse,
    hidden_loss,
    layer_pairs,
    mean_states,
    mlm_loss,
    model_layers,
    model_width,
)
from distilrubert.runinfo import command_line, write_json
from distilrubert.teacher_head import prepare_teacher, teacher_forward
from distilrubert.trainer import TrainOptions
from distilrubert.vocab import copy_tokenizer_files

logger = logging.getLogger(__name__)

__all__ = ["DistillConfig", "DistillModule", "distill", "run"]



@dataclass(kw_only=True)
class DistillConfig(TrainOptions):
    """Options of ``distilrubert distill``."""

    teacher: str = option(help="Teacher: a Hub id (e.g. DeepPavlov/rubert-base-cased-conversational) or a local "
                          "directory with a masked-LM model and its tokenizer.", metavar="ID_OR_DIR")
    student: str = option(help="Student directory (from `distilrubert init-student`): masked-LM model + tokenizer.",
                          metavar="DIR")
    alignment: Literal["auto", "match", "reduce", "span"] = option(
        "auto", "Vocabulary alignment (REFERENCE 2.4): match / reduce (KL over output distributions: a teacher with "
        "an MLM head), span (character-offset groups of both tokenisations; any teacher, any tokenizer family), or "
        "auto: reduce for a teacher with an MLM head, span for one without.")
    pooling: Literal["sum", "mean", "logsumexp"] = option(
        "mean", "reduce: how student scores are pooled over a teacher token's pieces (the released code: sum; "
        "mean distilled better here, docs/results-reduce-mean.md).")
    kl_positions: Literal["aligned", "masked-words"] = option(
        "aligned", "Where the KL is taken: every aligned position with the teacher reading unmasked text (the "
        "released code), or masked-words: the same words masked in both tokenisations (the teacher reads them "
        "masked too) and the KL only at those words (the DistilBERT recipe; whole-word masking).")
    kl_kernel: Literal["auto", "native", "compile", "eager"] = option(
        "auto", "reduce (sum/mean) KL kernels: native (C++, built with the system compiler at first use), compile "
        "(torch.compile), eager (plain torch), or auto: native on CPU for teacher vocabularies >= 32K, falling "
        "back to compile, then eager, when a build fails. Same result; native is the fastest.")
    fused_kl: Literal["auto", "native", "compile", "off", "on"] | None = option(
        None, "Deprecated spelling of --kl-kernel (off = eager, on = compile); warns.")
    temperature: float = option(2.0, "Softmax temperature T of the KL (the loss is multiplied by T^2).")
    alpha_kl: float | None = option(None, "Weight of the KL distillation loss (default 2.0 with match / reduce; a "
                                    "span run or a teacher without an MLM head has no KL).")
    alpha_mlm: float = option(0.5, "Weight of the student's MLM loss.")
    alpha_hidden: float = option(0.1, "Weight of the hidden-state loss (0 = off).")
    alpha_attention: float = option(0.0, "Weight of the attention-map MSE (match only; equal head counts).")
    hidden_loss: Literal["mse", "cosine"] = option("mse", "Hidden-state distance.")
    layer_mapping: str = option("average_all", "Hidden-state layer pairs: average_all, skip, average, last, or "
                                "explicit STUDENT:TEACHER pairs such as 0:0,1:4,2:8,3:12 (1:1+2+3+4 = mean).")
    cache_teacher: Literal["auto", "none", "top-k", "outputs"] = option(
        "auto", "Cache teacher outputs on disk so later epochs skip the teacher: top-k (match / reduce: top-k "
        "log-probabilities), outputs (span: sentence embeddings and pooled group states, shared by runs on the same "
        "corpus and teacher), none, or auto: outputs for span, none otherwise.")
    cache_top_k: int = option(64, "k of --cache-teacher top-k.")
    kl_support: Literal["full", "teacher-top-k"] = option(
        "full", "Support of the training KL: full (exact: every token of the alignment's support) or "
        "teacher-top-k (an approximation: the teacher's --kl-top-k tokens per position, both distributions "
        "renormalised over them, as the teacher cache does). Validation always uses the full KL.")
    kl_top_k: int = option(1024, "k of --kl-support teacher-top-k.")
    alpha_sentence: float | None = option(None, "span: weight of the sentence-embedding loss (student pooled "
                                          "embedding, projected, vs the teacher's; default 1.0).")
    alpha_relation: float | None = option(None, "span: weight of the in-batch similarity (relation) KL (default 1.0).")
    sentence_loss: Literal["cosine", "mse"] = option("cosine", "span: distance of the sentence-embedding loss.")
    relation_temperature: float = option(0.05, "span: softmax temperature of the relation loss's cosine similarities.")
    neighbour_batches: int = option(
        0, "span: compose every batch of groups of this many texts that the teacher embeds close together "
        "(k-means clusters of its cached sentence embeddings), so the relation loss sees near neighbours; "
        "0 = random length-grouped batches. Must divide --batch-size.")
    student_pooling: Literal["mean", "cls"] = option(
        "mean", "span: how the student's sentence embedding is pooled (the pooling it will be used with).")
    teacher_prompt: str | None = option(None, "span: text put before every text the teacher reads (default: the "
                                        "teacher card's document prompt, e.g. 'passage: ' for e5; '' for none).")
    teacher_max_length: int = option(512, "span: the teacher's own truncation of a text, in teacher tokens.")
    on_error: Literal["raise", "skip"] = option("raise", "Malformed corpus lines: stop (raise) or count and skip.")
    revision: str | None = option(None, "Teacher revision (branch, tag or commit) on the Hub.")
    trust_remote_code: bool = option(False, "Allow custom model code from the teacher's repository.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fused_kl is not None:  # the deprecated flag: mapped (with a warning) and cleared
            from distilrubert.align import kl_kernel_from_fused

            self.kl_kernel, self.fused_kl = kl_kernel_from_fused(self.fused_kl), None
        if self.temperature <= 0:
            raise ValueError("--temperature: must be positive")
        weights = (("--alpha-kl", self.alpha_kl), ("--alpha-mlm", self.alpha_mlm),
                   ("--alpha-hidden", self.alpha_hidden), ("--alpha-attention", self.alpha_attention),
                   ("--alpha-sentence", self.alpha_sentence), ("--alpha-relation", self.alpha_relation))
        for flag, value in weights:
            if value is not None and value < 0:
                raise ValueError(f"{flag}: must be >= 0")
        if all(value is not None for _, value in weights) and sum(value for _, value in weights) == 0:
            raise ValueError("--alpha-kl/--alpha-mlm/--alpha-hidden/--alpha-attention/--alpha-sentence/"
                             "--alpha-relation: all weights are 0")
        if self.alpha_attention > 0 and self.alignment not in ("match", "auto"):
            raise ValueError("--alpha-attention: the attention loss needs --alignment match")
        if self.alignment in ("match", "reduce"):
            for flag, value in (("--alpha-sentence", self.alpha_sentence), ("--alpha-relation", self.alpha_relation)):
                if value:
                    raise ValueError(f"{flag}: the sentence and relation losses run with --alignment span")
            if self.cache_teacher == "outputs":
                raise ValueError("--cache-teacher outputs: for --alignment span (match / reduce cache top-k)")
        if self.alignment == "span":
            if self.alpha_kl:
                raise ValueError("--alpha-kl: --alignment span pairs hidden states, not output distributions: "
                                 "there is no KL (use --alpha-sentence, --alpha-relation, --alpha-hidden)")
            if self.cache_teacher == "top-k":
                raise ValueError("--cache-teacher top-k: for match / reduce (span caches its outputs: --cache-teacher "
                                 "outputs)")
            if self.kl_positions != "aligned":
                raise ValueError("--kl-positions: only match / reduce take a KL")
        if self.relation_temperature <= 0:
            raise ValueError("--relation-temperature: must be positive")
        if self.neighbour_batches:
            if self.alignment in ("match", "reduce"):
                raise ValueError("--neighbour-batches: for --alignment span (it groups by the teacher's sentence "
                                 "embeddings)")
            if self.neighbour_batches < 2 or self.batch_size % self.neighbour_batches:
                raise ValueError(f"--neighbour-batches: {self.neighbour_batches} must be >= 2 and divide "
                                 f"--batch-size {self.batch_size}")
            if self.cache_teacher == "none":
                raise ValueError("--neighbour-batches: clusters the cached teacher embeddings; not with "
                                 "--cache-teacher none")
        if not 2 < self.teacher_max_length <= 8192:
            raise ValueError("--teacher-max-length: must be in 3..8192")
        if self.kl_top_k < 1:
            raise ValueError("--kl-top-k: must be >= 1")
        if self.kl_positions == "masked-words" and self.cache_teacher not in ("none", "auto"):
            raise ValueError("--kl-positions masked-words: the teacher reads masked input that changes every "
                             "epoch, so its outputs cannot be cached (--cache-teacher none)")
        if self.cache_teacher == "top-k":
            if self.cache_top_k < 1:
                raise ValueError("--cache-top-k: must be >= 1")
            if self.alpha_hidden > 0 or self.alpha_attention > 0:
                raise ValueError("--cache-teacher top-k stores only output distributions: "
                                 "set --alpha-hidden 0 and --alpha-attention 0")
        if self.layer_mapping not in ("average_all", "skip", "average", "last"):
            from distilrubert.losses import parse_layer_pairs

            parse_layer_pairs(self.layer_mapping)


def _n_heads(config: Any) -> int:
    return int(getattr(config, "num_attention_heads", None) or config.n_heads)


class DistillModule(nn.Module):
    """The trainable part of distillation: the student and the hidden-state projections.

    One ``forward`` computes every student-side loss (both student passes of ``reduce`` included),
    so DDP sees a single forward per backward.
    """

    def __init__(self, student: nn.Module, alignment: Any, config: DistillConfig, pairs: list,
                 teacher_dim: int) -> None:
        super().__init__()
        self.student = student
        self.alignment = alignment
        self.config = config
        self.pairs = pairs if config.alpha_hidden > 0 else []
        student_dim = model_width(student.config)
        self.projections = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.pairs)

    def forward(self, batch: dict[str, torch.Tensor], teacher_logits: torch.Tensor | None = None,
                teacher_hidden: Any = None, teacher_attentions: Any = None,
                topk: tuple[torch.Tensor, torch.Tensor] | None = None,
                kl_support: str | None = None) -> dict[str, torch.Tensor]:
        cfg = self.config
        kl_support = kl_support or cfg.kl_support
        need_hidden = cfg.alpha_hidden > 0
        need_attn = cfg.alpha_attention > 0
        masked = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=need_hidden and self.alignment.name == "match",
                              output_attentions=need_attn)
        losses = {"mlm": mlm_loss(masked.logits, batch["labels"])}  # masked.logits: (batch, len, vocab)
        aligned = self.alignment.student_outputs(self.student, batch, masked, need_hidden, need_attn)
        if topk is None and kl_support == "teacher-top-k":
            # The approximation: the teacher's top-k per position, both sides renormalised over it.
            topk = self.alignment.teacher_topk(batch, teacher_logits, cfg.temperature, cfg.kl_top_k)
        if topk is not None:
            losses["kl"] = self.alignment.kl_topk(batch, aligned.logits, topk[0], topk[1], cfg.temperature)
        else:
            losses["kl"] = self.alignment.kl(batch, aligned.logits, teacher_logits, cfg.temperature)
        total = cfg.alpha_kl * losses["kl"] + cfg.alpha_mlm * losses["mlm"]
        if need_hidden:
            hidden = aligned.logits.new_zeros(())
            for (s_which, t_which), proj in zip(self.pairs, self.projections, strict=True):
                s_rows = self.alignment.student_rows(batch, mean_states(aligned.hidden_states, s_which))
                t_rows = self.alignment.teacher_rows(batch, mean_states(teacher_hidden, t_which))
                hidden = hidden + hidden_loss(proj(s_rows), t_rows, cfg.hidden_loss)  # (n, teacher_dim)
            losses["hidden"] = hidden / len(self.pairs)
            total = total + cfg.alpha_hidden * losses["hidden"]
        if need_attn:
            losses["attention"] = self._attention_loss(batch, aligned.attentions, teacher_attentions)
            total = total + cfg.alpha_attention * losses["attention"]
        losses["loss"] = total
        return losses

    def _attention_loss(self, batch, student_attn, teacher_attn):
        s_len = batch["input_ids"].shape[1]
        t_len = batch["teacher_input_ids"].shape[1]
        s_index, t_index = batch["s_index"], batch["t_index"]
        pairs = [(s, t) for s, t in self.pairs_for_attention() if s >= 1 and t >= 1]
        total = student_attn[0].new_zeros(())
        for b in range(batch["input_ids"].shape[0]):
            sel = (t_index // t_len) == b
            s_pos, t_pos = s_index[sel] % s_len, t_index[sel] % t_len  # (m,), (m,)
            if len(s_pos) == 0:
                continue
            for s_layer, t_layer in pairs:
                s_map = student_attn[s_layer - 1][b][:, s_pos][:, :, s_pos]  # (heads, m, m)
                t_map = teacher_attn[t_layer - 1][b][:, t_pos][:, :, t_pos]  # (heads, m, m)
                total = total + attention_mse(s_map[None], t_map[None])
        return total / max(1, batch["input_ids"].shape[0] * len(pairs))

    def pairs_for_attention(self):
        from distilrubert.losses import layer_pairs

        n_s = model_layers(self.student.config)
        pairs = layer_pairs(self.config.layer_mapping if self.config.layer_mapping != "average_all" else "skip",
                            n_s, self._teacher_layers)
        return [(s[0], t[-1]) for s, t in pairs]



class DistillTask:
    """What the shared loop needs from distillation: the module, the per-step losses, validation, saving."""

    def __init__(self, config: DistillConfig, teacher: Any, student: Any, student_tokenizer: Any, alignment: Any,
                 store: Any, extra_info: dict[str, Any]) -> None:
        self.config = config
        self.teacher = teacher
        self.alignment = alignment
        self.store = store
        self.student_tokenizer = student_tokenizer
        self.extra_info = extra_info
        pairs = layer_pairs(config.layer_mapping, model_layers(student.config), model_layers(teacher.config))
        self.module = DistillModule(student, alignment, config, pairs, model_width(teacher.config))
        self.module._teacher_layers = model_layers(teacher.config)
        if config.alpha_attention > 0 and _n_heads(student.config) != _n_heads(teacher.config):
            raise ValueError(f"--alpha-attention: the student has {_n_heads(student.config)} heads and the teacher "
                             f"{_n_heads(teacher.config)}; the attention loss needs equal head counts")
        self.cache = None

    def setup(self, accelerator: Any) -> None:
        prepare_teacher(self.teacher, accelerator)
        device = accelerator.device
        self.alignment.to(device)
        if self.config.cache_teacher == "top-k":
            from distilrubert.teacher_cache import TeacherCache

            key = {"data": str(self.store.path), "teacher": self.config.teacher, "alignment": self.config.alignment,
                   "pooling": self.config.pooling, "temperature": self.config.temperature,
                   "k": min(self.config.cache_top_k, self.alignment.support_size())}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            self.cache = TeacherCache(Path(self.config.output) / f"teacher-cache-{digest}", self.store, key["k"],
                                      accelerator.is_main_process, key)
            accelerator.wait_for_everyone()
            self.cache.open()

    def _teacher(self, batch: dict[str, Any]) -> Any:
        # The output projection runs later, only at the aligned positions (teacher_head): exact and cheaper.
        cfg = self.config
        return teacher_forward(self.teacher, batch, output_hidden_states=cfg.alpha_hidden > 0,
                               output_attentions=cfg.alpha_attention > 0)

    def step_losses(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if self.cache is not None:
            cached = self.cache.get(batch)
            if cached is None:
                t_out = self._teacher(batch)
                ids, logp = self.alignment.teacher_topk(batch, t_out.logits, cfg.temperature, self.cache.k)
                self.cache.put(batch, ids, logp)
                cached = (ids, logp)
            return model(batch, topk=cached)
        t_out = self._teacher(batch)
        return model(batch, teacher_logits=t_out.logits, teacher_hidden=t_out.hidden_states,
                     teacher_attentions=t_out.attentions)

    def eval_names(self) -> list[str]:
        names = ["kl", "mlm", "loss"]
        if self.config.alpha_hidden > 0:
            names.append("hidden")
        return names

    def eval_sums(self, module: Any, batch: dict[str, Any]) -> dict[str, tuple[float, float]]:
        # Validation always uses the teacher itself (full distribution), never the top-k cache.
        t_out = self._teacher(batch)
        losses = module(batch, teacher_logits=t_out.logits, teacher_hidden=t_out.hidden_states,
                        teacher_attentions=t_out.attentions, kl_support="full")
        n_aligned = float(len(batch["t_index"]))
        n_masked = float((batch["labels"] != -100).sum())
        rows = float(batch["input_ids"].shape[0])
        out = {"kl": (float(losses["kl"]) * n_aligned, n_aligned), "mlm": (float(losses["mlm"]) * n_masked, n_masked),
               "loss": (float(losses["loss"]) * rows, rows)}
        if "hidden" in losses:
            out["hidden"] = (float(losses["hidden"]) * rows, rows)
        return out

    def save_final(self, module: Any, directory: Path, summary: dict[str, Any]) -> None:
        student = module.student
        student.save_pretrained(directory, safe_serialization=True)
        copy_tokenizer_files(self.config.student, directory)
        if self.cache is not None:
            summary["teacher_cache"] = {"hits": self.cache.hits, "misses": self.cache.misses, "k": self.cache.k}
        linear_map = getattr(self.alignment, "linear_map", None)
        if linear_map is not None and self.alignment.pooling in ("sum", "mean"):
            summary["kl_kernel"] = linear_map.kernel_name  # what --kl-kernel resolved to
        info = {**self.extra_info, **summary}
        write_json(directory / "train_report.json", info)
        (directory / "README.md").write_text(model_card(self.config, student, info), encoding="utf-8")


def model_card(config: DistillConfig, student: Any, info: dict[str, Any]) -> str:
    """The model card of a distilled student: data, steps, losses, final validation figures."""
    cfg = student.config
    n_params = sum(p.numel() for p in student.parameters())
    tables = training_tables(info)
    data = info.get("data", {})
    command = command_line() or f"distill({to_dict(config)})"
    return f"""{card_front_matter("knowledge-distillation")}
# {Path(config.output).name}

A student distilled by `distilrubert distill` from `{config.teacher}` with the `{config.alignment}` vocabulary
alignment (Kolesnikova et al., 2022, arXiv 2205.02340).

| | |
|---|---|
| architecture | {cfg.model_type}, {model_layers(cfg)} layers, hidden {model_width(cfg)}, \
vocabulary {cfg.vocab_size:,} |
| parameters | {n_params:,} |
| teacher | `{config.teacher}` |
| alignment | `{config.alignment}` (pooling `{config.pooling}`, KL at `{config.kl_positions}` positions), \
T = {config.temperature} |
| loss weights | KL {config.alpha_kl}, MLM {config.alpha_mlm}, hidden {config.alpha_hidden} ({config.hidden_loss}, \
{config.layer_mapping}), attention {config.alpha_attention} |
| data | {", ".join(config.corpus)}: {data.get("sequences", "?")} sequences of <= {config.max_length} tokens \
({data.get("dropped_unk", 0)} dropped as mostly [UNK]); {info.get("train_sequences")} train / \
{info.get("valid_sequences")} validation |
| training | {info.get("steps")} steps x {config.batch_size} x {config.gradient_accumulation} x \
{info.get("processes")} processes, {info.get("tokens", 0):,} student tokens, lr {config.lr}, {info.get("seconds")} s |

{tables}
## Usage

```python
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{Path(config.output).name}")
model = AutoModel.from_pretrained("{Path(config.output).name}")
```

Reproduce: `{command}`
"""


def load_student(directory: str, attn_implementation: str | None = None):
    """Load the student masked-LM and its tokenizer from a directory written by ``init-student``."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--student: {path} holds no config.json (create it with `distilrubert init-student`)")
    from safetensors import SafetensorError

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForMaskedLM.from_pretrained(str(path), **kwargs)
    # SafetensorError: a truncated or corrupt weight file; RuntimeError: weights of other shapes than the config
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ValueError(f"--student: cannot load a masked-LM model and tokenizer from {path}: {err}") from err
    # Checked here, before any tokenising: ids past the embedding rows fail only deep inside the first step.
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(f"--student: {path} has {model.config.vocab_size} embedding rows but its tokenizer "
                         f"{len(tokenizer)} tokens (a vocabulary from another build-vocab run?)")
    return model, tokenizer


def resolve_for_teacher(config: DistillConfig, has_head: bool) -> DistillConfig:
    """The config with its ``auto`` choices made for this teacher (what ``run.json`` records).

    Raises:
        ValueError: a KL alignment or weight for a teacher that has no masked-LM head.
    """
    import dataclasses

    alignment = config.alignment if config.alignment != "auto" else ("reduce" if has_head else "span")
    if not has_head:
        if alignment in ("match", "reduce"):
            raise ValueError(f"--alignment {alignment}: the teacher {config.teacher} has no masked-LM head, so there "
                             "are no output distributions to align; use --alignment span (sentence, relation and "
                             "span hidden-state losses)")
        if config.alpha_kl:
            raise ValueError(f"--alpha-kl: the teacher {config.teacher} has no masked-LM head, so there are no "
                             "teacher logits for a KL; drop --alpha-kl (use --alpha-sentence, --alpha-relation, "
                             "--alpha-hidden)")
    span = alignment == "span"

    def default(value: float | None, when_span: float, otherwise: float) -> float:
        return (when_span if span else otherwise) if value is None else value

    cache = config.cache_teacher if config.cache_teacher != "auto" else ("outputs" if span else "none")
    return dataclasses.replace(config, alignment=alignment, alpha_kl=default(config.alpha_kl, 0.0, 2.0),
                               alpha_sentence=default(config.alpha_sentence, 1.0, 0.0),
                               alpha_relation=default(config.alpha_relation, 1.0, 0.0), cache_teacher=cache)


def distill_span(config: DistillConfig, accelerator: Any, resume_from: Any, student: Any, student_tok: Any,
                 teacher: Any, teacher_tok: Any) -> dict[str, Any]:
    """``--alignment span``: whole texts; sentence / relation / span-hidden / MLM losses (see represent.py)."""
    import dataclasses

    from distilrubert.data import smoothed_token_probs
    from distilrubert.represent import RepresentationTask, TextCollator
    from distilrubert.run_output import save_final_output
    from distilrubert.teacher_spec import read_teacher_spec
    from distilrubert.textunits import build_text_units
    from distilrubert.trainer import train

    spec = read_teacher_spec(config.teacher)
    if config.teacher_prompt is not None:
        spec = dataclasses.replace(spec, prompt=config.teacher_prompt)
    teacher_limit = min(config.teacher_max_length, int(getattr(teacher.config, "max_position_embeddings", 512)))
    if student.config.vocab_size < len(student_tok):  # (load_student checks it; a caller may pass its own)
        raise ValueError(f"--student: {config.student} has {student.config.vocab_size} embedding rows but its "
                         f"tokenizer {len(student_tok)} tokens")
    with accelerator.main_process_first():
        units = build_text_units(config.corpus, student_tok, teacher_tok, config.max_length, teacher_limit,
                                 spec.prompt, config.cache_dir, config.text_field, span=config.alpha_hidden > 0,
                                 progress=config.progress, on_error=config.on_error)
    probs = smoothed_token_probs(units.student_counts(student.config.vocab_size), student_tok.all_special_ids,
                                 config.mlm_smoothing)
    collator = TextCollator(units, student_tok, probs, seed=config.seed, mlm_probability=config.mlm_probability,
                            teacher_pad_id=teacher_tok.pad_token_id or 0, mlm=config.alpha_mlm > 0)
    extra = {"data": {k: v for k, v in units.report.items() if k != "key"}, "alignment": "span",
             "teacher_spec": dataclasses.asdict(spec), "teacher_max_length": teacher_limit}
    task = RepresentationTask(config, teacher, student, units, spec, extra, collator=collator)
    batcher = None
    if config.neighbour_batches:
        from distilrubert.neighbours import NeighbourBatches

        batcher = NeighbourBatches(task, len(units), config.neighbour_batches, config.seed)
    logger.info("distilling %s (%s params) from %s (%s params, %s pooling%s, prompt %r), span alignment, %d texts",
                config.student, f"{sum(p.numel() for p in student.parameters()):,}", config.teacher,
                f"{sum(p.numel() for p in teacher.parameters()):,}", spec.pooling,
                ", normalised" if spec.normalize else "", spec.prompt, len(units))
    summary = train(config, task, units, collator, accelerator, resume_from, batcher=batcher)
    if batcher is not None:
        summary["neighbour_batches"] = {"group": config.neighbour_batches, **batcher.report}
    save_final_output("distill", config, task, accelerator, summary)
    return summary


def distill(config: DistillConfig) -> dict[str, Any]:
    """Run distillation as configured; return the training report (also in ``train_report.json``)."""
    from accelerate.utils import set_seed

    from distilrubert.align import make_alignment
    from distilrubert.data import Collator, build_sequences, smoothed_token_probs, word_masking
    from distilrubert.loading import has_mlm_head, load_teacher
    from distilrubert.run_output import prepare_output, save_final_output
    from distilrubert.tokenmap import TokenMap
    from distilrubert.trainer import make_accelerator, train

    accelerator = make_accelerator(config)
    resume_from = prepare_output(config, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    eager = "eager" if config.alpha_attention > 0 else None
    student, student_tok = load_student(config.student, eager)
    teacher, teacher_tok = load_teacher(config.teacher, config.revision, config.trust_remote_code)
    config = resolve_for_teacher(config, has_mlm_head(teacher))
    if config.alignment == "span":
        return distill_span(config, accelerator, resume_from, student, student_tok, teacher, teacher_tok)
    if eager and hasattr(teacher, "set_attn_implementation"):
        teacher.set_attn_implementation("eager")
    max_pos = min(getattr(student.config, "max_position_embeddings", 512),
                  getattr(teacher.config, "max_position_embeddings", 512))
    if config.max_length > max_pos:
        raise ValueError(f"--max-length: {config.max_length} exceeds the models' {max_pos} positions")
    token_map = TokenMap.from_tokenizers(teacher_tok, student_tok)
    alignment = make_alignment(config.alignment, token_map, student_tok.pad_token_id, config.pooling,
                               config.kl_kernel)
    with accelerator.main_process_first():
        store = build_sequences(config.corpus, student_tok, teacher_tok, token_map, config.max_length,
                                config.cache_dir, config.text_field, progress=config.progress)
    vocab_size = student.config.vocab_size
    probs = smoothed_token_probs(store.student_counts(vocab_size), student_tok.all_special_ids, config.mlm_smoothing)
    same_words = ((word_masking(student_tok), word_masking(teacher_tok))
                  if config.kl_positions == "masked-words" else None)
    collator = Collator(store, student_tok, probs, alignment, seed=config.seed,
                        mlm_probability=config.mlm_probability, teacher_pad_id=teacher_tok.pad_token_id or 0,
                        same_words=same_words)
    extra = {"data": {k: v for k, v in store.report.items() if k != "key"}, "token_map": token_map.stats(),
             "alignment": config.alignment, "kl_positions": config.kl_positions}
    task = DistillTask(config, teacher, student, student_tok, alignment, store, extra)
    logger.info("distilling %s (%s params) from %s (%s params), alignment %s, %d sequences",
                config.student, f"{sum(p.numel() for p in student.parameters()):,}", config.teacher,
                f"{sum(p.numel() for p in teacher.parameters()):,}", config.alignment, len(store))
    summary = train(config, task, store, collator, accelerator, resume_from)
    if same_words is not None:
        summary["unpaired_sequences_seen"] = collator.unpaired  # word counts differed: student-only masking
    save_final_output("distill", config, task, accelerator, summary)
    return summary


def run(config: DistillConfig) -> int:
    """CLI entry point of ``distilrubert distill``."""
    distill(config)
    return 0
