"""Distillation losses as pure functions of tensors (REFERENCE 2.3).

* :func:`mlm_loss`: cross-entropy of the student's masked-token predictions.
* :func:`kl_div`: ``KL(teacher || student)`` at temperature ``T``, multiplied by ``T**2`` so its
  gradient scale does not shrink as ``T`` grows (Hinton et al. 2015, "Distilling the knowledge in a
  neural network", section 2; the HF DistilBERT distiller does the same).
* :func:`kl_div_topk`: the same KL when only the teacher's top-k log-probabilities are known (the
  teacher-output cache).
* :func:`hidden_loss`: MSE or cosine distance between projected student and teacher hidden states.
* :func:`layer_pairs`: which student hidden state meets which teacher hidden state(s).
* :func:`attention_mse`: MSE between attention maps.

The loop sums them with the ``alpha_*`` weights; nothing here knows about alignments or batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LAYER_STRATEGIES", "attention_mse", "hidden_loss", "kl_div", "kl_div_topk", "kl_log_probs", "layer_pairs",
           "mean_states", "mlm_loss", "model_layers", "model_width", "parse_layer_pairs", "relation_loss",
           "sentence_loss"]

LAYER_STRATEGIES = ("average_all", "skip", "average", "last")


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not ``-100``.

    Args:
        logits: ``(..., vocab)`` student logits.
        labels: ``(...)`` target ids, ``-100`` where no prediction is asked.

    Returns:
        A scalar; ``0`` (with a gradient path) when no position is labelled.
    """
    flat_labels = labels.reshape(-1)  # (n,)
    if not bool((flat_labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=-100)


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
           reduction: str = "mean") -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T**2``, summed over the last axis, averaged over rows.

    Both inputs are logits over the *same* support (columns). Columns set to ``-inf`` in both are
    excluded from the support (their probability is zero on both sides).

    Args:
        student_logits: ``(n, support)`` student scores.
        teacher_logits: ``(n, support)`` teacher scores.
        temperature: Softening temperature ``T``.
        reduction: ``"mean"`` over rows, or ``"sum"``.

    Example:
        >>> s = torch.tensor([[0.0, 0.0]]); t = torch.tensor([[0.0, 0.0]])
        >>> float(kl_div(s, t))
        0.0
    """
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (n, support)
    t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (n, support)
    return kl_log_probs(s_logp, t_logp, temperature, reduction)


def kl_log_probs(student_logp: torch.Tensor, teacher_logp: torch.Tensor, temperature: float = 2.0,
                 reduction: str = "mean") -> torch.Tensor:
    """``sum_v p_t(v) (log p_t(v) - log p_s(v)) * T**2`` from log-probabilities already softened by ``T``.

    Args:
        student_logp: ``(n, support)`` student log-probabilities (normalised over the support).
        teacher_logp: ``(n, support)`` teacher log-probabilities (normalised over the support).
        temperature: ``T``; only the ``T**2`` factor is applied.
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (per row).
    """
    teacher_logp = teacher_logp.detach()
    t_p = teacher_logp.exp()  # (n, support)
    # KL = sum p log p - sum p log q. Where p = 0 a term is 0 (-inf columns: avoid 0 * inf = nan); the
    # teacher part carries no gradient, so only the cheap p * log q product is on the backward path.
    entropy_part = torch.where(t_p > 0, t_p * teacher_logp, torch.zeros_like(t_p)).sum(-1)  # (n,)
    if bool(torch.isneginf(student_logp.detach()).any()):
        student_logp = student_logp.masked_fill(t_p == 0, 0.0)
    per_row = (entropy_part - (t_p * student_logp).sum(-1)) * temperature**2  # (n,)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def kl_div_topk(student_logp: torch.Tensor, teacher_topk_logp: torch.Tensor,
                temperature: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """KL on the support of a cached top-k teacher distribution (``x T**2``).

    The teacher's top-k probabilities are renormalised to sum to one, and so must be the student's
    log-probabilities over the same k tokens (the callers take a log-softmax over the k gathered
    scores): ``sum_k p~_k (log p~_k - log q~_k)``. It equals the full KL when the teacher's mass
    outside its top-k is zero; otherwise it ignores where the student puts its mass outside those k
    tokens (the MLM loss and the uncached steps still shape that part).

    Args:
        student_logp: ``(n, k)`` student log-probabilities renormalised over the teacher's top-k ids.
        teacher_topk_logp: ``(n, k)`` teacher log-probabilities at temperature ``T`` (any normalisation).
        temperature: ``T`` (only the ``T**2`` factor is applied here; both inputs are already softened).
        reduction: ``"mean"`` over rows, or ``"sum"``.
    """
    t_logp = F.log_softmax(teacher_topk_logp.float(), dim=-1)  # (n, k) renormalised over the top-k
    return kl_log_probs(student_logp.float(), t_logp, temperature, reduction)


def hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between (already projected) student states and teacher states at the same positions.

    Args:
        student_hidden: ``(n, dim)`` projected student states.
        teacher_hidden: ``(n, dim)`` teacher states.
        kind: ``"mse"`` (mean over positions and dimensions) or ``"cosine"`` (mean of ``1 - cos``).
    """
    if student_hidden.shape[0] == 0:
        return student_hidden.sum() * 0.0
    student_hidden = student_hidden.float()
    teacher_hidden = teacher_hidden.float()
    if kind == "mse":
        return F.mse_loss(student_hidden, teacher_hidden)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)).mean()
    raise ValueError(f"--hidden-loss: unknown kind {kind!r} (mse, cosine)")


