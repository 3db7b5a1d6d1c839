"""Create the DistilBERT student and initialise it from a BERT-family teacher (REFERENCE 2.2).

The teacher is a BERT or DistilBERT encoder with or without a masked-LM head (:func:`load_teacher`), of
any tokenizer family the token map reads (WordPiece, SentencePiece ``▁``, byte-level ``Ġ``; e.g.
multilingual-e5-small: a ``BertModel`` with XLM-R's SentencePiece vocabulary). The student is always a
``DistilBertForMaskedLM`` with the student's WordPiece vocabulary.

What is copied, and how (``--init teacher``):

* **Word embeddings.** Student row ``s`` = mean of the teacher rows of the teacher tokens that map to
  ``s`` (the inverse token map, :attr:`TokenMap.student_to_teacher`: teacher tokens whose greedy split
  starts with ``s``), reduced to the student width. Special tokens take the teacher's row of the special
  of the same role (``<s>`` for ``[CLS]``). ``--embedding-sources exact-first`` takes, for a student
  token the teacher has too (same text and word-start flag: ``привет`` ~ ``▁привет``), that teacher row
  instead. Student tokens no teacher token maps to keep their random initialisation (counted in
  ``init_report.json``). The MLM output bias is built the same way from the teacher's output bias (the
  output matrix is tied to the embeddings). A teacher without an MLM head has none: the student's head
  keeps its own initialisation with a zero output bias (``init_report.json``: ``"mlm_head": "student"``).
* **Position embeddings** from the teacher, reduced the same way. DistilBERT has no token-type
  embeddings, so the teacher's type-0 embedding (which BERT adds to every single-segment token) is
  folded into the position rows; the student then computes exactly ``word + position (+ type 0)``.
* **Layers.** Student layer ``k`` = element-wise mean of a contiguous group of teacher layers (12 -> 3:
  groups of 4, as the paper). An uneven ratio groups as evenly as possible (``numpy.array_split``) and
  is reported. A teacher with fewer layers than the student repeats its layers.
* **Reduction** to the student sizes, ``--reduce``:
  ``truncate`` (the paper) keeps the first ``dim`` residual dimensions, the first ``ffn`` FFN units and,
  per attention head, the first ``dim / heads`` dimensions of that head (head-aware: with 12 heads in
  both models each student head is the crop of the same teacher head);
  ``pca`` projects the residual stream on the top principal axes of the teacher's word-embedding
  matrix, ``W_s = Pᵀ W P`` on residual-to-residual maps (LayerNorm gains use the diagonal of
  ``Pᵀ diag(γ) P``, an approximation); FFN units and head dimensions are cropped as above.
* Where the teacher is *smaller* than the student in some dimension (a tiny test teacher), the part the
  teacher covers is copied and the rest keeps the random initialisation; the run log says so.

``--init random`` builds the same architecture with transformers' own initialisation (the baseline).

Example:
    >>> from distilrubert.student_init import InitStudentConfig, init_student
    >>> init_student(InitStudentConfig(teacher="DeepPavlov/rubert-base-cased-conversational",
    ...                                vocab="v5k", output="student"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from distilrubert.cards import card_front_matter
from distilrubert.config import option, to_dict
from distilrubert.loading import (  # noqa: F401  (re-exported: defined here before)
    MLM_HEAD_PREFIXES,
    checkpoint_has_mlm_head,
    has_mlm_head,
    load_student_tokenizer,
    load_teacher,
)
from distilrubert.runinfo import atomic_output_dir, check_output_dir, command_line, run_info, write_json
from distilrubert.vocab import copy_tokenizer_files

logger = logging.getLogger(__name__)



@dataclass
class InitStudentConfig:
    """Options of ``distilrubert init-student``."""

    teacher: str = option(help="Teacher: a Hugging Face Hub id (e.g. DeepPavlov/rubert-base-cased-conversational) "
                          "or a local directory with a BERT or DistilBERT model (with or without an MLM head) "
                          "and its tokenizer.",
                          metavar="ID_OR_DIR")
    vocab: str = option(help="Student tokenizer directory (from `distilrubert build-vocab`).", metavar="DIR")
    output: str = option(help="Output model directory.", metavar="DIR")
    layers: int = option(3, "Student transformer layers.")
    dim: int = option(264, "Student hidden size.")
    heads: int = option(12, "Student attention heads (must divide --dim).")
    ffn: int = option(792, "Student feed-forward size.")
    max_position_embeddings: int = option(512, "Longest sequence the student accepts.")
    init: Literal["teacher", "random"] = option("teacher", "Initialise from the teacher, or randomly (baseline).")
    reduce: Literal["truncate", "pca"] = option("truncate", "How teacher widths are reduced to the student's.")
    teacher_family: Literal["auto", "wordpiece", "sentencepiece", "byte-level"] = option(
        "auto", "Teacher tokenizer family for the token map (auto: detected from the teacher tokenizer).")
    embedding_sources: Literal["inverse", "exact-first"] = option(
        "inverse", "Student embedding rows: mean over the inverse token map (paper), or the identically "
        "spelled teacher token when there is one.")
    dropout: float = option(0.1, "Dropout of the student.")
    attention_dropout: float = option(0.1, "Attention dropout of the student.")
    seed: int = option(42, "Seed of the random initialisation.")
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of the teacher.")
    trust_remote_code: bool = option(False, "Allow the teacher's own code from the Hub to run (off: safe default).")
    overwrite: bool = option(False, "Replace an existing non-empty output directory.")

    def __post_init__(self) -> None:
        for name in ("layers", "dim", "heads", "ffn", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"--dim {self.dim} must be divisible by --heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError("--dropout and --attention-dropout must be in [0, 1)")


# --------------------------------------------------------------------------------------------------
# teacher weights in one canonical form

_LAYER_KEYS = {
    # canonical name: (BERT suffix, DistilBERT suffix)
    "q": ("attention.self.query", "attention.q_lin"),
    "k": ("attention.self.key", "attention.k_lin"),
    "v": ("attention.self.value", "attention.v_lin"),
    "o": ("attention.output.dense", "attention.out_lin"),
    "ln1": ("attention.output.LayerNorm", "sa_layer_norm"),
    "ff1": ("intermediate.dense", "ffn.lin1"),
    "ff2": ("output.dense", "ffn.lin2"),
    "ln2": ("output.LayerNorm", "output_layer_norm"),
}


@dataclass
class TeacherWeights:
    """A BERT-family encoder + MLM head as plain float32 arrays (``W`` is ``(out, in)``)."""

    word: np.ndarray  # (teacher_vocab, d)
    position: np.ndarray  # (positions, d), type-0 embedding folded in
    emb_ln: tuple[np.ndarray, np.ndarray]
    layers: list[dict[str, np.ndarray]]  # "q.weight", "q.bias", ..., "ln2.bias"
    head_dense: tuple[np.ndarray, np.ndarray] | None
    head_ln: tuple[np.ndarray, np.ndarray] | None
    output_bias: np.ndarray | None  # (teacher_vocab,)
    n_heads: int
    activation: str

    @property
    def dim(self) -> int:
        return self.word.shape[1]


def extract_teacher_weights(model) -> TeacherWeights:
    """Read a ``BertForMaskedLM`` / ``DistilBertForMaskedLM`` (or their base models) into arrays."""
    config = model.config
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    model_type = getattr(config, "model_type", "")
    if model_type == "bert":
        kind, base = 0, "bert." if any(k.startswith("bert.") for k in state) else ""
        emb, layer_fmt = f"{base}embeddings.", f"{base}encoder.layer.{{}}."
        n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
        activation = config.hidden_act
        head = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")
    elif model_type == "distilbert":
        kind, base = 1, "distilbert." if any(k.startswith("distilbert.") for k in state) else ""
        emb, layer_fmt = f"{base}embeddings.", f"{base}transformer.layer.{{}}."
        n_layers, n_heads = config.n_layers, config.n_heads
        activation = config.activation
        head = ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias")
    else:
        raise ValueError(f"--teacher: unsupported model type {model_type!r}; supported: bert, distilbert")

    position = state[emb + "position_embeddings.weight"].copy()
    if emb + "token_type_embeddings.weight" in state:
        # BERT adds the type-0 embedding to every single-segment token; DistilBERT has none.
        position += state[emb + "token_type_embeddings.weight"][0]
    layers = []
    for i in range(n_layers):
        prefix = layer_fmt.format(i)
        layer = {}
        for name, suffixes in _LAYER_KEYS.items():
            for part in ("weight", "bias"):
                layer[f"{name}.{part}"] = state[f"{prefix}{suffixes[kind]}.{part}"]
        layers.append(layer)
    dense = (state[f"{head[0]}.weight"], state[f"{head[0]}.bias"]) if f"{head[0]}.weight" in state else None
    ln = (state[f"{head[1]}.weight"], state[f"{head[1]}.bias"]) if f"{head[1]}.weight" in state else None
    return TeacherWeights(
        word=state[emb + "word_embeddings.weight"],
        position=position,
        emb_ln=(state[emb + "LayerNorm.weight"], state[emb + "LayerNorm.bias"]),
        layers=layers,
        head_dense=dense,
        head_ln=ln,
        output_bias=state.get(head[2]),
        n_heads=n_heads,
        activation=activation if isinstance(activation, str) else "gelu",
    )


# --------------------------------------------------------------------------------------------------
# the method: grouping, reduction, embedding rows


def layer_groups(n_teacher: int, n_student: int) -> list[list[int]]:
    """Teacher layers averaged into each student layer: contiguous, as even as possible.

    >>> layer_groups(12, 3)
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    >>> layer_groups(5, 3)
    [[0, 1], [2, 3], [4]]
    >>> layer_groups(2, 3)
    [[0], [0], [1]]
    """
    if n_teacher >= n_student:
        return [g.tolist() for g in np.array_split(np.arange(n_teacher), n_student)]
    return [[k * n_teacher // n_student] for k in range(n_student)]


class Reducer:
    """Maps teacher tensors to student shapes along residual, FFN and head axes.

    The residual (hidden) axis is reduced by truncation or by a PCA projection ``P`` of shape
    ``(teacher_dim, k)``; FFN units are cropped; attention head dimensions are cropped per head.
    """

    def __init__(self, teacher_dim: int, student_dim: int, method: str, embeddings: np.ndarray | None = None):
        self.k = min(teacher_dim, student_dim)
        self.method = method
        self.projection = None
        if method == "pca":
            if embeddings is None:
                raise ValueError("PCA reduction needs the teacher embedding matrix")
            # Principal axes = eigenvectors of the covariance, accumulated in float64 over row chunks: an
            # SVD of the centred matrix would hold a float64 copy of it (0.8 GB for e5's 250K x 384 rows).
            n, d = embeddings.shape
            gram, total = np.zeros((d, d)), np.zeros(d)
            for start in range(0, n, 32768):
                chunk = embeddings[start:start + 32768].astype(np.float64)
                gram += chunk.T @ chunk
                total += chunk.sum(axis=0)
            mean = total / max(n, 1)
            _, vectors = np.linalg.eigh(gram / max(n, 1) - np.outer(mean, mean))
            self.projection = vectors[:, ::-1][:, : self.k].astype(np.float32)  # (teacher_dim, k), largest first

    def residual(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Reduce ``x`` along a residual-stream axis to ``k`` entries."""
        if self.projection is None:
            return np.take(x, np.arange(self.k), axis=axis)
        moved = np.moveaxis(x, axis, -1)
        return np.moveaxis(moved @ self.projection, -1, axis)

    def gain(self, gamma: np.ndarray) -> np.ndarray:
        """Reduce a LayerNorm gain: crop, or the diagonal of ``Pᵀ diag(γ) P`` for PCA."""
        if self.projection is None:
            return gamma[: self.k]
        return (self.projection**2).T @ gamma


