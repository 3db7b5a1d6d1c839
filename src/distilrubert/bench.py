"""``bench``: CPU/GPU speed of encoders side by side, replacing transformers' removed PyTorchBenchmark.

For every model (a model directory, or an architecture preset with random weights: speed does not
depend on the weights) and every backend (``torch`` eager, ``torch-compile``, ``onnx`` fp32 fused,
``onnx-int8``) it measures, in one process and one run:

* latency (batch 1) and throughput (batch N) of the forward pass on synthetic ids, for given sequence
  lengths: warm-up, then repeats (min and median), within a time budget;
* the encodechka protocol: ms per text, one text at a time (tokenize + forward + copy out, max length
  128) over a sentence file, through :class:`~distilrubert.encoder.Encoder`;
* corpus throughput: texts/s embedding the sentence file repeated to ``--corpus-size`` texts
  (length-sorted batches), and the share of the fp32 matmul limit: achieved model FLOP/s divided by a
  GEMM FLOP/s measured in the same run;
* peak resident memory above the process's baseline while the backend ran.

Per model, the reference is plain transformers eager PyTorch as the model card uses it: one text at a
time, and unsorted padded batches of 32. Ratios to it are in the output. Hardware, versions, thread
count and load average (other processes skew timings) are recorded. Output: ``bench.json``,
``bench.md``, ``bench.png`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distilrubert import runinfo
from distilrubert.bench_report import chart, markdown
from distilrubert.config import option, to_dict
from distilrubert.vocab import save_pretrained_tokenizer

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnx", "onnx-int8")
# Architecture presets (REFERENCE.md section 4); weights are random (see build_preset), speed does not depend
# on their values.
PRESETS: dict[str, tuple[str, dict]] = {
    "distilrubert-tiny-5k": ("distilbert", {"vocab_size": 5000, "dim": 264, "hidden_dim": 792, "n_layers": 3,
                                            "n_heads": 12, "max_position_embeddings": 512}),
    "distilrubert-tiny-v1": ("distilbert", {"vocab_size": 30522, "dim": 264, "hidden_dim": 792, "n_layers": 3,
                                            "n_heads": 12, "max_position_embeddings": 512}),
    "rubert-tiny": ("bert", {"vocab_size": 29564, "hidden_size": 312, "intermediate_size": 600,
                             "num_hidden_layers": 3, "num_attention_heads": 12, "max_position_embeddings": 512}),
    "rubert-tiny2": ("bert", {"vocab_size": 83828, "hidden_size": 312, "intermediate_size": 600,
                              "num_hidden_layers": 3, "num_attention_heads": 12, "max_position_embeddings": 2048}),
    "teacher": ("bert", {"vocab_size": 119547, "hidden_size": 768, "intermediate_size": 3072,
                         "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 512}),
}
# Development checkout layout: <repo>/../shared/data (see DEVELOPERS.md); users pass the flags instead.
_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_SENTENCES = _SHARED / "encodechka" / "sentences_sample.txt"
DEFAULT_TOKENIZER_CORPUS = _SHARED / "corpus" / "fortunes_ru.jsonl"


@dataclass
class BenchConfig:
    """Options of ``distilrubert bench``."""

    output: str = option(help="Output directory (bench.json, bench.md, bench.png, run.json).", metavar="DIR")
    models: list[str] = option(["distilrubert-tiny-5k"], "Model directories and/or presets: "
                               + ", ".join(PRESETS) + ".")
    backends: list[str] = option(["torch", "onnx", "onnx-int8"], "Backends: " + ", ".join(BACKENDS) + ".")
    sentences: str = option(str(DEFAULT_SENTENCES), "Sentence file (one a line) for the encodechka protocol "
                            "and corpus throughput.", metavar="FILE")
    tokenizer: str | None = option(None, "Tokenizer directory for presets (default: a 5,000-token cased "
                                   "WordPiece trained on --tokenizer-corpus).", metavar="DIR")
    tokenizer_corpus: list[str] = option([], "Corpus files for the presets' tokenizer (default: the shared "
                                         "fortunes corpus if present, else --sentences).")
    seq_lengths: list[int] = option([32, 128], "Sequence lengths for latency/throughput.")
    batch_size: int = option(16, "Batch size of the throughput measurement (latency uses batch 1).")
    corpus_size: int = option(3000, "Texts in the corpus-throughput run (the sentence file repeated).")
    corpus_batch_size: int = option(32, "Batch size of the Encoder in the corpus-throughput run (its default; "
                                    "length-sorted, so batches are barely padded).")
    max_length: int = option(128, "Max tokens per text (encodechka uses 128).")
    warmup: int = option(2, "Warm-up calls before each timed measurement.")
    repeats: int = option(5, "Timed repeats of each latency/throughput measurement (fewer past --budget).")
    budget: float = option(6.0, "Seconds per measurement; long models measure fewer texts/repeats.")
    threads: int | None = option(None, "Threads (torch and onnxruntime intra-op); default: all CPUs.")
    seed: int = option(0, "Seed of the random weights and ids.")
    overwrite: bool = option(False, "Replace a non-empty output directory.")

    def __post_init__(self) -> None:
        # "--models a,b" and "--models a b" mean the same (list[str] options are not split by the CLI).
        self.models = [part for item in self.models for part in str(item).split(",") if part.strip()]
        self.backends = [part for item in self.backends for part in str(item).split(",") if part.strip()]
        if not self.models or not self.backends:
            raise ValueError("--models and --backends need at least one entry")
        for name in self.models:
            if name not in PRESETS and not (Path(name) / "config.json").is_file():
                raise ValueError(f"--models: {name!r} is neither a preset ({', '.join(PRESETS)}) "
                                 "nor a model directory with config.json")
        for backend in self.backends:
            if backend not in BACKENDS:
                raise ValueError(f"--backends: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if not Path(self.sentences).is_file():
            raise ValueError(f"--sentences {self.sentences}: no such file")
        if self.tokenizer and not Path(self.tokenizer).is_dir():
            raise ValueError(f"--tokenizer {self.tokenizer}: no such directory")
        for path in self.tokenizer_corpus:
            if not Path(path).exists():
                raise ValueError(f"--tokenizer-corpus {path}: no such file")
        if not self.seq_lengths or min(self.seq_lengths) < 4:
            raise ValueError("--seq-lengths must be >= 4")
        for flag, value in (("--batch-size", self.batch_size), ("--corpus-size", self.corpus_size),
                            ("--corpus-batch-size", self.corpus_batch_size), ("--repeats", self.repeats)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.max_length < 8:
            raise ValueError(f"--max-length must be >= 8, got {self.max_length}")
        if self.budget <= 0:
            raise ValueError(f"--budget must be > 0, got {self.budget}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


# ---------------------------------------------------------------------------------------------- helpers
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakRSS:
    """Peak resident memory of the process above its RSS at ``__enter__``, in MB.

    On Linux the kernel's high-water mark is reset (``/proc/self/clear_refs``) and read back
    (``VmHWM``), so nothing runs during the measurement: a sampling thread would steal a core from
    the threads being timed. Elsewhere, only the RSS at exit is seen.
    """

    def __enter__(self) -> PeakRSS:
        import ctypes
        import ctypes.util

        import psutil

        gc.collect()
        # Give freed heap back to the OS so the baseline is not inflated by the previous backend (glibc only).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self.process.memory_info().rss
        if self.hwm:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, budget: float) -> dict:
    """Warm-up, then up to ``repeats`` timed calls (at least 1, stopping early past ``budget`` seconds).

    Warm-up stops after one call when that call alone took over a quarter of the budget (large models).
    """
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > budget / 4:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return {"min_ms": 1000 * min(times), "median_ms": 1000 * statistics.median(times), "repeats": len(times)}


def gemm_flops(threads: int, seconds: float = 1.5) -> dict:
    """Measured fp32 matmul FLOP/s (torch/oneDNN/MKL GEMM): a square 1024 GEMM and a model-shaped one."""
    import torch

    torch.set_num_threads(threads)
    results = {}
    for name, (m, k, n) in {"square_1024": (1024, 1024, 1024), "tokens2048_x_264_x_792": (2048, 264, 792)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        results[name] = 2 * m * k * n / best
    return {"flops": max(results.values()), "by_shape": results}


def _dims(config) -> tuple[int, int, int]:
    """(hidden, ffn, layers) of a BERT or DistilBERT config."""
    if config.model_type == "distilbert":
        return config.dim, config.hidden_dim, config.n_layers
    return config.hidden_size, config.intermediate_size, config.num_hidden_layers


def model_flops(config, n_tokens: int) -> float:
    """Forward FLOPs of the encoder for one text of ``n_tokens``: dense layers + attention scores/mixing."""
    d, f, layers = _dims(config)
    dense = 2 * (4 * d * d + 2 * d * f) * n_tokens  # Q, K, V, O projections and the two FFN matrices
    attention = 2 * 2 * n_tokens * n_tokens * d  # QK^T and attention @ V
    return float(layers * (dense + attention))


def dense_flop_per_token(config) -> float:
    """FLOPs per token of the dense layers alone (the issue's "~4.2 MFLOP per token" for the 5k shape)."""
    d, f, layers = _dims(config)
    return float(layers * 2 * (4 * d * d + 2 * d * f))


def read_texts(path: str | Path) -> list[str]:
    texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--sentences {path}: the file has no sentences")
    return texts


def preset_tokenizer(config: BenchConfig, workdir: Path):
    """The presets' tokenizer: ``--tokenizer``, or a 5,000-token cased WordPiece trained on a corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, BertTokenizerFast

    from distilrubert.corpus import Corpus

    if config.tokenizer:
        return AutoTokenizer.from_pretrained(config.tokenizer)
    files = config.tokenizer_corpus or (
        [str(DEFAULT_TOKENIZER_CORPUS)] if DEFAULT_TOKENIZER_CORPUS.is_file() else [config.sentences])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(iter(Corpus(files)), trainers.WordPieceTrainer(
        vocab_size=5000, special_tokens=specials, show_progress=False))
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    hf = BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, unk_token="[UNK]", pad_token="[PAD]",
                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    save_pretrained_tokenizer(hf, workdir / "preset-tokenizer")
    return hf


def build_preset(name: str, tokenizer, workdir: Path, seed: int) -> Path:
    """Save a random-weight model of preset ``name`` with ``tokenizer`` to ``workdir/name``."""
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    kind, shape = PRESETS[name]
    if len(tokenizer) > shape["vocab_size"]:
        raise ValueError(f"--tokenizer has {len(tokenizer)} tokens, more than preset {name}'s {shape['vocab_size']}")
    torch.manual_seed(seed)
    config_cls, model_cls = (DistilBertConfig, DistilBertModel) if kind == "distilbert" else (BertConfig, BertModel)
    model = model_cls(config_cls(pad_token_id=tokenizer.pad_token_id, **shape))
    # transformers initialises every LayerNorm to (1, 0) and every bias to 0, so a fresh model has many identical
    # tensors, which a trained model never has. ONNX Runtime's optimizer merges identical initializers and the
    # int8 quantiser then dequantises the shared one at run time, a cost no trained model pays. Jitter them.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # LayerNorm weights and biases, linear biases
                param.add_(torch.randn_like(param) * 0.02)
    out = workdir / name
    model.save_pretrained(out)
    save_pretrained_tokenizer(tokenizer, out)
    return out


def per_text(fn: Callable[[str], object], texts: list[str], budget: float, warmup: int = 5) -> dict:
    """The encodechka protocol: ``fn`` on one text at a time; mean/median ms per text within ``budget``."""
    for text in texts[:warmup]:
        fn(text)
    times: list[float] = []
    start = time.perf_counter()
    for text in texts:
        if len(times) >= 10 and time.perf_counter() - start > budget:
            break
        t0 = time.perf_counter()
        fn(text)
        _sync()
        times.append(time.perf_counter() - t0)
    return {"ms_per_text": 1000 * sum(times) / len(times), "median_ms": 1000 * statistics.median(times),
            "texts": len(times)}


def corpus_texts(sentences: list[str], size: int, eager_ms_per_text: float, budget: float) -> list[str]:
    """The sentence file repeated to ``size`` texts, fewer for slow models so a run fits the budget.

    The count is set once per model from the eager one-text-at-a-time speed (the slowest path; batched
    eager is about 2x faster) so that every backend of a model embeds the same texts, and the eager
    baseline's corpus run takes about ``4 * budget`` seconds at most. Multiples of 64, at least 64.
    """
    affordable = int(4 * budget * 2 * 1000 / max(eager_ms_per_text, 1e-3)) // 64 * 64
    n = min(size, max(64, affordable))
    return (sentences * (n // len(sentences) + 1))[:n]


def corpus_throughput(fn: Callable[[list[str]], object], texts: list[str], warm: list[str]) -> dict:
    """Texts/s of one timed ``fn(texts)`` call after a warm-up call on ``warm``."""
    fn(warm)
    t0 = time.perf_counter()
    fn(texts)
    _sync()
    elapsed = time.perf_counter() - t0
    return {"texts": len(texts), "seconds": elapsed, "texts_per_s": len(texts) / elapsed}


def _corpus_flops(tokenizer, config, texts: list[str], max_length: int) -> float:
    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return sum(model_flops(config, n) for n in lengths)


def _eager_model(model_dir: Path, cfg: BenchConfig):
    """Plain transformers as the model card uses it: the tokenizer, the eager model and its ``embed(texts)``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).to(device).eval()

    def embed(texts):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        with torch.no_grad():
            out = model(**{k: v.to(device) for k, v in enc.items()})
        return out.last_hidden_state[:, 0].cpu().numpy()  # (batch, dim)

    return tokenizer, model, embed


