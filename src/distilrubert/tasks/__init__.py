"""Downstream tasks of the paper: readers for their original formats, metrics, and fine-tuning.

Modules:
    readers: RuSentiment / SentiRuEval CSV, ParaPhraser XML and CSV, CoNLL (IOB2), SQuAD v1.1 JSON,
        generic CSV/JSONL, and the factRuEval character-span -> IOB2 converter.
    metrics: SQuAD EM/F1 (official normalisation, offline), weighted/binary F1, seqeval entity F1.
    finetune: the ``distilrubert finetune`` verb on transformers' ``AutoModelFor...`` classes.
"""
