"""``export``: ONNX graphs (encoder or fine-tuned head), ORT graph fusion, dynamic int8, parity report.

Pipeline: ``torch.onnx.export`` of the transformers model loaded with *eager* attention (its
MatMul/Softmax pattern is what ONNX Runtime's transformer optimizer fuses into one ``Attention`` op;
the SDPA path exports to a pattern it does not recognise), dynamic batch and sequence axes ->
``onnxruntime.transformers.optimizer`` (Attention, BiasGelu, EmbedLayerNorm fusions; not SkipLayerNorm) ->
optionally ``quantize_dynamic`` (int8 weights, activations quantised per call) -> a parity check on a
sentence file: max |torch - onnx fp32| over real tokens and the mean cosine of mean-pooled int8 vs fp32
embeddings, printed and stored in ``parity.json``.

``--format sentence-transformers`` instead writes a directory that
``sentence_transformers.SentenceTransformer(DIR)`` loads offline (Transformer + mean Pooling).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from distilrubert import runinfo
from distilrubert.config import option, to_dict
from distilrubert.runtime import ONNX_FILE, ONNX_INT8_FILE, ort_session, pool
from distilrubert.vocab import save_pretrained_tokenizer

logger = logging.getLogger(__name__)

Task = Literal["auto", "encoder", "fill-mask", "sequence-classification", "token-classification"]

# Used when --sentences is not given: a handful of conversational sentences for the parity check.
DEFAULT_SENTENCES = (
    "Привет! Как дела?",
    "Я редко слышал, чтобы он называл её каким-либо другим именем.",
    "Поезд прибывает на второй путь через пять минут.",
    "Ну что, поехали?",
    "Компьютер не включается после обновления системы, что делать?",
    "Мама приготовила вкусный борщ со сметаной, а на ужин будет каша.",
    "Спокойной ночи!",
    "Сколько стоит билет до Казани и обратно, если ехать в пятницу вечером?",
)


@dataclass
class ExportConfig:
    """Options of ``distilrubert export``."""

    model: str = option(help="Model directory (HF format: config.json, weights, tokenizer).", metavar="DIR")
    output: str = option(help="Output directory.", metavar="DIR")
    format: Literal["onnx", "sentence-transformers"] = option("onnx", "What to write.")
    task: Task = option("auto", "Graph to export: the encoder, or a head (auto: a fine-tuned "
                        "classification/NER head if the model has one, else the encoder).")
    quantize: Literal["none", "int8"] = option("none", "Also write a dynamically quantised int8 graph.")
    optimize: bool = option(True, "Fuse the graph with onnxruntime's transformer optimizer.")
    opset: int = option(17, "ONNX opset.")
    sentences: str | None = option(None, "Text file (one sentence a line) for the parity check "
                                   "(default: a few built-in sentences).", metavar="FILE")
    max_length: int = option(128, "Max tokens per sentence in the parity check / sentence-transformers.")
    overwrite: bool = option(False, "Replace a non-empty output directory.")
    trust_remote_code: bool = option(False, "Allow custom model code from the model directory.")

    def __post_init__(self) -> None:
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"--model {self.model}: not a model directory (no config.json)")
        if self.sentences and not Path(self.sentences).is_file():
            raise ValueError(f"--sentences {self.sentences}: no such file")
        if not 7 <= self.opset <= 23:
            raise ValueError(f"--opset must be in 7..23, got {self.opset}")
        if self.max_length < 8:
            raise ValueError(f"--max-length must be >= 8, got {self.max_length}")
        if self.format == "sentence-transformers" and self.quantize != "none":
            raise ValueError("--quantize applies to --format onnx only")


def resolve_task(config, task: str = "auto") -> str:
    """``auto`` -> the task of the model's head (from ``config.architectures``), else ``encoder``."""
    if task != "auto":
        return task
    names = " ".join(getattr(config, "architectures", None) or [])
    if "ForSequenceClassification" in names:
        return "sequence-classification"
    if "ForTokenClassification" in names:
        return "token-classification"
    return "encoder"


