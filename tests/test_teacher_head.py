"""The teacher's output projection at aligned positions only: same logits as the full forward."""

from __future__ import annotations

import torch
from torch import nn

from distilrubert.teacher_head import TeacherScores, as_teacher_scores, supports_lazy_head, teacher_forward


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"teacher_input_ids": ids, "teacher_attention_mask": mask, "t_index": torch.tensor([0, 3, 6, 7, 11])}


def _check_same_as_full_forward(model: nn.Module) -> None:
    vocab = model.config.vocab_size
    batch = _batch(vocab)
    assert supports_lazy_head(model)
    out = teacher_forward(model, batch, output_hidden_states=True)
    assert out.logits.inputs is not None  # the lazy path
    with torch.no_grad():
        full = model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                     output_hidden_states=True)
    expected = full.logits.reshape(-1, vocab)[batch["t_index"]]  # (5, vocab)
    assert torch.allclose(out.logits.rows(0, 5), expected, atol=1e-5)
    assert torch.allclose(out.logits.rows(1, 4, scale=0.5), expected[1:4] * 0.5, atol=1e-5)
    columns = torch.tensor([3, 1, vocab - 1])
    assert torch.allclose(out.logits.rows(2, 5, columns=columns), expected[2:5][:, columns], atol=1e-5)
    assert len(out.hidden_states) == len(full.hidden_states)
    assert torch.allclose(out.hidden_states[-1], full.hidden_states[-1])
    # The full-logits wrapper gives the same rows.
    wrapped = as_teacher_scores(full.logits, batch["t_index"])
    assert torch.allclose(wrapped.rows(2, 5, columns=columns, scale=0.5), expected[2:5][:, columns] * 0.5)
    assert len(wrapped) == 5 and wrapped.vocab_size == vocab
    for scores in (out.logits, wrapped):  # the transposed layout, into a caller's buffer or not
        assert torch.allclose(scores.rows_t(1, 4, scale=0.5), expected[1:4].t() * 0.5, atol=1e-5)
        buffer = torch.empty(vocab, 2)
        assert scores.rows_t(3, 5, out=buffer).data_ptr() == buffer.data_ptr()
        assert torch.allclose(buffer, expected[3:5].t(), atol=1e-5)


def test_lazy_head_of_a_bert_teacher_equals_the_full_logits(teacher_dir):
    from transformers import AutoModelForMaskedLM

    _check_same_as_full_forward(AutoModelForMaskedLM.from_pretrained(str(teacher_dir)).eval())


def test_lazy_head_of_a_distilbert_teacher_equals_the_full_logits(tiny_student_dir):
    from transformers import AutoModelForMaskedLM

    _check_same_as_full_forward(AutoModelForMaskedLM.from_pretrained(str(tiny_student_dir)).eval())


class _ScaledHead(nn.Module):
    """A masked LM whose logits are NOT its output Linear of what it returns (a post-projection scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.decoder = nn.Linear(4, 11)

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False):
        from transformers.modeling_outputs import MaskedLMOutput

        return MaskedLMOutput(logits=self.decoder(self.embed(input_ids)) * 3.0)


def test_teacher_whose_logits_are_not_the_projection_falls_back_to_full_logits():
    model = _ScaledHead()
    assert not supports_lazy_head(model)
    batch = _batch(11)
    out = teacher_forward(model, batch)
    assert out.logits.inputs is None  # wrapped full logits
    with torch.no_grad():
        expected = model(batch["teacher_input_ids"]).logits.reshape(-1, 11)[batch["t_index"]]
    assert torch.allclose(out.logits.rows(0, 5), expected)
    assert model.decoder.forward.__func__ is nn.Linear.forward  # the patch is undone


def test_scores_from_projection_inputs():
    generator = torch.Generator().manual_seed(1)
    inputs, weight, bias = (torch.randn(6, 3, generator=generator), torch.randn(9, 3, generator=generator),
                            torch.randn(9, generator=generator))
    scores = TeacherScores(inputs, weight, bias)
    expected = inputs @ weight.t() + bias  # (6, 9)
    assert torch.allclose(scores.rows(1, 4, scale=0.25), expected[1:4] / 4, atol=1e-6)
    columns = torch.tensor([8, 0])
    assert torch.allclose(scores.rows(0, 6, columns=columns), expected[:, columns], atol=1e-6)
    no_bias = TeacherScores(inputs, weight, None)
    assert torch.allclose(no_bias.rows(0, 2, scale=2.0), 2 * (inputs[:2] @ weight.t()), atol=1e-6)
    assert torch.allclose(no_bias.rows_t(0, 2, scale=2.0), 2 * (inputs[:2] @ weight.t()).t(), atol=1e-6)
    assert torch.allclose(scores.rows_t(2, 6), expected[2:6].t(), atol=1e-6)