def sentence_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between projected student sentence embeddings and the teacher's, ``(batch, dim)`` each.

    ``cosine``: mean of ``1 - cos``; ``mse``: mean squared error (of the vectors as given).

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> round(float(sentence_loss(a, torch.tensor([[2.0, 0.0], [1.0, 0.0]]))), 4)  # cos 1 and 0
    0.5
    """
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher.to(student.dtype))
    raise ValueError(f"--sentence-loss: unknown kind {kind!r} (expected cosine or mse)")


def relation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """In-batch similarity distillation: KL between row-softmaxed cosine-similarity matrices.

    Row ``i`` of each ``(batch, batch)`` matrix holds text ``i``'s cosine similarity to the other texts of
    the batch (the diagonal is left out), softmaxed at ``temperature``; the loss is
    ``mean_i KL(p_teacher_i || p_student_i)``. Widths may differ: only each side's own geometry is compared.
    A batch of one text has no relations: the loss is 0.
    """
    n = student.shape[0]
    if n < 2:
        return student.new_zeros(())
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.to(student.dtype), dim=-1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)
    s_sim = (s @ s.T)[off_diagonal].view(n, n - 1) / temperature  # (batch, batch - 1)
    t_sim = (t @ t.T)[off_diagonal].view(n, n - 1) / temperature
    return F.kl_div(F.log_softmax(s_sim, dim=-1), F.log_softmax(t_sim, dim=-1), log_target=True,
                    reduction="batchmean")


def attention_mse(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between attention maps of the same shape ``(batch, heads, n, n)``, over unmasked entries.

    Args:
        student_attention: ``(batch, heads, n, n)`` attention probabilities.
        teacher_attention: ``(batch, heads, n, n)``.
        mask: ``(batch, n)`` bool, the valid rows/columns; ``None`` = all.
    """
    diff = (student_attention.float() - teacher_attention.float()) ** 2  # (batch, heads, n, n)
    if mask is None:
        return diff.mean()
    pair = (mask[:, :, None] & mask[:, None, :])[:, None].expand_as(diff)  # (batch, heads, n, n)
    if not bool(pair.any()):
        return diff.sum() * 0.0
    return diff[pair].mean()


def parse_layer_pairs(text: str) -> list[tuple[int, list[int]]]:
    """Parse explicit pairs ``"0:0,1:4,2:8,3:12"`` (student state : teacher state, ``4+5`` = their mean)."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        left, sep, right = item.partition(":")
        if not sep:
            raise ValueError(f"--layer-mapping: {item!r} is not STUDENT:TEACHER (e.g. 1:4 or 1:1+2+3+4)")
        try:
            pairs.append((int(left), [int(x) for x in right.split("+")]))
        except ValueError as err:
            raise ValueError(f"--layer-mapping: {item!r} has a non-integer layer index") from err
    if not pairs:
        raise ValueError("--layer-mapping: no pairs given")
    return pairs


def layer_pairs(strategy: str, n_student: int, n_teacher: int) -> list[tuple[list[int], list[int]]]:
    """Which hidden states meet, as ``(student states, teacher states)`` pairs; each side is averaged.

    Hidden state 0 is the embedding output, state ``i`` the output of layer ``i`` (transformers'
    ``output_hidden_states`` convention), so a model with ``n`` layers has ``n + 1`` states.

    Strategies (REFERENCE 2.3): ``average_all`` (mean of all states of each model: one pair); ``skip``
    (student ``k`` to teacher ``k * n_teacher / n_student``); ``average`` (student ``k`` to the mean of
    the teacher layers it replaces; embeddings to embeddings); ``last`` (the student's states to the
    teacher's last ``n_student + 1`` states); otherwise explicit pairs ``"0:0,1:4,2:8,3:12"``.

    >>> layer_pairs("skip", 3, 12)
    [([0], [0]), ([1], [4]), ([2], [8]), ([3], [12])]
    >>> layer_pairs("average", 3, 12)[1]
    ([1], [1, 2, 3, 4])
    """
    if strategy == "average_all":
        return [(list(range(n_student + 1)), list(range(n_teacher + 1)))]
    if strategy == "skip":
        return [([k], [round(k * n_teacher / n_student)]) for k in range(n_student + 1)]
    if strategy == "average":
        pairs = [([0], [0])]
        for k in range(1, n_student + 1):
            lo = round((k - 1) * n_teacher / n_student) + 1
            hi = max(lo, round(k * n_teacher / n_student))
            pairs.append(([k], list(range(lo, hi + 1))))
        return pairs
    if strategy == "last":
        offset = max(0, n_teacher - n_student)
        return [([k], [min(n_teacher, k + offset)]) for k in range(n_student + 1)]
    pairs = []
    for s, teachers in parse_layer_pairs(strategy):
        if not 0 <= s <= n_student or any(not 0 <= t <= n_teacher for t in teachers):
            raise ValueError(f"--layer-mapping: pair {s}:{'+'.join(map(str, teachers))} is out of range "
                             f"(student states 0..{n_student}, teacher states 0..{n_teacher})")
        pairs.append(([s], teachers))
    return pairs


def model_width(config) -> int:
    """Hidden size of a BERT-style (``hidden_size``) or DistilBERT (``dim``) config."""
    return int(getattr(config, "hidden_size", None) or config.dim)


def model_layers(config) -> int:
    """Transformer layers of a BERT-style (``num_hidden_layers``) or DistilBERT (``n_layers``) config."""
    return int(getattr(config, "num_hidden_layers", None) or config.n_layers)


def mean_states(states, which: list[int]) -> torch.Tensor:
    """The mean of the hidden states ``which`` (one side of a :func:`layer_pairs` pair)."""
    out = states[which[0]]
    for k in which[1:]:
        out = out + states[k]
    return out / len(which)