def eager_baseline(model_dir: Path, sentences: list[str], cfg: BenchConfig) -> tuple[dict, list[str]]:
    """Plain transformers eager PyTorch as the model card uses it (one text at a time; unsorted batches of 32)."""
    gc.collect()
    with PeakRSS() as mem:
        tokenizer, model, embed = _eager_model(model_dir, cfg)

        def unsorted_batches(texts):
            for start in range(0, len(texts), 32):
                embed(texts[start : start + 32])

        one = per_text(embed, sentences, cfg.budget)
        texts = corpus_texts(sentences, cfg.corpus_size, one["ms_per_text"], cfg.budget)
        corpus = corpus_throughput(unsorted_batches, texts, sentences[:32])
        corpus["flops_per_s"] = _corpus_flops(tokenizer, model.config, texts, cfg.max_length) / corpus["seconds"]
    return {"encodechka": one, "corpus": corpus, "peak_rss_mb": mem.peak_mb}, texts


def eager_one_text_again(model_dir: Path, sentences: list[str], cfg: BenchConfig) -> dict:
    """The eager one-text-at-a-time reference timed a second time (after the backends)."""
    gc.collect()
    _, _, embed = _eager_model(model_dir, cfg)
    return per_text(embed, sentences, cfg.budget)


def use_faster_eager(baseline: dict, again: dict) -> None:
    """Keep both eager one-text runs and make the faster one the reference of every "x vs eager".

    The reference is timed alone, so a slow spell of a shared machine during it would inflate every ratio
    of the model; the faster of a run before and a run after the backends cannot make them look better.
    """
    baseline["encodechka_runs"] = [baseline["encodechka"], again]
    baseline["encodechka"] = min(baseline["encodechka_runs"], key=lambda run: run["ms_per_text"])