def load_model(model_dir: str | Path, task: str, trust_remote_code: bool = False, attn: str = "eager"):
    """The transformers model for ``task``, fp32, eval mode, with the given attention implementation."""
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    cls = {"encoder": AutoModel, "fill-mask": AutoModelForMaskedLM,
           "sequence-classification": AutoModelForSequenceClassification,
           "token-classification": AutoModelForTokenClassification}[task]
    model = cls.from_pretrained(model_dir, attn_implementation=attn, trust_remote_code=trust_remote_code)
    return model.float().eval()


def _output_name(task: str) -> str:
    return "last_hidden_state" if task == "encoder" else "logits"


def export_graph(model, path: Path, task: str, opset: int = 17) -> None:
    """``torch.onnx.export`` with inputs ``input_ids``, ``attention_mask`` and dynamic batch/sequence axes."""
    import torch

    name = _output_name(task)

    class _Graph(torch.nn.Module):
        # A thin wrapper so the graph has exactly two inputs and one named output (read by attribute).
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), name)

    ids = torch.full((2, 16), 5, dtype=torch.long)  # (batch, seq) dummy; axes are dynamic
    mask = torch.ones_like(ids)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            name: {0: "batch", 1: "sequence"} if task != "sequence-classification" else {0: "batch"}}
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(_Graph(model), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=[name], dynamic_axes=axes, opset_version=opset, dynamo=False)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's optimizer and quantiser log one INFO line per fusion/tensor; keep WARNING and above."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def optimize_graph(src: Path, dst: Path, model_config) -> dict[str, int]:
    """Fuse the graph with onnxruntime's transformer optimizer; returns the counts of fused operators."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(model_config, "num_attention_heads", None) or model_config.n_heads
    hidden = getattr(model_config, "hidden_size", None) or model_config.dim
    # DistilBERT and BERT share the "bert" fusion patterns. No SkipLayerNormalization: its CPU kernel is
    # slower than the Add + LayerNormalization it replaces (see encoder.ORT_DISABLED_OPTIMIZERS).
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    with _quiet_root_logger():
        optimized = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                                   optimization_options=options)
    optimized.save_model_to_file(str(dst))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def quantize_graph(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of MatMul/Attention weights (activations quantised at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        # DefaultTensorType: fused contrib ops (Attention, BiasGelu) have no shape-inference types.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_encoder_onnx(model_dir: str | Path, out_dir: str | Path, quantize: bool = False, task: str = "auto",
                        optimize: bool = True, opset: int = 17, trust_remote_code: bool = False) -> dict:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (and ``model_quantized.onnx``), plus config and tokenizer.

    Returns:
        ``{"fp32": Path, "int8": Path | None, "task": str, "fused": {op: count}}``.
    """
    from transformers import AutoConfig, AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    task = resolve_task(config, task)
    model = load_model(model_dir, task, trust_remote_code)
    fp32 = out_dir / ONNX_FILE
    raw = out_dir / "model_raw.onnx" if optimize else fp32
    logger.info("exporting %s (%s) to ONNX", model_dir, task)
    export_graph(model, raw, task, opset)
    fused: dict[str, int] = {}
    if optimize:
        fused = optimize_graph(raw, fp32, config)
        raw.unlink()
        logger.info("fused operators: %s", fused)
    int8 = None
    if quantize:
        int8 = out_dir / ONNX_INT8_FILE
        quantize_graph(fp32, int8)
    model.config.save_pretrained(out_dir)
    save_pretrained_tokenizer(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code), out_dir)
    return {"fp32": fp32, "int8": int8, "task": task, "fused": fused}


def read_sentences(path: str | Path | None) -> list[str]:
    """Non-empty lines of a UTF-8 text file, or the built-in sentences when ``path`` is None."""
    if path is None:
        return list(DEFAULT_SENTENCES)
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise ValueError(f"{path}: no sentences (the file is empty)")
    return texts


def _session(path: Path):
    return ort_session(path)


