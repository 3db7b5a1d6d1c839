"""Pieces every model card of the project shares: the YAML front matter and the training tables."""

from __future__ import annotations

from typing import Any

__all__ = ["card_front_matter", "training_tables"]


def card_front_matter(*extra_tags: str) -> str:
    """The YAML header of a Hugging Face model card for a distilrubert fill-mask model."""
    tags = "".join(f"- {t}\n" for t in ("distilbert", "fill-mask", "russian", "distilrubert", *extra_tags))
    return f"---\nlanguage:\n- ru\nlibrary_name: transformers\npipeline_tag: fill-mask\ntags:\n{tags}---\n"


def training_tables(info: dict[str, Any]) -> str:
    """Markdown: the first and last logged training losses and the final validation figures of a run."""
    valid = info["validation"][-1] if info.get("validation") else {}
    first, final = info.get("first_train", {}), info.get("final_train", {})
    loss_rows = "".join(f"| {k} | {first.get(k, float('nan')):.4f} | {v:.4f} |\n" for k, v in sorted(final.items()))
    valid_rows = "".join(f"| {k} | {v:.4f} |\n" for k, v in sorted(valid.items()) if k != "step")
    return (f"## Training losses (first and last logged step)\n\n| loss | first | last |\n|---|---|---|\n{loss_rows}\n"
            f"## Final validation\n\n| metric | value |\n|---|---|\n{valid_rows}")