def bench_backend(model_dir: Path, onnx_dir: Path | None, backend: str, sentences: list[str], texts: list[str],
                  cfg: BenchConfig, threads: int) -> dict:
    """Synthetic latency/throughput, encodechka ms/text and corpus texts/s of one backend via ``Encoder``."""
    from distilrubert.encoder import Encoder

    gc.collect()
    rng = np.random.default_rng(cfg.seed)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if backend.startswith("torch"):
            enc = Encoder.from_pretrained(model_dir, backend="torch", threads=threads, max_length=cfg.max_length,
                                          compile=backend == "torch-compile")
        else:
            enc = Encoder.from_pretrained(onnx_dir, backend="onnx", quantized=backend == "onnx-int8",
                                          threads=threads, max_length=cfg.max_length)
        result: dict = {"load_s": time.perf_counter() - t0, "synthetic": []}
        config = enc.runner.model.config if backend.startswith("torch") else _config(model_dir)
        high = min(len(enc.tokenizer), config.vocab_size)
        for seq in cfg.seq_lengths:
            seq = min(seq, config.max_position_embeddings)
            for batch in sorted({1, cfg.batch_size}):
                ids = rng.integers(5, high, (batch, seq), dtype=np.int64)  # (batch, seq)
                mask = np.ones_like(ids)  # (batch, seq)
                timing = time_calls(lambda ids=ids, mask=mask: enc.runner(ids, mask), cfg.warmup, cfg.repeats,
                                    cfg.budget)
                timing.update(seq=seq, batch=batch, texts_per_s=batch / (timing["median_ms"] / 1000),
                              flops_per_s=batch * model_flops(config, seq) / (timing["median_ms"] / 1000))
                result["synthetic"].append(timing)
        result["encodechka"] = per_text(lambda text: enc.encode([text], batch_size=1), sentences, cfg.budget)
        corpus = corpus_throughput(lambda t: enc.encode(t, batch_size=cfg.corpus_batch_size), texts,
                                   sentences[: cfg.corpus_batch_size])
        corpus["flops_per_s"] = _corpus_flops(enc.tokenizer, config, texts, cfg.max_length) / corpus["seconds"]
        result["corpus"] = corpus
    result["peak_rss_mb"] = mem.peak_mb
    return result


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(path, "np") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += int(np.prod(handle.get_slice(key).get_shape()))
    return total