def _heads_index(n_heads_t: int, head_t: int, n_heads_s: int, head_s: int) -> tuple[np.ndarray, np.ndarray]:
    """Student and teacher indices of the head-aware crop: per shared head, the shared leading dims."""
    width = min(head_t, head_s)
    heads = np.arange(min(n_heads_t, n_heads_s))
    offs = np.arange(width)
    student = (heads[:, None] * head_s + offs[None, :]).ravel()
    teacher = (heads[:, None] * head_t + offs[None, :]).ravel()
    return student, teacher


def _place(target: np.ndarray, value: np.ndarray, rows=None, cols=None) -> np.ndarray:
    """Copy ``value`` into the leading block (or the given row/column indices) of ``target``."""
    out = target.copy()
    if target.ndim == 1:
        idx = rows if rows is not None else np.arange(value.shape[0])
        out[idx] = value
        return out
    r = rows if rows is not None else np.arange(value.shape[0])
    c = cols if cols is not None else np.arange(value.shape[1])
    out[np.ix_(r, c)] = value
    return out


def embedding_sources(token_map, student_tokenizer, mode: str) -> list[np.ndarray]:
    """For each student id, the teacher ids whose rows are averaged into its embedding.

    The inverse token map, except where the token map's intersection has the same token in the teacher
    (same text and word-start flag in any tokenizer family, or the special of the same role): a student
    special always takes that teacher row (``<s>`` for ``[CLS]``), and with ``exact-first`` every
    student token that has one does.
    """
    sources = [np.asarray(ids, dtype=np.int64) for ids in token_map.student_to_teacher]
    specials = set(student_tokenizer.all_special_ids)
    same: dict[int, list[int]] = {}
    for t_id, s_id in token_map.intersection.tolist():
        same.setdefault(s_id, []).append(t_id)
    for s_id, t_ids in same.items():
        if s_id < len(sources) and (s_id in specials or mode == "exact-first"):
            sources[s_id] = np.asarray(t_ids, dtype=np.int64)
    return sources


