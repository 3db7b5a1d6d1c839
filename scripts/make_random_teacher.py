"""Write a randomly initialised BERT masked-LM teacher directory around an existing tokenizer.

For offline smoke tests of ``init-student`` / ``distill`` when no real teacher can be downloaded: the
weights carry no knowledge, so never judge distillation quality with it (``distilrubert pretrain``
trains a real one).

Usage:
    distilrubert build-vocab --corpus ../shared/data/corpus --vocab-size 16000 --output /tmp/v16k
    python scripts/make_random_teacher.py --tokenizer /tmp/v16k --output /tmp/teacher --layers 4 --hidden 256
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (e.g. build-vocab output)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=args.hidden,
                        num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        intermediate_size=4 * args.hidden, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"wrote {args.output}: BERT {args.layers}x{args.hidden}, vocabulary {config.vocab_size}")


if __name__ == "__main__":
    main()
