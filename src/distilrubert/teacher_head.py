"""The teacher's output projection evaluated only where distillation reads it.

A masked-LM teacher computes ``logits = decoder(transform(hidden))`` at every position over its whole
vocabulary. For a 12 x 768 BERT with a 120K vocabulary that projection is about half of the forward
pass's FLOPs, and its ``(batch, length, vocab)`` fp32 output is 1.6 GB at batch 32 x 128. Distillation
reads the logits only at the aligned, non-padding positions (and, for ``match``, only the columns of
the vocabulary intersection).

:func:`teacher_forward` runs the teacher with its output projection (``get_output_embeddings()``, an
``nn.Linear``) replaced by the identity, keeps the projection's inputs at the aligned positions, and
returns a :class:`TeacherScores` that applies the projection to a block of rows (and columns) when
the loss asks for it. The result is the same matmul, so it is exact; it skips the unaligned rows and
unneeded columns and never holds ``(positions, vocab)`` logits at once. :func:`supports_lazy_head`
checks once per teacher, on a 4-token input, that the model's logits are indeed that projection of
what the patched model returns; otherwise :func:`teacher_forward` computes the full logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TeacherOutput", "TeacherScores", "as_teacher_scores", "prepare_teacher", "supports_lazy_head",
           "teacher_forward"]


class TeacherScores:
    """Teacher logits at the aligned positions (``batch["t_index"]``), materialised block by block.

    Built from the output projection's inputs (:func:`teacher_forward`) or from full logits
    (:meth:`from_logits`); :meth:`rows` returns the same values either way.

    Args:
        inputs: ``(n, d)`` inputs of the output projection at the aligned positions.
        weight: ``(vocab, d)`` projection weight.
        bias: ``(vocab,)`` projection bias or ``None``.
    """

    def __init__(self, inputs: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        self.inputs, self.weight, self.bias = inputs, weight, bias
        self._flat: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._columns: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    @classmethod
    def from_logits(cls, logits: torch.Tensor, t_index: torch.Tensor) -> TeacherScores:
        """Wrap full ``(batch, t_len, vocab)`` logits; rows are the flat positions ``t_index``."""
        out = cls(None, None, None)
        out._flat = logits.detach().reshape(-1, logits.shape[-1])  # (batch * t_len, vocab)
        out._index = t_index
        return out

    def __len__(self) -> int:
        return len(self._index) if self._flat is not None else self.inputs.shape[0]

    @property
    def vocab_size(self) -> int:
        return self._flat.shape[-1] if self._flat is not None else self.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self._flat.device if self._flat is not None else self.inputs.device

    @torch.no_grad()
    def rows(self, start: int, stop: int, columns: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """``(stop - start, vocab or len(columns))`` fp32 logits x ``scale`` of aligned rows ``start:stop``.

        The result is a new tensor the caller may modify in place.
        """
        if self._flat is not None:
            rows = self._index[start:stop]
            # A row copy, or one advanced index for a few columns (never a (c, vocab) copy then).
            out = (self._flat.index_select(0, rows) if columns is None
                   else self._flat[rows[:, None], columns[None, :]])  # (c, vocab or len(columns))
            out = out.float()
            return out.mul_(scale) if scale != 1.0 else out
        weight, bias = self._projection(columns)
        x = self.inputs[start:stop]  # (c, d)
        if bias is None:
            out = torch.mm(x, weight.t())  # (c, cols)
            if scale != 1.0:
                out.mul_(scale)
        else:
            out = torch.addmm(bias, x, weight.t(), beta=scale, alpha=scale)  # (c, cols) = scale (x W^T + b)
        return out.float()

    @torch.no_grad()
    def rows_t(self, start: int, stop: int, scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
        """The transpose of :meth:`rows` (all columns): ``(vocab, stop - start)`` fp32, written into ``out``."""
        if self._flat is not None:
            block = self._flat.index_select(0, self._index[start:stop]).t()  # (vocab, c) view of a copy
            out = block.float().contiguous() if out is None else out.copy_(block)
            return out.mul_(scale) if scale != 1.0 else out
        x = self.inputs[start:stop]  # (c, d)
        if out is not None and out.dtype != self.weight.dtype:
            out = None  # half-precision teacher: compute in its dtype, then convert
        if self.bias is None:
            result = torch.mm(self.weight, x.t(), out=out)  # (vocab, c)
            if scale != 1.0:
                result.mul_(scale)
        else:  # the scale is folded into the product: scale (W x^T + b)
            result = torch.addmm(self.bias[:, None], self.weight, x.t(), beta=scale, alpha=scale, out=out)
        return result.float()

    def _projection(self, columns: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if columns is None:
            return self.weight, self.bias
        key = (columns.data_ptr(), len(columns))
        if key not in self._columns:  # one copy of the needed rows of W per batch (the intersection: 5K x d)
            self._columns[key] = (self.weight.index_select(0, columns),
                                  None if self.bias is None else self.bias.index_select(0, columns))
        return self._columns[key]


def as_teacher_scores(teacher_logits: torch.Tensor | TeacherScores, t_index: torch.Tensor) -> TeacherScores:
    """``teacher_logits`` as :class:`TeacherScores` (full ``(batch, t_len, vocab)`` logits are wrapped)."""
    if isinstance(teacher_logits, TeacherScores):
        return teacher_logits
    return TeacherScores.from_logits(teacher_logits, t_index)


class TeacherOutput(NamedTuple):
    """What the distillation step reads from the teacher."""

    logits: TeacherScores
    hidden_states: Any
    attentions: Any


def _projection(teacher: nn.Module) -> nn.Linear | None:
    get = getattr(teacher, "get_output_embeddings", None)
    module = get() if callable(get) else None
    return module if isinstance(module, nn.Linear) else None


@contextmanager
def _identity(module: nn.Module) -> Iterator[None]:
    """Make ``module`` return its input (an instance attribute shadows the class's ``forward``)."""
    module.forward = lambda x: x
    try:
        yield
    finally:
        del module.forward


def supports_lazy_head(teacher: nn.Module) -> bool:
    """Whether the teacher's logits are its output ``Linear`` applied to what the rest of it returns.

    Checked on a 4-token input (once; the answer is remembered on the model).
    """
    cached = getattr(teacher, "_distilrubert_lazy_head", None)
    if cached is not None:
        return cached
    projection = _projection(teacher)
    ok = False
    if projection is not None:
        param = projection.weight
        ids = torch.arange(min(4, projection.out_features), device=param.device)[None]  # (1, 4)
        mask = torch.ones_like(ids)
        try:
            with torch.no_grad():
                full = teacher(input_ids=ids, attention_mask=mask).logits.float()
                with _identity(projection):
                    inner = teacher(input_ids=ids, attention_mask=mask).logits
                lazy = F.linear(inner, projection.weight, projection.bias).float()
            ok = lazy.shape == full.shape and torch.allclose(lazy, full, rtol=1e-3, atol=1e-3 * float(full.abs().max()))
        except (RuntimeError, TypeError, ValueError):
            ok = False
    teacher._distilrubert_lazy_head = ok
    return ok


def teacher_forward(teacher: nn.Module, batch: dict[str, torch.Tensor], output_hidden_states: bool = False,
                    output_attentions: bool = False) -> TeacherOutput:
    """Run the teacher (no grad) on ``batch["teacher_input_ids"]``; logits at ``batch["t_index"]`` only.

    Args:
        teacher: A masked-LM model (eval mode).
        batch: A collated batch with ``teacher_input_ids``, ``teacher_attention_mask`` and ``t_index``.
        output_hidden_states: Also return the teacher's hidden states.
        output_attentions: Also return its attention maps.

    Returns:
        A :class:`TeacherOutput` whose ``logits`` are lazy :class:`TeacherScores` when the model allows
        it (:func:`supports_lazy_head`), else wrap the full logits.
    """
    kwargs = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"],
              "output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
    with torch.no_grad():
        if not supports_lazy_head(teacher):
            out = teacher(**kwargs)
            scores = TeacherScores.from_logits(out.logits, batch["t_index"])
        else:
            projection = _projection(teacher)
            with _identity(projection):
                out = teacher(**kwargs)
            inner = out.logits  # (batch, t_len, d): the projection's inputs
            inputs = inner.reshape(-1, inner.shape[-1]).index_select(0, batch["t_index"])  # (n, d)
            scores = TeacherScores(inputs, projection.weight, projection.bias)
    return TeacherOutput(scores, out.hidden_states, out.attentions)


def prepare_teacher(teacher: Any, accelerator: Any) -> None:
    """Put the teacher on the run's device for forward passes only: eval mode, no gradients, and half
    precision on a GPU (the teacher only runs forward: it halves its memory and time)."""
    import torch

    teacher.to(accelerator.device)
    if accelerator.device.type == "cuda":
        teacher.to(torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
