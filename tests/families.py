"""Tiny teacher tokenizers of the other families, built in the test run (no downloads).

* :func:`sentencepiece_tokenizer`: an XLM-R-style fast tokenizer (Unigram model, Metaspace ``▁`` word
  starts, ``<s> $A </s>``, ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, ``<mask>`` last) whose pieces are
  the test sentences' words (with ``▁``), a few suffixes and single characters.
* :func:`byte_level_tokenizer`: a GPT-2 / RoBERTa-style byte-level BPE (``Ġ`` = a space byte) trained on
  the same sentences.
"""

from __future__ import annotations

import re

from distilrubert.tokenmap import bytes_to_unicode

from .conftest import SENTENCES

SP_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def byte_token(text: str) -> str:
    """``text`` written in GPT-2's byte alphabet, as a byte-level vocabulary stores it (`` при`` -> ``ĠÐ¿ÑĢÐ¸``)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def sentencepiece_pieces() -> list[str]:
    """The pieces of the tiny Unigram vocabulary, specials first (ids 0-3), ``<mask>`` last."""
    words = sorted({w for s in SENTENCES for w in re.findall(r"\w+", s)})
    chars = sorted({c for s in SENTENCES for c in s if not c.isspace()})
    suffixes = ["ами", "ого", "ет", "ть", "ся"]
    punctuation = [f"▁{c}" for c in chars if not c.isalnum()]
    pieces = [*SP_SPECIALS, "▁", *(f"▁{w}" for w in words), *suffixes, *chars, *punctuation]
    return [*dict.fromkeys(pieces), "<mask>"]  # unique, in order


def sentencepiece_tokenizer():
    """A ``PreTrainedTokenizerFast`` of the Unigram + Metaspace family with XLM-R's special-token roles."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = sentencepiece_pieces()
    # Longer pieces score higher, so whole words win over characters, as in a trained model.
    vocab = [(p, 0.0 if p in SP_SPECIALS or p == "<mask>" else -10.0 / (1 + len(p))) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   model_max_length=128)


def byte_level_tokenizer():
    """A ``PreTrainedTokenizerFast`` of the byte-level BPE family (RoBERTa's special-token roles)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def e5_like_teacher(out, hidden: int = 24, heads: int = 2, ffn: int = 48):
    """A tiny e5-like teacher in ``out``: a ``BertModel`` (no MLM head) with the SentencePiece tokenizer and
    sentence-transformers files (mean pooling, the ``passage: `` prompt)."""
    import torch
    from transformers import BertConfig, BertModel

    from distilrubert.teacher_import import E5_PROMPTS, write_sentence_config

    tok = sentencepiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=160, pad_token_id=1)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    write_sentence_config(out, hidden, 160, E5_PROMPTS)
    return out
