"""Distillation from a representation teacher: sentence, relation and span losses (no teacher logits needed).

Most strong encoders ship without a masked-LM head (e5, LaBSE, bge-m3, USER), so there are no teacher
logits to take a KL against. ``distill`` detects such a teacher (or ``--alignment span`` with any
teacher) and trains the student on whole texts (:mod:`distilrubert.textunits`) with

* ``--alpha-sentence``: the student's pooled embedding (``--pooling-student``, mean by default: the
  pooling users call it with), through a trainable projection to the teacher's width, against the
  teacher's sentence embedding of the same text computed the way its card says
  (:mod:`distilrubert.teacher_spec`; e5: mean pooling of ``"passage: " + text``, L2-normalised);
  ``--sentence-loss cosine`` (1 - cos) or ``mse``;
* ``--alpha-relation``: KL between the row-softmaxed teacher and student cosine-similarity matrices of
  the batch at ``--relation-temperature`` (:func:`distilrubert.losses.relation_loss`): the teacher's
  geometry, not its coordinates;
* ``--alpha-hidden`` with ``--alignment span``: hidden states mean-pooled over the span groups
  (:mod:`distilrubert.align.span`) at the ``--layer-mapping`` pairs, student side through a projection,
  MSE or cosine (``--hidden-loss``);
* ``--alpha-mlm``: the student's own masked-LM loss on a masked copy of the text.

The sentence / relation / span terms use the student's *unmasked* pass (what it will see in use); MLM
its masked pass. With ``--cache-teacher auto`` (the default here) the teacher's outputs are cached
(:mod:`distilrubert.rep_cache`): once every text has been seen, steps run the student only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distilrubert.data import MaskingCollator, _pad
from distilrubert.losses import (
    hidden_loss,
    mean_states,
    mlm_loss,
    model_layers,
    model_width,
    relation_loss,
    sentence_loss,
)

logger = logging.getLogger(__name__)

__all__ = ["RepresentationModule", "RepresentationTask", "TextCollator", "pool_states", "span_model_card"]


def pool_states(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(batch, dim)`` sentence vectors of ``(batch, len, dim)`` states: mean / cls / max over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, len, 1)
    if pooling == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class TextCollator(MaskingCollator):
    """Indices of text units -> a batch: both tokenisations, a masked student copy, span groups.

    Batch keys: ``student_input_ids`` / ``attention_mask`` (unmasked student), ``input_ids`` / ``labels``
    (masked copy for MLM; ``labels`` all -100 without MLM), ``teacher_input_ids`` /
    ``teacher_attention_mask``, ``seq_index`` and ``doc_index`` ``(batch,)``; with span groups
    ``student_group`` / ``teacher_group`` (batch-global group ids, -1 none), ``group_rows`` (each group's row
    in the group cache), ``group_batch_row`` (each group's row in the batch) and ``n_groups``.
    """

    def __init__(self, units: Any, student_tokenizer: Any, token_probs: np.ndarray, seed: int = 0,
                 mlm_probability: float = 0.15, teacher_pad_id: int = 0, mlm: bool = True) -> None:
        self.units = units
        self.mlm = mlm
        self._init_masking(student_tokenizer, token_probs, seed, mlm_probability, teacher_pad_id)

    def __call__(self, indices: np.ndarray, step: int, stream: int = 0) -> dict[str, np.ndarray]:
        units = self.units
        indices = np.asarray(indices, dtype=np.int64)
        s_ids, s_att = _pad([units.student_ids(int(i)) for i in indices], self.pad_id)  # (batch, len)
        t_ids, t_att = _pad([units.teacher_ids(int(i)) for i in indices], self.teacher_pad_id)
        batch = {"student_input_ids": s_ids, "attention_mask": s_att, "teacher_input_ids": t_ids,
                 "teacher_attention_mask": t_att, "seq_index": indices,
                 "doc_index": np.asarray([units.doc_index(int(i)) for i in indices], dtype=np.int64)}
        if self.mlm:
            rng = np.random.default_rng([self.seed, stream, step])
            batch["input_ids"], batch["labels"] = self._mask(s_ids, s_att, rng)
        if units.has_groups:
            s_group = np.full(s_ids.shape, -1, dtype=np.int64)
            t_group = np.full(t_ids.shape, -1, dtype=np.int64)
            rows, counts, base = [], [], 0
            for b, i in enumerate(indices):
                sg, tg, n = units.groups(int(i))
                s_group[b, : len(sg)] = np.where(sg >= 0, sg + base, -1)
                t_group[b, : len(tg)] = np.where(tg >= 0, tg + base, -1)
                rows.append(units.group_offset(int(i)) + np.arange(n))
                counts.append(n)
                base += n
            batch.update(student_group=s_group, teacher_group=t_group,
                         group_rows=np.concatenate(rows).astype(np.int64),
                         group_batch_row=np.repeat(np.arange(len(indices), dtype=np.int64), counts),
                         n_groups=np.asarray(base))
        return batch


class RepresentationModule(nn.Module):
    """The trainable part: the student, the sentence projection and the span projections."""

    def __init__(self, student: nn.Module, config: Any, teacher_dim: int, pairs: list) -> None:
        super().__init__()
        self.student = student
        self.config = config
        self.pairs = pairs if config.alpha_hidden > 0 else []
        dim = model_width(student.config)
        self.sentence_projection = nn.Linear(dim, teacher_dim)
        self.projections = nn.ModuleList(nn.Linear(dim, teacher_dim) for _ in self.pairs)

    def forward(self, batch: dict[str, torch.Tensor], teacher_sentence: torch.Tensor,
                teacher_groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        from distilrubert.align.span import pool_groups

        cfg = self.config
        base = self.student.base_model
        plain = base(input_ids=batch["student_input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=bool(self.pairs))
        embedding = pool_states(plain.last_hidden_state, batch["attention_mask"], cfg.student_pooling)
        losses: dict[str, torch.Tensor] = {}
        total = embedding.new_zeros(())
        if cfg.alpha_sentence > 0:
            losses["sentence"] = sentence_loss(self.sentence_projection(embedding), teacher_sentence, cfg.sentence_loss)
            total = total + cfg.alpha_sentence * losses["sentence"]
        if cfg.alpha_relation > 0:
            losses["relation"] = relation_loss(embedding, teacher_sentence, cfg.relation_temperature)
            total = total + cfg.alpha_relation * losses["relation"]
        if self.pairs:
            n_groups = int(batch["n_groups"])
            span = embedding.new_zeros(())
            for k, ((s_which, _), proj) in enumerate(zip(self.pairs, self.projections, strict=True)):
                s_rows = pool_groups(mean_states(plain.hidden_states, s_which), batch["student_group"], n_groups)
                span = span + hidden_loss(proj(s_rows), teacher_groups[:, k].to(s_rows.dtype), cfg.hidden_loss)
            losses["hidden"] = span / len(self.pairs)
            total = total + cfg.alpha_hidden * losses["hidden"]
        if cfg.alpha_mlm > 0:
            masked = self.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            losses["mlm"] = mlm_loss(masked.logits, batch["labels"])
            total = total + cfg.alpha_mlm * losses["mlm"]
        losses["loss"] = total
        return losses


class RepresentationTask:
    """What the shared loop needs (module, setup, step losses, validation, saving) for a representation teacher."""

    def __init__(self, config: Any, teacher: Any, student: Any, units: Any, spec: Any, extra_info: dict[str, Any],
                 card: Any = None, collator: TextCollator | None = None) -> None:
        from distilrubert.losses import layer_pairs

        self.config = config
        self.teacher = teacher
        self.units = units
        self.spec = spec
        self.extra_info = extra_info
        self.card = card or span_model_card
        self.collator = collator  # for computing missing targets outside a training batch (unit_embeddings)
        self.accelerator: Any = None
        t_cfg = teacher.config
        n_teacher = model_layers(t_cfg)
        n_student = model_layers(student.config)
        self.pairs = layer_pairs(config.layer_mapping, n_student, n_teacher) if config.alpha_hidden > 0 else []
        self.teacher_dim = model_width(t_cfg)
        self.module = RepresentationModule(student, config, self.teacher_dim, self.pairs)
        self.sentence_cache = self.group_cache = None
        self.teacher_steps = self.teacher_rows = 0

    def setup(self, accelerator: Any) -> None:
        from distilrubert.teacher_head import prepare_teacher

        prepare_teacher(self.teacher, accelerator)
        self.accelerator = accelerator
        if self.config.cache_teacher != "none":
            self._open_caches(accelerator)

    def _open_caches(self, accelerator: Any) -> None:
        from distilrubert.data import default_cache_root
        from distilrubert.rep_cache import CachePart, cache_key_digest, teacher_identity

        cfg, units = self.config, self.units
        root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_root()
        key = {"kind": "sentence", "teacher": teacher_identity(cfg.teacher, cfg.revision),
               "corpus": units.report["key"]["corpus"], "text_field": units.report["key"]["text_field"],
               "teacher_tokenizer": units.report["key"]["teacher"], "prompt": self.spec.prompt,
               "teacher_max_length": units.report["teacher_max_length"], "pooling": self.spec.pooling,
               "normalize": self.spec.normalize}
        main = accelerator.is_main_process
        directory = root / f"teacher-sentence-{cache_key_digest(key)}"
        if main:
            self.sentence_cache = CachePart(directory, key, units.n_documents, (self.teacher_dim,), units.n_documents)
        accelerator.wait_for_everyone()
        if not main:
            self.sentence_cache = CachePart(directory, key, units.n_documents, (self.teacher_dim,),
                                            units.n_documents, main=False)
        if self.pairs:
            gkey = {**key, "kind": "groups", "units": units.report["key"], "pairs": [list(map(list, p)) for p in
                                                                                  self.pairs]}
            gdir = root / f"teacher-groups-{cache_key_digest(gkey)}"
            shape = (len(self.pairs), self.teacher_dim)
            if main:
                self.group_cache = CachePart(gdir, gkey, units.total_groups, shape, len(units))
            accelerator.wait_for_everyone()
            if not main:
                self.group_cache = CachePart(gdir, gkey, units.total_groups, shape, len(units), main=False)
        logger.info("teacher cache: %.1f%% of the sentence embeddings already cached (%s)",
                    100 * self.sentence_cache.filled_fraction, directory)

    @torch.no_grad()
    def _teacher_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from distilrubert.align.span import pool_groups

        self.teacher_steps += 1
        self.teacher_rows += int(batch["teacher_input_ids"].shape[0])
        base = getattr(self.teacher, "base_model", self.teacher)
        out = base(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                   output_hidden_states=bool(self.pairs))
        sentence = pool_states(out.last_hidden_state.float(), batch["teacher_attention_mask"], self.spec.pooling)
        if self.spec.normalize:
            sentence = torch.nn.functional.normalize(sentence, dim=-1)
        groups = None
        if self.pairs:
            n_groups = int(batch["n_groups"])
            groups = torch.stack([pool_groups(mean_states(out.hidden_states, t_which).float(),
                                              batch["teacher_group"], n_groups) for _, t_which in self.pairs], dim=1)
        return sentence, groups  # (batch, dim), (groups, pairs, dim)

    def _targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.sentence_cache is None:
            return self._teacher_outputs(batch)
        device = batch["teacher_input_ids"].device
        doc, seq = batch["doc_index"].cpu().numpy(), batch["seq_index"].cpu().numpy()
        miss = self.sentence_cache.missing(doc)
        if self.group_cache is not None:
            miss |= self.group_cache.missing(seq)
        if miss.any():
            self._fill(batch, miss)
        hit = not miss.any()
        sentence = self.sentence_cache.get(doc, doc, count=hit)
        groups = None
        if self.group_cache is not None:
            groups = self.group_cache.get(seq, batch["group_rows"].cpu().numpy(), count=hit)
        if sentence is None or (self.group_cache is not None and groups is None):
            return self._teacher_outputs(batch)  # non-finite values were cached: use the teacher directly
        return torch.from_numpy(sentence).to(device), None if groups is None else torch.from_numpy(groups).to(device)

    def _fill(self, batch: dict[str, torch.Tensor], miss: np.ndarray) -> None:
        """Run the teacher on the batch rows whose targets are not cached yet (only those) and cache them.

        A partly cached batch costs the teacher only its missing rows, so a cache filled by an earlier run
        (or an interrupted one) is used row by row, not only when a whole batch happens to be complete.
        """
        rows = torch.from_numpy(np.flatnonzero(miss)).to(batch["teacher_input_ids"].device)
        t_mask = batch["teacher_attention_mask"][rows]
        width = max(1, int(t_mask.sum(1).max()))  # trim the padding the other rows needed
        sub = {"teacher_input_ids": batch["teacher_input_ids"][rows, :width],
               "teacher_attention_mask": t_mask[:, :width]}
        if self.group_cache is not None:
            sub.update(teacher_group=batch["teacher_group"][rows, :width], n_groups=batch["n_groups"])
        t_sentence, t_groups = self._teacher_outputs(sub)
        doc, seq = batch["doc_index"].cpu().numpy(), batch["seq_index"].cpu().numpy()
        self.sentence_cache.misses += 1
        self.sentence_cache.put(doc[miss], doc[miss], t_sentence.cpu().numpy())
        if self.group_cache is not None:
            mine = miss[batch["group_batch_row"].cpu().numpy()]  # groups of the recomputed rows
            self.group_cache.misses += 1
            self.group_cache.put(seq[miss], batch["group_rows"].cpu().numpy()[mine], t_groups.cpu().numpy()[mine])

    def unit_embeddings(self, unit_ids: np.ndarray) -> np.ndarray:
        """``(len(unit_ids), teacher_dim)`` teacher sentence embeddings; the missing ones are computed first.

        The main process runs the teacher over the uncached units (longest last, with a progress bar) and
        caches them; the other processes wait and read.
        """
        from tqdm.auto import tqdm

        from distilrubert.trainer import to_device

        if self.sentence_cache is None or self.collator is None:
            raise ValueError("--neighbour-batches: needs the teacher's sentence embeddings cached "
                             "(--cache-teacher outputs or auto)")
        accelerator = self.accelerator
        docs = np.asarray([self.units.doc_index(int(i)) for i in unit_ids], dtype=np.int64)
        missing = np.asarray(unit_ids)[self.sentence_cache.missing(docs)]
        if len(missing) and accelerator.is_main_process:
            missing = missing[np.argsort(self.units.lengths()[missing], kind="stable")]
            size = max(1, int(self.config.batch_size))
            logger.info("computing the teacher's sentence embeddings of %d uncached texts", len(missing))
            with torch.no_grad():
                for begin in tqdm(range(0, len(missing), size), desc="teacher embeddings", unit="batch",
                                  disable=not self.config.progress):
                    chunk = missing[begin:begin + size]
                    batch = to_device(self.collator(chunk, step=begin, stream=2), accelerator.device)
                    self._fill(batch, np.ones(len(chunk), dtype=bool))
            self.sentence_cache.flush()
            if self.group_cache is not None:
                self.group_cache.flush()
        accelerator.wait_for_everyone()
        values = np.asarray(self.sentence_cache.values[docs], dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"teacher cache {self.sentence_cache.directory}: non-finite sentence embeddings; "
                             "delete the directory to recompute them")
        return values

    def step_losses(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        sentence, groups = self._targets(batch)
        return model(batch, teacher_sentence=sentence, teacher_groups=groups)

    def eval_names(self) -> list[str]:
        cfg = self.config
        names = ["loss"]
        names += [n for n, a in (("sentence", cfg.alpha_sentence), ("relation", cfg.alpha_relation),
                                 ("hidden", cfg.alpha_hidden if self.pairs else 0), ("mlm", cfg.alpha_mlm)) if a > 0]
        return names

    def eval_sums(self, module: Any, batch: dict[str, Any]) -> dict[str, tuple[float, float]]:
        sentence, groups = self._targets(batch)
        losses = module(batch, teacher_sentence=sentence, teacher_groups=groups)
        rows = float(batch["student_input_ids"].shape[0])
        return {name: (float(losses[name]) * rows, rows) for name in self.eval_names()}

    def save_final(self, module: Any, directory: Path, summary: dict[str, Any]) -> None:
        from distilrubert.runinfo import write_json
        from distilrubert.vocab import copy_tokenizer_files

        module.student.save_pretrained(directory, safe_serialization=True)
        copy_tokenizer_files(self.config.student, directory)
        for cache, name in ((self.sentence_cache, "sentence"), (self.group_cache, "groups")):
            if cache is not None:
                cache.close()
                summary.setdefault("teacher_cache", {})[name] = {
                    "hits": cache.hits, "misses": cache.misses, "filled": round(cache.filled_fraction, 4),
                    "directory": str(cache.directory)}
        summary["teacher_forward_steps"] = self.teacher_steps
        summary["teacher_forward_rows"] = self.teacher_rows
        info = {**self.extra_info, **summary}
        write_json(directory / "train_report.json", info)
        (directory / "README.md").write_text(self.card(self.config, module.student, info), encoding="utf-8")


def span_model_card(config: Any, student: Any, info: dict[str, Any]) -> str:
    """The model card of a student distilled with ``--alignment span``."""
    from distilrubert.cards import card_front_matter, training_tables
    from distilrubert.config import to_dict
    from distilrubert.runinfo import command_line

    cfg = student.config
    n_params = sum(p.numel() for p in student.parameters())
    tables = training_tables(info)
    data, spec = info.get("data", {}), info.get("teacher_spec", {})
    command = command_line() or f"distill({to_dict(config)})"
    layers = model_layers(cfg)
    width = model_width(cfg)
    rows = [
        ("architecture", f"{cfg.model_type}, {layers} layers, hidden {width}, vocabulary {cfg.vocab_size:,}"),
        ("parameters", f"{n_params:,}"),
        ("teacher", f"`{config.teacher}`: sentence embedding = {spec.get('pooling')} pooling of "
         f"`{spec.get('prompt', '')!r} + text`{', L2-normalised' if spec.get('normalize') else ''}"),
        ("alignment", "`span` (character-offset groups of both tokenisations)"),
        ("loss weights", f"sentence {config.alpha_sentence} ({config.sentence_loss}), relation {config.alpha_relation} "
         f"(T = {config.relation_temperature}), span hidden {config.alpha_hidden} ({config.hidden_loss}, "
         f"{config.layer_mapping}), MLM {config.alpha_mlm}"),
        ("student pooling", f"{config.student_pooling} (use the model with this pooling)"),
        ("data", f"{', '.join(config.corpus)}: {data.get('units', '?')} texts ({data.get('duplicates', 0)} duplicates "
         f"removed), <= {config.max_length} student tokens; {info.get('train_sequences')} train / "
         f"{info.get('valid_sequences')} validation"),
        ("training", f"{info.get('steps')} steps x {config.batch_size} x {config.gradient_accumulation} x "
         f"{info.get('processes')} processes, lr {config.lr}, {info.get('seconds')} s; teacher forward passes: "
         f"{info.get('teacher_forward_steps')}"),
    ]
    table = "".join(f"| {k} | {v} |\n" for k, v in rows)
    return f"""{card_front_matter("knowledge-distillation", "sentence-similarity")}
# {Path(config.output).name}

A student distilled by `distilrubert distill --alignment span` from `{config.teacher}`.

| | |
|---|---|
{table}
{tables}
## Usage

```python
from distilrubert import Encoder
encoder = Encoder.from_pretrained("{Path(config.output).name}")
vectors = encoder.encode(["Привет, как дела?"], pooling="{config.student_pooling}", normalize=True)
```

Reproduce: `{command}`
"""
