"""How closely does a student's similarity geometry follow its teacher's, on a distill run's held-out texts?

    python scripts/check_agreement.py --run OUTPUT_OF_DISTILL [--model DIR ...] [--json FILE]

Takes the held-out units of a `distill --alignment span` run (the same ones its validation losses use:
the last ``--max-valid-sequences`` of the corpus), embeds them with the run's teacher (its prompt,
pooling, normalisation) and with each model (mean pooling), and reports, per model:

* ``random_pairs``: Spearman between student and teacher cosine over random pairs of held-out texts;
* ``neighbours``: the mean over texts of the Spearman between student and teacher cosine to the text's
  ``--k`` teacher-nearest held-out neighbours (the fine ordering that paraphrase and retrieval need);
* ``top1``: how often the student's nearest held-out text is the teacher's;
* ``mean_cos``: the student's mean cosine between random pairs (anisotropy).

It reads only the training corpus's held-out split and the teacher: no labels and no evaluation data,
so it may select distillation settings. Models default to the run's output itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr


def held_out_texts(run: Path) -> tuple[list[str], dict]:
    from transformers import AutoTokenizer

    from distilrubert.data import split_train_valid
    from distilrubert.teacher_spec import read_teacher_spec
    from distilrubert.textunits import build_text_units

    info = json.loads((run / "run.json").read_text(encoding="utf-8"))["config"]
    spec = read_teacher_spec(info["teacher"])
    prompt = spec.prompt if info.get("teacher_prompt") is None else info["teacher_prompt"]
    s_tok = AutoTokenizer.from_pretrained(info["student"])
    t_tok = AutoTokenizer.from_pretrained(info["teacher"])
    units = build_text_units(info["corpus"], s_tok, t_tok, info["max_length"], info["teacher_max_length"], prompt,
                             info.get("cache_dir"), info.get("text_field"), span=info.get("alpha_hidden", 0) > 0,
                             progress=False)
    _, valid = split_train_valid(len(units), info["valid_fraction"], info["max_valid_sequences"])
    # The teacher's tokens give the text back as the teacher read it (NFC, spaces collapsed), minus the prompt.
    texts = [t_tok.decode(units.teacher_ids(int(i)), skip_special_tokens=True).removeprefix(prompt.strip()).strip()
             for i in valid]
    return texts, {"teacher": info["teacher"], "prompt": prompt, "pooling": spec.pooling, "normalize": spec.normalize}


def embed(model_dir: str, texts: list[str], prompt: str = "", pooling: str = "mean", batch: int = 64) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for begin in range(0, len(texts), batch):
            enc = tok([prompt + t for t in texts[begin:begin + batch]], padding=True, truncation=True,
                      max_length=512, return_tensors="pt")
            if model.config.model_type == "distilbert":
                enc.pop("token_type_ids", None)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append((hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)).numpy())
    vectors = np.concatenate(out)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10, seed: int = 0) -> dict[str, float]:
    n = len(teacher)
    sim_t, sim_s = teacher @ teacher.T, student @ student.T
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, 20 * n), rng.integers(0, n, 20 * n)
    keep = a != b
    a, b = a[keep], b[keep]
    np.fill_diagonal(sim_t, -np.inf)
    neighbours = np.argsort(-sim_t, axis=1)[:, :k]
    rows = [spearmanr(sim_t[i, neighbours[i]], sim_s[i, neighbours[i]]).statistic for i in range(n)]
    np.fill_diagonal(sim_s, -np.inf)
    return {"random_pairs": float(spearmanr(sim_t[a, b], sim_s[a, b]).statistic),
            "neighbours": float(np.nanmean(rows)),
            "top1": float(np.mean(sim_s.argmax(1) == sim_t.argmax(1))),
            "mean_cos": float(np.mean(sim_s[a, b]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="A `distill --alignment span` output directory.")
    parser.add_argument("--model", nargs="*", default=None, help="Models to compare (default: the run's output).")
    parser.add_argument("--k", type=int, default=10, help="Teacher-nearest neighbours per text.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument("--markdown", type=Path, default=None, help="Also write them as a markdown table here.")
    args = parser.parse_args(argv)
    texts, teacher = held_out_texts(args.run)
    t_vec = embed(teacher["teacher"], texts, teacher["prompt"], teacher["pooling"])
    results = {}
    for model in args.model or [str(args.run)]:
        results[model] = agreement(embed(model, texts), t_vec, args.k)
        print(f"{model}: " + "  ".join(f"{k} {v:.3f}" for k, v in results[model].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"texts": len(texts), "k": args.k, "results": results}, indent=2) + "\n")
    if args.markdown:
        command = "python scripts/check_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:])
        rows = [f"| `{Path(m).name}` | " + " | ".join(f"{v:.3f}" for v in r.values()) + " |"
                for m, r in results.items()]
        args.markdown.write_text(
            f"Student / teacher agreement on {len(texts)} held-out texts of `{args.run}` (the run's validation "
            f"units; k = {args.k}), from\n\n```\n{command}\n```\n\n"
            "| model | random pairs (Spearman) | within teacher top-k (Spearman) | top-1 agreement | mean cosine |\n"
            "|:--|--:|--:|--:|--:|\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