def parity_check(model_dir: str | Path, fp32: Path, int8: Path | None, task: str, sentences: list[str],
                 max_length: int = 128, batch_size: int = 16, trust_remote_code: bool = False) -> dict:
    """Compare torch vs ONNX fp32 (max abs diff over real tokens) and int8 vs fp32 (cosine / agreement)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, task, trust_remote_code, attn="sdpa")
    sessions = {"fp32": _session(fp32), **({"int8": _session(int8)} if int8 else {})}
    name = _output_name(task)
    max_diff, cosines, agree, total = 0.0, [], 0, 0
    for start in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[start : start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="np", return_token_type_ids=False)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        with torch.inference_mode():
            ref = getattr(model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)), name).numpy()
        outs = {k: s.run([name], {"input_ids": ids, "attention_mask": mask})[0] for k, s in sessions.items()}
        real = mask.astype(bool) if ref.ndim == 3 else np.ones(ref.shape[0], dtype=bool)  # padding is not compared
        max_diff = max(max_diff, float(np.abs(outs["fp32"] - ref)[real].max()))
        if "int8" in outs:
            if task == "encoder":
                a, b = pool(outs["fp32"], mask, "mean"), pool(outs["int8"], mask, "mean")  # (batch, dim)
                cosines += list((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
            else:
                same = outs["fp32"].argmax(-1) == outs["int8"].argmax(-1)
                agree += int(same[real].sum())
                total += int(real.sum())
    report = {"task": task, "sentences": len(sentences), "max_abs_diff_fp32_vs_torch": max_diff}
    if int8 is not None:
        if task == "encoder":
            report["mean_cosine_int8_vs_fp32"] = float(np.mean(cosines))
            report["min_cosine_int8_vs_fp32"] = float(np.min(cosines))
        else:
            report["argmax_agreement_int8_vs_fp32"] = agree / max(total, 1)
    return report


def write_sentence_transformers(model_dir: str | Path, out_dir: Path, max_length: int,
                                trust_remote_code: bool = False) -> None:
    """Write the encoder, tokenizer and sentence-transformers module files (Transformer + mean Pooling)."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_pretrained_tokenizer(AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code), out_dir)
    dim = getattr(model.config, "hidden_size", None) or model.config.dim
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    runinfo.write_json(out_dir / "modules.json", modules)
    runinfo.write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    runinfo.write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True,
    })
    runinfo.write_json(out_dir / "config_sentence_transformers.json",
                       {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def run(config: ExportConfig) -> int:
    """Entry point of ``distilrubert export``."""
    with runinfo.atomic_output_dir(config.output, config.overwrite) as tmp:
        if config.format == "sentence-transformers":
            write_sentence_transformers(config.model, tmp, config.max_length, config.trust_remote_code)
            runinfo.write_json(tmp / "run.json", runinfo.run_info("export", to_dict(config)))
            print(f"sentence-transformers model written to {config.output} (mean pooling, "
                  f"max_seq_length {config.max_length})")
            return 0
        result = export_encoder_onnx(config.model, tmp, quantize=config.quantize == "int8", task=config.task,
                                     optimize=config.optimize, opset=config.opset,
                                     trust_remote_code=config.trust_remote_code)
        report = parity_check(config.model, result["fp32"], result["int8"], result["task"],
                              read_sentences(config.sentences), config.max_length,
                              trust_remote_code=config.trust_remote_code)
        report["fused_operators"] = result["fused"]
        report["sentences_file"] = config.sentences or "built-in"
        runinfo.write_json(tmp / "parity.json", report)
        runinfo.write_json(tmp / "run.json", runinfo.run_info("export", to_dict(config), parity=report))
        sizes = {p.name: p.stat().st_size for p in (result["fp32"], result["int8"]) if p}
    print(json.dumps({"output": config.output, "files_bytes": sizes, **report}, ensure_ascii=False, indent=2))
    return 0


__all__ = ["ExportConfig", "export_encoder_onnx", "parity_check", "run", "write_sentence_transformers"]