def _config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def hardware() -> dict:
    """CPU model, core count, GPU (if any)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def benchmark(cfg: BenchConfig) -> dict:
    """Run every measurement of ``cfg``; returns the report (also what ``bench.json`` holds)."""
    import torch
    from tqdm.auto import tqdm

    from distilrubert.export import export_encoder_onnx, parity_check

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    sentences = read_texts(cfg.sentences)
    started = time.perf_counter()
    report: dict = {"hardware": hardware(), "threads": threads, "loadavg_start": _loadavg(),
                    "versions": runinfo.package_versions(extra=("onnxruntime", "onnx", "optimum")),
                    "settings": to_dict(cfg), "sentences": len(sentences)}
    gemm_start = gemm_flops(threads)
    workdir = Path(tempfile.mkdtemp(prefix="distilrubert-bench-"))
    tokenizer = None
    models = []
    steps = tqdm(total=len(cfg.models) * (len(cfg.backends) + 1), desc="bench", unit="run")
    try:
        for name in cfg.models:
            if name in PRESETS:
                tokenizer = tokenizer or preset_tokenizer(cfg, workdir)
                model_dir = build_preset(name, tokenizer, workdir, cfg.seed)
            else:
                model_dir = Path(name)
            config = _config(model_dir)
            entry: dict = {"model": name, "source": "preset (random weights)" if name in PRESETS else "directory",
                           "model_type": config.model_type, "backends": {}}
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            lengths = [len(x) for x in tok(sentences, truncation=True, max_length=cfg.max_length)["input_ids"]]
            entry["tokens_per_text"] = float(np.mean(lengths))
            entry["flop_per_text"] = float(np.mean([model_flops(config, n) for n in lengths]))
            entry["flop_per_token_dense"] = dense_flop_per_token(config)
            entry["parameters"] = _parameters(model_dir)
            steps.set_postfix_str(f"{name} eager baseline")
            entry["baseline"], texts = eager_baseline(model_dir, sentences, cfg)
            steps.update()
            onnx_dir = None
            if any(b.startswith("onnx") for b in cfg.backends):
                t0 = time.perf_counter()
                onnx_dir = workdir / f"{Path(name).name}-onnx"
                paths = export_encoder_onnx(model_dir, onnx_dir, quantize="onnx-int8" in cfg.backends, task="encoder")
                parity = parity_check(model_dir, paths["fp32"], paths["int8"], "encoder", sentences[:64],
                                      cfg.max_length)
                entry["export"] = {"seconds": time.perf_counter() - t0, "fused": paths["fused"], **parity}
            for backend in cfg.backends:
                steps.set_postfix_str(f"{name} {backend}")
                try:
                    entry["backends"][backend] = bench_backend(model_dir, onnx_dir, backend, sentences, texts,
                                                                cfg, threads)
                except Exception as err:  # a backend that does not work here (e.g. torch.compile) is reported
                    logger.warning("%s / %s failed: %s", name, backend, err)
                    entry["backends"][backend] = {"error": f"{type(err).__name__}: {err}"}
                steps.update()
            steps.set_postfix_str(f"{name} eager baseline again")
            use_faster_eager(entry["baseline"], eager_one_text_again(model_dir, sentences, cfg))
            models.append(entry)
    finally:
        steps.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    gemm_end = gemm_flops(threads)
    gemm = max(gemm_start["flops"], gemm_end["flops"])
    report["gemm"] = {"fp32_flops": gemm, "start": gemm_start, "end": gemm_end}
    for entry in models:
        _ratios(entry, gemm)
    report["models"] = models
    report["loadavg_end"] = _loadavg()
    report["wall_seconds"] = time.perf_counter() - started
    return report


def _ratios(entry: dict, gemm: float) -> None:
    base = entry["baseline"]
    base["corpus"]["pct_fp32_matmul_limit"] = 100 * base["corpus"]["flops_per_s"] / gemm
    for result in entry["backends"].values():
        if "error" in result:
            continue
        result["encodechka"]["speedup_vs_eager"] = base["encodechka"]["ms_per_text"] / result["encodechka"][
            "ms_per_text"]
        result["corpus"]["speedup_vs_eager_b32_unsorted"] = result["corpus"]["texts_per_s"] / base["corpus"][
            "texts_per_s"]
        result["corpus"]["pct_fp32_matmul_limit"] = 100 * result["corpus"]["flops_per_s"] / gemm
        for row in result["synthetic"]:
            row["pct_fp32_matmul_limit"] = 100 * row["flops_per_s"] / gemm


def run(config: BenchConfig) -> int:
    """Entry point of ``distilrubert bench``."""
    import sys

    runinfo.check_output_dir(config.output, config.overwrite)
    report = benchmark(config)
    command = "distilrubert " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "distilrubert bench"
    table = markdown(report, command)
    with runinfo.atomic_output_dir(config.output, config.overwrite) as tmp:
        runinfo.write_json(tmp / "bench.json", report)
        runinfo.atomic_write_text(tmp / "bench.md", table)
        chart(report, tmp / "bench.png")
        runinfo.write_json(tmp / "run.json", runinfo.run_info("bench", to_dict(config)))
    print(table)
    return 0
