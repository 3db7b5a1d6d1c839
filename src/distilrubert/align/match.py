"""``match``: monotonic greedy matching of identical token strings; the KL over the vocabulary intersection.

The student side is its own masked pass at the matched positions (:func:`match_positions`); both
distributions are renormalised over the tokens the two vocabularies share.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distilrubert.align.base import Alignment
from distilrubert.align.positions import match_positions_ids
from distilrubert.losses import kl_div_topk, kl_log_probs
from distilrubert.teacher_head import as_teacher_scores

__all__ = ["MatchAlignment"]


class MatchAlignment(Alignment):
    """``match``: identical tokens, KL over the vocabulary intersection, the student's masked pass."""

    name = "match"

    def __init__(self, token_map, student_pad_id: int) -> None:
        super().__init__(token_map, student_pad_id)
        inter = token_map.intersection  # (n, 2) teacher id, student id
        if len(inter) == 0:
            raise ValueError("--alignment match: the teacher and student vocabularies share no token")
        self.teacher_to_shared = np.full(len(token_map.teacher_tokens), -1, dtype=np.int64)
        self.teacher_to_shared[inter[:, 0]] = inter[:, 1]
        self.inter_teacher = torch.as_tensor(inter[:, 0])
        self.inter_student = torch.as_tensor(inter[:, 1])

    def to(self, device: torch.device) -> MatchAlignment:
        self.inter_teacher = self.inter_teacher.to(device)
        self.inter_student = self.inter_student.to(device)
        return self

    def collate(self, teacher_seqs, student_seqs, teacher_width, student_width):
        t_index, s_index = [], []
        for b, (t_ids, s_ids) in enumerate(zip(teacher_seqs, student_seqs, strict=True)):
            for i, j in match_positions_ids(t_ids, s_ids, self.teacher_to_shared):
                t_index.append(b * teacher_width + i)
                s_index.append(b * student_width + j)
        return {"t_index": np.asarray(t_index, dtype=np.int64), "s_index": np.asarray(s_index, dtype=np.int64)}

    def teacher_row_count(self, teacher_ids, student_ids):
        return len(match_positions_ids(teacher_ids, student_ids, self.teacher_to_shared))

    def keep_rows(self, extra, keep):
        return {**extra, "t_index": extra["t_index"][keep], "s_index": extra["s_index"][keep]}

    def student_outputs(self, student, batch, masked_outputs, output_hidden_states, output_attentions=False):
        return masked_outputs

    def support_size(self) -> int:
        return len(self.inter_teacher)

    def _teacher_support_logits(self, batch, teacher_logits):
        scores = as_teacher_scores(teacher_logits, batch["t_index"])
        # Only the intersection's columns: from the lazy head, a (n, d) x (d, support) product.
        return scores.rows(0, len(scores), columns=self.inter_teacher)  # (n, support)

    def _student_support_logits(self, batch, student_logits):
        rows = student_logits.reshape(-1, student_logits.shape[-1])[batch["s_index"]]  # (n, student_vocab)
        return rows[:, self.inter_student]  # (n, support)

    def kl(self, batch, student_logits, teacher_logits, temperature):
        s_rows = self._student_support_logits(batch, student_logits)  # (n, support)
        t_rows = self._teacher_support_logits(batch, teacher_logits)  # (n, support)
        if s_rows.shape[0] == 0:
            return student_logits.sum() * 0.0
        s_logp = F.log_softmax(s_rows.float() / temperature, dim=-1)  # (n, support)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)  # (n, support)
        return kl_log_probs(s_logp, t_logp, temperature)

    def teacher_topk(self, batch, teacher_logits, temperature, k):
        t_rows = self._teacher_support_logits(batch, teacher_logits)  # (n, support)
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)  # (n, support)
        values, ids = t_logp.topk(min(k, t_logp.shape[-1]), dim=-1)  # (n, k)
        return ids, values

    def kl_topk(self, batch, student_logits, topk_ids, topk_logp, temperature):
        s_rows = self._student_support_logits(batch, student_logits)  # (n, support)
        if s_rows.shape[0] == 0:
            return student_logits.sum() * 0.0
        # Both distributions renormalised over the teacher's top-k (the cached support).
        s_logp = F.log_softmax(s_rows.float().gather(1, topk_ids) / temperature, dim=-1)  # (n, k)
        return kl_div_topk(s_logp, topk_logp, temperature)

    def student_rows(self, batch, hidden):
        return hidden.reshape(-1, hidden.shape[-1])[batch["s_index"]]
