"""``Encoder``: sentence embeddings at CPU speed, from a model directory, with torch or ONNX Runtime.

What makes it fast compared with the model card's ``AutoModel`` loop:

* texts are tokenized once, sorted by token length and cut into batches, so a batch is padded only to
  its own longest text (never to 512), then the output order is restored;
* on the CPU, a batch that would still be mostly padding is packed (torch: texts back to back, see
  :func:`packed_attention`) or split into batches of similar lengths (ONNX Runtime);
* ``backend="onnx"`` runs the graph ONNX Runtime's transformer optimizer fused (EmbedLayerNormalization,
  Attention, BiasGelu; not SkipLayerNormalization), optionally dynamically quantised to int8
  (``quantized=True``);
* thread count is explicit (``threads=``), because on a small CPU the default oversubscribes;
* by default (``backend="auto"``) it runs ONNX Runtime, int8 when the int8 graph keeps a mean cosine of
  at least 0.99 to fp32, exporting a plain model directory once into the ONNX cache
  (:mod:`distilrubert.onnx_cache`).

Example:
    >>> enc = Encoder.from_pretrained("student/", backend="onnx")  # doctest: +SKIP
    >>> enc.encode(["Привет!", "Как дела?"], pooling="mean", normalize=True).shape  # doctest: +SKIP
    (2, 264)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distilrubert.runtime import (
    ONNX_INT8_FILE,
    Backend,
    OnnxRunner,
    Pooling,
    Runner,
    TorchRunner,
    find_onnx,
    onnxruntime_available,
    pad_batch,
    padding_too_costly,
    pool,
    pool_packed,
)

logger = logging.getLogger(__name__)

class Encoder:
    """Embeds texts with a DistilBERT/BERT encoder, batching by length to avoid padding.

    Build it with :meth:`from_pretrained`; call :meth:`encode`.
    """

    def __init__(self, tokenizer, runner: Runner, backend: str, max_length: int, model_dir: Path):
        self.tokenizer = tokenizer
        self.runner = runner
        self.backend = backend
        self.max_length = max_length
        self.model_dir = model_dir
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, backend: Backend = "auto",
                        quantized: bool | None = None, threads: int | None = None, max_length: int = 512,
                        device: str | None = None, compile: bool = False, trust_remote_code: bool = False) -> Encoder:
        """Load an encoder from a model directory (HF format, an ``export`` output, or both).

        Args:
            model_dir: Directory with ``config.json`` and a tokenizer, plus weights and/or ``model.onnx``;
                ``None``: the embedded reference student (``models/``, see :mod:`distilrubert.reference`).
            backend: ``"auto"`` (default): ONNX Runtime when it is installed (and neither ``compile`` nor a
                non-CPU ``device`` asks for torch), else torch. ``"onnx"``: ONNX Runtime. ``"torch"``:
                transformers (SDPA attention). A directory without an exported graph is exported once into
                the ONNX cache (:mod:`distilrubert.onnx_cache`: keyed by the model's content, reused by
                every later call and process).
            quantized: ``None`` (default): int8 when the directory has an int8 graph, or for a cached
                export when int8 kept a mean cosine >= 0.99 to fp32 on the built-in sentences; else fp32.
                ``True`` / ``False``: int8 / fp32 ONNX. Only ``None`` or ``False`` with torch.
            threads: Intra-op threads (ONNX session option; ``torch.set_num_threads`` for torch, which is
                process-wide). ``None`` keeps the library default.
            max_length: Texts are truncated to this many tokens (also capped by the model's positions).
            device: Torch device (default: CUDA when available, else CPU).
            compile: Torch backend only: wrap the model in ``torch.compile`` (slow first call).
            trust_remote_code: Passed to transformers; keep ``False`` unless you trust the directory.

        Raises:
            FileNotFoundError: ``model_dir`` is missing.
            ValueError: an unknown backend, or ``quantized=True`` with torch.
        """
        from transformers import AutoConfig, AutoTokenizer

        if model_dir is None:
            from distilrubert.reference import reference_model

            model_dir = reference_model("student")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
        if backend == "torch" and quantized:
            raise ValueError("quantized=True needs backend='onnx' (int8 exists only as an ONNX graph)")
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        positions = getattr(config, "max_position_embeddings", max_length) or max_length
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        limit = min(max_length, positions)
        if backend == "auto":
            wants_torch = compile or (device is not None and not str(device).startswith("cpu"))
            backend = "onnx" if onnxruntime_available() and not wants_torch else "torch"
        if backend == "onnx":
            try:
                path, int8 = _onnx_graph(model_dir, quantized, trust_remote_code)
            except Exception as err:  # an architecture the exporter cannot take: torch still can
                if quantized is not None:
                    raise
                logger.warning("%s: no ONNX graph (%s: %s); using torch", model_dir, type(err).__name__, err)
            else:
                return cls(tokenizer, OnnxRunner(path, threads), "onnx-int8" if int8 else "onnx", limit, model_dir)
        if threads:
            import torch

            torch.set_num_threads(threads)
        runner = TorchRunner(model_dir, device, compile, trust_remote_code, threads)
        return cls(tokenizer, runner, "torch-compile" if compile else "torch", limit, model_dir)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (with special tokens), truncated to ``max_length``, unpadded."""
        fast = self._fast_tokenizer()
        if fast is not None:  # the Rust tokenizer directly, without the wrapper's per-call setup
            # encode_batch_fast (tokenizers >= 0.21) skips the character offsets: the same ids, ~15% sooner
            encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
            return [e.ids for e in encode(list(texts))]
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"]

    def _fast_tokenizer(self):
        """A copy of the fast tokenizer's backend set to truncate at ``max_length`` without padding (cached)."""
        if not hasattr(self, "_fast"):
            self._fast = None
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None:
                from tokenizers import Tokenizer

                fast = Tokenizer.from_str(backend.to_str())
                fast.no_padding()
                fast.enable_truncation(self.max_length)
                self._fast = fast
        return self._fast

    def _pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        return pad_batch(ids, self.pad_id)

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, pooling: Pooling = "cls",
               normalize: bool = False, sort: bool = True, show_progress: bool = False) -> np.ndarray:
        """Embed texts; returns ``(len(texts), dim)`` float32 in the input order.

        Args:
            texts: One string or a sequence of strings.
            batch_size: Texts per forward pass (after sorting by length).
            pooling: ``"cls"`` or ``"mean"`` (attention-mask mean, sentence-transformers' default).
            normalize: L2-normalise each vector.
            sort: Sort by token length before batching (turn off only to measure what it saves).
            show_progress: Show a tqdm bar over batches.
        """
        if isinstance(texts, str):
            texts = [texts]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if len(texts) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        ids = self.tokenize(texts)
        if len(ids) == 1:  # one text (the latency path): no sorting, padding or scatter
            input_ids = np.array(ids, dtype=np.int64)  # (1, seq)
            mask = np.ones_like(input_ids)
            out = np.array(pool(self.runner.run_single(input_ids, mask), mask, pooling), dtype=np.float32)  # a copy
            if normalize:
                out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
            return out
        order = np.argsort([len(x) for x in ids], kind="stable") if sort else np.arange(len(ids))
        out: np.ndarray | None = None
        packing = self.runner.packing
        split = not packing and self.runner.on_cpu
        batches = self._batches(order, [len(x) for x in ids], batch_size, split=split)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode", unit="batch")
        for index in batches:
            batch = [ids[i] for i in index]
            lengths = [len(x) for x in batch]
            if packing and padding_too_costly(len(batch), max(lengths), sum(lengths)):
                vectors = pool_packed(self.runner.packed(batch), lengths, pooling)  # (batch, dim)
            else:
                input_ids, mask = self._pad(batch)
                vectors = pool(self.runner(input_ids, mask), mask, pooling)  # (batch, dim)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[index] = vectors
        if normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    @staticmethod
    def _batches(order: np.ndarray, lengths: list[int], batch_size: int, split: bool) -> list[np.ndarray]:
        """``order`` cut into batches of at most ``batch_size`` texts; with ``split``, also wherever the next
        text would pad the batch beyond :data:`PACK_ABOVE_PADDING` times its tokens.

        On a CPU a padded token costs as much as a real one and a batch gains little over single texts, so a
        mixed-length micro-batch (concurrent requests) runs faster as a few batches of similar lengths.
        Length-sorted corpus batches are rarely split.
        """
        if not split:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        batches, start, longest, tokens = [], 0, 0, 0
        for end, i in enumerate(order):
            n = lengths[i]
            size = end - start
            if size and (size == batch_size or padding_too_costly(size + 1, max(longest, n), tokens + n)):
                batches.append(order[start:end])
                start, longest, tokens = end, 0, 0
            longest, tokens = max(longest, n), tokens + n
        batches.append(order[start:])
        return batches

    def __repr__(self) -> str:
        return f"Encoder({str(self.model_dir)!r}, backend={self.backend!r}, max_length={self.max_length})"


def _onnx_graph(model_dir: Path, quantized: bool | None, trust_remote_code: bool) -> tuple[Path, bool]:
    """``(graph, is_int8)``: the directory's own exported graph, else the ONNX cache's (exported once).

    With ``quantized=None`` a directory's own int8 graph is taken when its ``parity.json`` (written by
    ``distilrubert export``) shows it passed, else its fp32 graph.
    """
    from distilrubert.onnx_cache import cached_export, int8_passes

    if quantized is None:
        int8_ok = find_onnx(model_dir, True) is not None and int8_passes(model_dir)
        own = find_onnx(model_dir, True) if int8_ok else find_onnx(model_dir, False)
    else:
        own = find_onnx(model_dir, quantized)
    if own is not None:
        return own, own.name == ONNX_INT8_FILE

    cache = cached_export(model_dir, trust_remote_code=trust_remote_code)
    int8 = int8_passes(cache) if quantized is None else quantized
    if quantized is None and not int8:
        logger.info("%s: int8 lost too much against fp32 (parity.json in %s): using fp32", model_dir, cache)
    return find_onnx(cache, int8), int8
