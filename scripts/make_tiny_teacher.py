"""Create a small randomly initialised BERT masked-LM directory to stand in for a teacher.

Used by the docs' measured runs (docs/tasks.md, docs/evaluation.md) to build a student with
``distilrubert init-student --init random`` and to exercise ``distilrubert evaluate --teacher``
without the real (hub-only) teacher. Its weights are random: it is not a useful teacher.

    python scripts/make_tiny_teacher.py --tokenizer /tmp/h4/tv8k --output /tmp/h4/teacher
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="Tokenizer directory (from build-vocab).")
    parser.add_argument("--output", required=True, help="Output model directory.")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=max(tokenizer.get_vocab().values()) + 1, hidden_size=args.hidden,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads, intermediate_size=args.ffn,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"wrote {args.output}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