def _mean_rows(matrix: np.ndarray, sources: list[np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means, filled)``: row ``s`` = mean of ``matrix[sources[s]]`` where ``filled[s]``, else zero."""
    out = np.zeros((n_rows, *matrix.shape[1:]), dtype=np.float32)
    filled = np.zeros(n_rows, dtype=bool)
    for s, ids in enumerate(sources[:n_rows]):
        ids = ids[ids < matrix.shape[0]]
        if ids.size:
            out[s] = matrix[ids].mean(axis=0)
            filled[s] = True
    return out, filled


def initialise_from_teacher(student, teacher: TeacherWeights, sources: list[np.ndarray], method: str
                            ) -> dict[str, Any]:
    """Overwrite ``student`` (a ``DistilBertForMaskedLM``) in place with reduced teacher weights.

    Returns:
        Facts about the initialisation for the report (groups, rows filled, partial copies).
    """
    import torch

    cfg = student.config
    params = {name: p for name, p in student.named_parameters()}
    new: dict[str, np.ndarray] = {}
    current = {name: p.detach().cpu().numpy() for name, p in params.items()}
    red = Reducer(teacher.dim, cfg.dim, method, teacher.word)
    notes: list[str] = []
    if teacher.dim < cfg.dim:
        notes.append(f"teacher hidden size {teacher.dim} < student {cfg.dim}: dims {teacher.dim}..{cfg.dim - 1} "
                     "keep their random initialisation")

    # Embeddings: word rows from the token map, positions, LayerNorm. Rows are averaged in the teacher's
    # width and reduced afterwards (the mean and both reductions are linear), so a 250K-row teacher
    # matrix is never copied whole.
    word_s = current["distilbert.embeddings.word_embeddings.weight"]  # (student_vocab, dim)
    means, has_rows = _mean_rows(teacher.word, sources, word_s.shape[0])
    rows = word_s[:, : red.k].copy()
    rows[has_rows] = red.residual(means[has_rows], axis=1)
    filled = int(has_rows.sum())
    new["distilbert.embeddings.word_embeddings.weight"] = _place(word_s, rows)
    n_pos = min(teacher.position.shape[0], cfg.max_position_embeddings)
    if n_pos < cfg.max_position_embeddings:
        notes.append(f"teacher has {teacher.position.shape[0]} positions < student {cfg.max_position_embeddings}: "
                     "the rest keep their random initialisation")
    new["distilbert.embeddings.position_embeddings.weight"] = _place(
        current["distilbert.embeddings.position_embeddings.weight"], red.residual(teacher.position[:n_pos], axis=1))

    def layer_norm(target: str, ln: tuple[np.ndarray, np.ndarray]) -> None:
        new[f"{target}.weight"] = _place(current[f"{target}.weight"], red.gain(ln[0]))
        new[f"{target}.bias"] = _place(current[f"{target}.bias"], red.residual(ln[1], axis=0))

    layer_norm("distilbert.embeddings.LayerNorm", teacher.emb_ln)

    # Layers: average groups, then reduce.
    groups = layer_groups(len(teacher.layers), cfg.n_layers)
    if len(teacher.layers) % cfg.n_layers:
        notes.append(f"teacher has {len(teacher.layers)} layers, student {cfg.n_layers}: not divisible, "
                     f"grouped as evenly as possible: {groups}")
        logger.warning(notes[-1])
    head_t = teacher.dim // teacher.n_heads
    head_s = cfg.dim // cfg.n_heads
    s_idx, t_idx = _heads_index(teacher.n_heads, head_t, cfg.n_heads, head_s)
    if cfg.n_heads != teacher.n_heads:
        notes.append(f"teacher has {teacher.n_heads} heads, student {cfg.n_heads}: the first "
                     f"{min(cfg.n_heads, teacher.n_heads)} heads are copied")
    ffn_t = teacher.layers[0]["ff1.weight"].shape[0]
    ffn_k = min(ffn_t, cfg.hidden_dim)
    for k, group in enumerate(groups):
        avg = {name: np.mean([teacher.layers[i][name] for i in group], axis=0) for name in teacher.layers[0]}
        prefix = f"distilbert.transformer.layer.{k}."
        for t_name, s_name in (("q", "attention.q_lin"), ("k", "attention.k_lin"), ("v", "attention.v_lin")):
            w = red.residual(avg[f"{t_name}.weight"], axis=1)[t_idx]  # (heads*width, k)
            new[prefix + s_name + ".weight"] = _place(current[prefix + s_name + ".weight"], w, rows=s_idx)
            new[prefix + s_name + ".bias"] = _place(current[prefix + s_name + ".bias"],
                                                   avg[f"{t_name}.bias"][t_idx], rows=s_idx)
        w = red.residual(avg["o.weight"], axis=0)[:, t_idx]  # (k, heads*width)
        new[prefix + "attention.out_lin.weight"] = _place(current[prefix + "attention.out_lin.weight"], w,
                                                          cols=s_idx)
        new[prefix + "attention.out_lin.bias"] = _place(current[prefix + "attention.out_lin.bias"],
                                                        red.residual(avg["o.bias"], axis=0))
        w = red.residual(avg["ff1.weight"][:ffn_k], axis=1)  # (ffn_k, k)
        new[prefix + "ffn.lin1.weight"] = _place(current[prefix + "ffn.lin1.weight"], w)
        new[prefix + "ffn.lin1.bias"] = _place(current[prefix + "ffn.lin1.bias"], avg["ff1.bias"][:ffn_k])
        w = red.residual(avg["ff2.weight"][:, :ffn_k], axis=0)  # (k, ffn_k)
        new[prefix + "ffn.lin2.weight"] = _place(current[prefix + "ffn.lin2.weight"], w)
        new[prefix + "ffn.lin2.bias"] = _place(current[prefix + "ffn.lin2.bias"], red.residual(avg["ff2.bias"], 0))
        layer_norm(prefix + "sa_layer_norm", (avg["ln1.weight"], avg["ln1.bias"]))
        layer_norm(prefix + "output_layer_norm", (avg["ln2.weight"], avg["ln2.bias"]))

    # MLM head: transform, LayerNorm, output bias per student token (weights tied to embeddings).
    if teacher.head_dense is not None:
        w = red.residual(red.residual(teacher.head_dense[0], axis=0), axis=1)  # (k, k)
        new["vocab_transform.weight"] = _place(current["vocab_transform.weight"], w)
        new["vocab_transform.bias"] = _place(current["vocab_transform.bias"],
                                             red.residual(teacher.head_dense[1], axis=0))
    if teacher.head_ln is not None:
        layer_norm("vocab_layer_norm", teacher.head_ln)
    bias_filled = 0
    if teacher.output_bias is not None:
        means, has_rows = _mean_rows(teacher.output_bias, sources, cfg.vocab_size)
        new["vocab_projector.bias"] = np.where(has_rows, means, current["vocab_projector.bias"])
        bias_filled = int(has_rows.sum())
    else:
        # No teacher logits to copy a prior from: a zero bias, so no token starts out favoured.
        new["vocab_projector.bias"] = np.zeros_like(current["vocab_projector.bias"])
    if teacher.head_dense is None and teacher.output_bias is None:
        mlm_head = "student"
        notes.append("the teacher has no MLM head: the student's head (vocab_transform, vocab_layer_norm) keeps "
                     "the student's own initialisation and the vocab_projector bias is zero; the projector "
                     "matrix is tied to the teacher-initialised embeddings")
    elif teacher.head_dense is None or teacher.output_bias is None or teacher.head_ln is None:
        mlm_head = "partial"
        notes.append("the teacher's MLM head is incomplete: the missing parts keep the student's own initialisation")
    else:
        mlm_head = "teacher"

    with torch.no_grad():
        for name, value in new.items():
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    for note in notes:
        logger.info(note)
    return {
        "layer_groups": groups,
        "reduce": method,
        "embedding_rows_from_teacher": filled,
        "embedding_rows_random": cfg.vocab_size - filled,
        "output_bias_rows_from_teacher": bias_filled,
        "mlm_head": mlm_head,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------------
# model card and the verb


def model_card(info: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) for a freshly initialised student."""
    cfg = info["architecture"]
    init = info["initialisation"]
    how = ("random (transformers' default initialisation; no teacher weights)" if info["init"] == "random" else
           f"from the teacher: embedding rows = mean of the mapped teacher rows ({info['embedding_sources']}), "
           f"layers averaged in groups {init.get('layer_groups')}, widths reduced by `{init.get('reduce')}`; "
           f"{init.get('embedding_rows_from_teacher', 0):,} of {cfg['vocab_size']:,} embedding rows came from "
           "the teacher")
    notes = "".join(f"- {n}\n" for n in init.get("notes", []))
    arch = (f"DistilBERT, {cfg['n_layers']} layers, hidden {cfg['dim']}, FFN {cfg['hidden_dim']}, "
            f"{cfg['n_heads']} heads, max length {cfg['max_position_embeddings']}")
    return f"""{card_front_matter()}
# {info['name']}

A DistilBERT student created by `distilrubert init-student` (not yet distilled: run `distilrubert distill`).

| | |
|---|---|
| architecture | {arch} |
| parameters | {info['parameters']:,} ({info['parameters'] / 1e6:.2f}M) |
| vocabulary | {cfg['vocab_size']:,} cased WordPiece tokens (`{info['vocab']}`) |
| teacher | `{info['teacher']}` ({info['teacher_parameters']:,} parameters, vocabulary {info['teacher_vocab_size']:,}) |
| initialisation | {how} |

{notes}
## Usage

```python
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{info['name']}")
model = AutoModel.from_pretrained("{info['name']}")
embeddings = model(**tokenizer("Привет, мир", return_tensors="pt")).last_hidden_state
```

Reproduce: `{info['command']}`
"""


def init_student(config: InitStudentConfig) -> dict[str, Any]:
    """Build the student described by ``config`` and write it as a Hugging Face model directory.

    Returns:
        The initialisation report (also written to ``init_report.json``).
    """
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from distilrubert.tokenmap import TokenMap

    output = check_output_dir(config.output, config.overwrite)
    student_tok = load_student_tokenizer(config.vocab)
    teacher, teacher_tok = load_teacher(config.teacher, config.revision, config.trust_remote_code)
    vocab_size = max(student_tok.get_vocab().values()) + 1
    weights = extract_teacher_weights(teacher)
    activation = weights.activation if weights.activation in ("gelu", "relu") else "gelu"
    if activation != weights.activation:
        logger.warning("teacher activation %r is not available in DistilBERT; the student uses gelu",
                       weights.activation)
    student_config = DistilBertConfig(
        vocab_size=vocab_size, max_position_embeddings=config.max_position_embeddings, n_layers=config.layers,
        n_heads=config.heads, dim=config.dim, hidden_dim=config.ffn, dropout=config.dropout,
        attention_dropout=config.attention_dropout, activation=activation, pad_token_id=student_tok.pad_token_id,
        architectures=["DistilBertForMaskedLM"],
    )
    torch.manual_seed(config.seed)
    student = DistilBertForMaskedLM(student_config)

    report: dict[str, Any] = {"initialisation": {}}
    if config.init == "teacher":
        family = None if config.teacher_family == "auto" else config.teacher_family
        token_map = TokenMap.from_tokenizers(teacher_tok, student_tok, family=family)
        report["token_map"] = token_map.stats()
        sources = embedding_sources(token_map, student_tok, config.embedding_sources)
        report["initialisation"] = initialise_from_teacher(student, weights, sources, config.reduce)
    student.eval()

    n_params = sum(p.numel() for p in student.parameters())
    info = {
        "name": output.name,
        "command": command_line() or f"init_student({to_dict(config)})",
        "architecture": {k: getattr(student_config, k) for k in (
            "n_layers", "dim", "hidden_dim", "n_heads", "max_position_embeddings", "vocab_size")},
        "parameters": n_params,
        "vocab": str(config.vocab),
        "teacher": config.teacher,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "teacher_vocab_size": weights.word.shape[0],
        "teacher_mlm_head": has_mlm_head(teacher),
        "init": config.init,
        "embedding_sources": config.embedding_sources,
        **report,
    }
    with atomic_output_dir(output, overwrite=config.overwrite) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer_files(config.vocab, tmp)
        (tmp / "README.md").write_text(model_card(info), encoding="utf-8")
        write_json(tmp / "init_report.json", info)
        write_json(tmp / "run.json", run_info("init-student", to_dict(config), parameters=n_params))
    logger.info("wrote %s: %s parameters (%.2fM), vocabulary %d, init %s", output, f"{n_params:,}",
                n_params / 1e6, vocab_size, config.init)
    return info


def run(config: InitStudentConfig) -> int:
    """CLI entry point of ``distilrubert init-student``."""
    init_student(config)
    return 0
