"""The inference runtime under ``Encoder``: ONNX Runtime sessions, the torch and ONNX runners, pooling.

* :class:`Runner`: what ``Encoder`` calls (a padded batch, one text, a packed batch) and asks
  (``packing``, ``on_cpu``); :class:`TorchRunner` (transformers, SDPA or :func:`packed_attention` on the
  CPU) and :class:`OnnxRunner` (an exported graph; a second, unmasked session for single texts).
* :func:`ort_session`: every ONNX Runtime session the package creates (threads, providers, the
  optimisations it disables; see the note at ``ORT_DISABLED_OPTIMIZERS``).
* :func:`pool`, :func:`pool_packed`, :func:`pad_batch`: padding and pooling shared by the encoder,
  ``export``'s parity check and ``serve``.

``export`` depends on this module, never the reverse.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """A model that turns token ids into last hidden states."""

    packing: bool  # whether :meth:`packed` is available (torch on the CPU, packable models)
    on_cpu: bool  # mixed-length batches are then split by length when not packing

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``(batch, seq)`` ids and mask -> ``(batch, seq, dim)`` states."""

    def run_single(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One unpadded text, ``(1, seq)`` -> ``(1, seq, dim)`` (a runner may have a faster path for it)."""

    def packed(self, ids: list[list[int]]) -> np.ndarray:
        """Texts back to back without padding -> ``(total_tokens, dim)`` (only when ``packing``)."""


ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_quantized.onnx"
ONNX_SUBDIR = "onnx"

Backend = Literal["auto", "torch", "onnx"]
Pooling = Literal["cls", "mean"]


def find_onnx(model_dir: str | Path, quantized: bool = False) -> Path | None:
    """The ONNX file of an exported directory (``model.onnx`` / ``model_quantized.onnx``, or under ``onnx/``)."""
    name = ONNX_INT8_FILE if quantized else ONNX_FILE
    for candidate in (Path(model_dir) / name, Path(model_dir) / ONNX_SUBDIR / name):
        if candidate.is_file():
            return candidate
    return None


def onnxruntime_available() -> bool:
    """True when onnxruntime can be imported (the ``onnx`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """CLS or attention-mask mean pooling of token vectors.

    Args:
        hidden: ``(batch, seq, dim)`` token vectors.
        mask: ``(batch, seq)`` attention mask (1 = token, 0 = padding).
        pooling: ``"cls"`` (first token) or ``"mean"`` (mean over real tokens, as sentence-transformers does).
    """
    if pooling == "cls":
        return hidden[:, 0]  # (batch, dim)
    weights = mask[..., None].astype(hidden.dtype)  # (batch, seq, 1)
    return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)  # (batch, dim)


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest text with ``pad_id``, and the attention mask: ``(batch, seq)`` each."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)  # (batch, seq)
    mask = np.zeros((len(ids), width), dtype=np.int64)  # (batch, seq)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def pool_packed(hidden: np.ndarray, lengths: Sequence[int], pooling: Pooling) -> np.ndarray:
    """:func:`pool` for packed token vectors: ``hidden`` is ``(sum of lengths, dim)``, texts back to back."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (texts,)
    if pooling == "cls":
        return hidden[starts]  # (texts, dim)
    return np.add.reduceat(hidden, starts, axis=0) / np.asarray(lengths, dtype=hidden.dtype)[:, None]  # (texts, dim)


# ONNX Runtime's SkipLayerNormalization CPU kernel (residual Add + LayerNormalization in one op) is several
# times slower than the two ops it replaces at these widths: ``scripts/bench_ort_layernorm.py`` measures
# both. ``export`` does not make the fusion and every session the package creates disables ORT's own.
ORT_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def ort_session(path: str | Path | bytes, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ``onnxruntime.InferenceSession`` with every graph optimisation except :data:`ORT_DISABLED_OPTIMIZERS`.

    Args:
        path: The ``.onnx`` file, or a serialised model.
        threads: Intra-op threads (``None``: ONNX Runtime's default, all cores); inter-op is 1.
        providers: Execution providers (default: CPU).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=list(providers or ["CPUExecutionProvider"]),
                                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))


class TorchRunner:
    """Runs the transformers model (eager, SDPA attention; optionally ``torch.compile``)."""

    def __init__(self, model_dir: Path, device: str | None, compile: bool, trust_remote_code: bool,
                 threads: int | None = None):
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = model.to(self.device).eval()
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.input_names = {"input_ids", "attention_mask"}
        self.threads = threads
        self.packing = False
        self.on_cpu = self.device.type == "cpu"
        if not compile and self.device.type == "cpu" and getattr(model.config, "model_type", None) in _PACKABLE:
            self.packing = self._enable_packing()

    def run_single(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One text on its own: the same forward pass (packing is for batches)."""
        return self(input_ids, attention_mask)

    def _enable_packing(self) -> bool:
        """Switch the model to :func:`packed_attention`, keeping it only if packed outputs match padded ones."""
        model = self.model
        before = model.config._attn_implementation
        try:
            _register_packed_attention()
            model.set_attn_implementation(PACKED_ATTENTION)
            ids = [[2, 5, 9, 14, 3], [2, 7, 3]]  # a probe: two texts of different lengths
            ids = [[i % model.config.vocab_size for i in seq] for seq in ids]
            padded = self(*pad_batch(ids, 0))  # (2, 5, dim)
            packed = self.packed(ids)  # (8, dim)
            diff = max(float(np.abs(padded[0] - packed[:5]).max()), float(np.abs(padded[1, :3] - packed[5:]).max()))
            if diff > 1e-4:
                raise ValueError(f"packed and padded outputs differ by {diff:.2e}")
            return True
        except Exception as err:  # an architecture or transformers version that does not route the kwargs
            logger.info("packed batches disabled for %s: %s", type(model).__name__, err)
            model.set_attn_implementation(before)
            return False

    def _set_threads(self) -> None:
        # The OpenMP thread count is per calling thread: a server's worker thread would otherwise run with the
        # default (all cores) and oversubscribe.
        if self.threads and self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)

    def packed(self, ids: list[list[int]]) -> np.ndarray:
        """Token vectors of several texts run back to back as one unpadded sequence: ``(sum of lengths, dim)``."""
        torch = self.torch
        self._set_threads()
        lengths = [len(x) for x in ids]
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long, device=self.device)[None]  # (1, T)
        positions = torch.cat([torch.arange(n) for n in lengths])[None].to(self.device)  # (1, T)
        bounds = torch.tensor(np.cumsum([0, *lengths]), dtype=torch.int32)  # (texts + 1,)
        with torch.inference_mode():
            out = self.forward(input_ids=flat, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                               max_length_q=max(lengths), max_length_k=max(lengths))
            return out.last_hidden_state[0].float().cpu().numpy()  # (T, dim)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        self._set_threads()
        # fp16 autocast on CUDA (inference only; outputs are cast back to fp32); a no-op context on CPU.
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")
        with torch.inference_mode(), autocast:
            out = self.forward(input_ids=torch.from_numpy(input_ids).to(self.device),
                               attention_mask=torch.from_numpy(attention_mask).to(self.device))
            return out.last_hidden_state.float().cpu().numpy()  # (batch, seq, dim)


# Packed batches (torch backend, CPU): the texts of a batch run back to back as one sequence, without
# padding. Position ids restart at every text and the attention function below keeps each text to itself,
# so the outputs are those of the padded batch (the probe in TorchRunner checks it) while the dense
# layers, most of the work, see only real tokens. A micro-batch of 8 random sentences is half padding.
PACKED_ATTENTION = "distilrubert_packed"
_PACKABLE = ("distilbert", "bert")  # forward takes position_ids and passes attention kwargs through
# A batch whose padding would add more than this share of tokens is packed (torch) or, on a CPU without
# packing (ONNX Runtime), split into batches of similar lengths. Length-sorted corpus batches rarely are;
# a micro-batch of concurrent requests usually is.
PACK_ABOVE_PADDING = 1.2


def padding_too_costly(texts: int, longest: int, tokens: int) -> bool:
    """True when padding ``texts`` texts of ``tokens`` tokens in all to ``longest`` exceeds PACK_ABOVE_PADDING."""
    return texts * longest > PACK_ABOVE_PADDING * tokens


def packed_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                     cu_seq_lens_q=None, **kwargs):
    """A transformers attention function for packed texts.

    ``query``/``key``/``value`` are ``(1, heads, total, head_dim)`` with the texts back to back and
    ``cu_seq_lens_q`` their boundaries (``[0, n1, n1 + n2, ...]``, the name transformers' varlen flash
    attention uses). Without boundaries it is plain SDPA attention. Returns ``(1, total, heads, head_dim)``.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    bounds = cu_seq_lens_q.tolist()
    outputs = []
    for start, end in itertools.pairwise(bounds):
        # Plain matmul-softmax-matmul: at one short text and a head width of 22 it is faster on the CPU than
        # the fused SDPA kernel.
        scores = torch.matmul(query[:, :, start:end], key[:, :, start:end].transpose(-1, -2)).mul_(scaling)
        outputs.append(torch.matmul(scores.softmax(dim=-1), value[:, :, start:end]))  # (1, heads, n, head_dim)
    return torch.cat(outputs, dim=2).transpose(1, 2), None  # (1, total, heads, head_dim)


def _register_packed_attention() -> None:
    """Register :func:`packed_attention`, and SDPA's mask format for its padded calls, under one name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


# Fused attention ops and the index of their optional mask input.
_MASK_INPUT = {"Attention": 3, "QAttention": 5}
_EMBED_LAYER_NORMS = ("EmbedLayerNormalization", "QEmbedLayerNormalization")


def unmasked_graph(model) -> bytes | None:
    """The fused encoder graph without attention masking, for inputs without padding; ``None`` if unsafe.

    ``model`` is an ``onnx.ModelProto``. In an ``export`` graph the attention mask only reaches the fused
    ``(Q)Attention`` ops, through ``Cast`` and the mask-index output of ``(Q)EmbedLayerNormalization``; with no
    padding that masking changes nothing, so dropping those mask inputs gives the same outputs with less
    work (2-5% of the 5K model's one-text forward in side checks here). Any other use of the mask (an
    unfused graph, a custom head) returns ``None``.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy
    derived = {"attention_mask"}  # tensors computed from the mask
    cleared = 0
    for node in model.graph.node:  # topological order
        uses = [i for i, name in enumerate(node.input) if name in derived]
        if not uses:
            continue
        if node.op_type == "Cast":
            derived.update(node.output)
        elif node.op_type in _EMBED_LAYER_NORMS and len(node.output) > 1:
            derived.add(node.output[1])  # the mask index; the embeddings (output 0) do not depend on the mask
        elif node.op_type in _MASK_INPUT and uses == [_MASK_INPUT[node.op_type]]:
            node.input[_MASK_INPUT[node.op_type]] = ""
            cleared += 1
        else:
            return None
    if not cleared or any(name in derived for name in (o.name for o in model.graph.output)):
        return None
    return model.SerializeToString()


class OnnxRunner:
    """Runs an exported encoder graph with ONNX Runtime (CPU, or CUDA when its provider is installed).

    A second session of the same graph without attention masking (:func:`unmasked_graph`) runs single texts
    (no padding).
    """

    def __init__(self, onnx_path: Path, threads: int | None):
        import onnx
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort_session(onnx_path, threads, providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.path = onnx_path
        graph = unmasked_graph(onnx.load(str(onnx_path)))
        self.unmasked = ort_session(graph, threads, providers) if graph is not None else None
        self.on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        self.packing = False  # ONNX Runtime splits mixed-length batches instead (Encoder._batches)

    def packed(self, ids: list[list[int]]) -> np.ndarray:
        raise NotImplementedError("the ONNX runner does not pack texts (packing is False)")

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, session=None) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return (session or self.session).run(["last_hidden_state"], feed)[0]  # (batch, seq, dim)

    def run_single(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One text on its own (``Encoder.encode`` of one text): the session without masking when there is one.

        Only there: alternating two sessions (two thread pools spinning on the same cores) within a stream of
        batches, or between the batches of a length-split micro-batch, is slower than the masking it saves.
        """
        single = self.unmasked is not None and input_ids.shape[0] == 1 and attention_mask.all()
        return self(input_ids, attention_mask, self.unmasked if single else None)
