"""What a model directory gives under the installed transformers: token ids and outputs, as JSON.

    python scripts/compat_fingerprint.py DIR [DIR ...] > fingerprint.json

For each directory: the tokenizer's ids for a few texts (NFC and NFD forms of ``ё`` / ``й``, Latin,
punctuation), ``AutoModel``'s last hidden state and, when the config names a task head, that head's
output (``AutoModelForMaskedLM`` / ``...SequenceClassification`` / ``...TokenClassification`` /
``...QuestionAnswering``); a sentence-transformers directory (``modules.json``) is also encoded with
``SentenceTransformer``. Run it under two environments (transformers 4.x and 5.x) and compare:
``tests/test_compat.py`` does, when ``DISTILRUBERT_COMPAT_PYTHON`` names the other environment's python.
Only the standard library, torch and the HF packages are imported, so it runs in a bare environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEXTS = [
    "Привет, как дела? Всё хорошо!",
    "Ёжик и йогурт: съёмка в 10:30.",
    "Е\u0308жик и и\u0306огурт",  # NFD: must tokenise like the line above's words
    "Hello, world — DistilRuBERT tiny 5k.",
]
HEADS = {"ForMaskedLM": "AutoModelForMaskedLM", "ForSequenceClassification": "AutoModelForSequenceClassification",
         "ForTokenClassification": "AutoModelForTokenClassification",
         "ForQuestionAnswering": "AutoModelForQuestionAnswering"}


def _rounded(array) -> list:
    return [[round(float(v), 5) for v in row] for row in array.reshape(array.shape[0], -1)[:, :64]]


def fingerprint(directory: Path) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    out: dict = {"transformers": transformers.__version__}
    tok = AutoTokenizer.from_pretrained(str(directory))
    out["ids"] = [tok(t)["input_ids"] for t in TEXTS]
    if not (directory / "config.json").is_file() or not any(
            (directory / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        return out  # a tokenizer directory (build-vocab)
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    config = AutoConfig.from_pretrained(str(directory))
    if config.model_type == "distilbert":
        enc.pop("token_type_ids", None)
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(str(directory)).eval()(**enc).last_hidden_state
        out["hidden"] = _rounded(hidden[:, 0].numpy())
        names = " ".join(config.architectures or [])
        for suffix, auto in HEADS.items():
            if suffix in names:
                model = getattr(transformers, auto).from_pretrained(str(directory)).eval()
                result = model(**enc)
                first = result.logits if hasattr(result, "logits") else result.start_logits
                out["head"] = {"class": auto, "values": _rounded(first[:, :4].numpy())}
    if (directory / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        out["sentence_transformers"] = _rounded(SentenceTransformer(str(directory), device="cpu").encode(TEXTS[:2]))
    return out


def main(argv: list[str]) -> int:
    results = {}
    for name in argv:
        try:
            results[name] = fingerprint(Path(name))
        except Exception as err:  # reported per directory, so one failure does not hide the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
    json.dump(results, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
