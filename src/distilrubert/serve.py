"""``serve``: an HTTP API over a model directory (FastAPI + uvicorn), with micro-batching and limits.

Endpoints: ``POST /embed`` (texts -> vectors, via :class:`~distilrubert.encoder.Encoder`), ``POST
/fill-mask`` (models with an MLM head), ``POST /predict`` (fine-tuned sequence- or token-classification
models), ``GET /health``, ``GET /metrics`` (Prometheus text; ``?format=json`` for JSON), and the
OpenAPI schema at ``/openapi.json`` (``/docs`` for the UI).

Micro-batching: concurrent ``/embed`` requests are queued; one worker takes every queued request (up to
``--max-batch-size`` texts), runs one forward pass over all of them and answers each request with its
rows. Clients that wait for their answer before sending again all come back *after* a batch ends, so a
greedy worker would alternate half batches; with ``--adaptive-wait`` (default) a batch that holds fewer
requests than the previous one waits for the rest, at most as long as the previous forward pass took
(so latency at most doubles and a lone client never waits: its previous batch held one request).
``--max-wait-ms`` adds a fixed wait. With ``--no-batching`` every request runs its own forward pass.
The model is loaded and called in one worker thread, so the event loop keeps accepting requests and torch
never runs ops from two threads.

Limits: at most ``--max-texts`` texts per request and ``--max-chars`` characters per text (413 with a
JSON error body), a request body cap derived from both (413), schema errors 422, texts that are not
valid Unicode (lone surrogates from ``\ud800`` escapes) 422, malformed JSON 400. Every error body is
``{"error": {"code": ..., "message": ...}}``; the server keeps serving after any of them. A micro-batch
that fails is rerun one request at a time, so an input that breaks the model fails only its own request.
The default bind address is 127.0.0.1.

Example:
    $ distilrubert serve --model student/ --port 8000
    $ curl -s localhost:8000/embed -d '{"texts": ["Привет!"]}' -H 'content-type: application/json'
"""

# No `from __future__ import annotations` here: FastAPI reads the request models (defined inside
# create_app) from the handlers' annotations at run time.
import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distilrubert.config import option
from distilrubert.microbatch import MicroBatcher, QueueFull
from distilrubert.openai_api import API_KEY_ENV, ApiKeyAuth, add_openai_routes

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Options of ``distilrubert serve``."""

    model: str | None = option(None, "Model directory (HF format and/or an `export` output); default: the "
                               "embedded reference student (models/).", metavar="DIR")
    host: str = option("127.0.0.1", "Bind address (loopback by default; expose deliberately).")
    port: int = option(8000, "TCP port.")
    backend: Literal["auto", "torch", "onnx"] = option("auto", "Encoder backend for /embed.")
    quantized: bool | None = option(None, "int8 ONNX for /embed (--quantized) or fp32 (--no-quantized); default: as "
                                    "Encoder.from_pretrained decides (int8 when it passes its parity check).")
    threads: int | None = option(None, "Intra-op threads of the model (default: the library's).")
    batching: bool = option(True, "Micro-batch concurrent /embed requests (--no-batching to compare).")
    max_batch_size: int = option(32, "Most texts in one micro-batch.")
    max_wait_ms: float = option(0.0, "Fixed extra wait for company when a micro-batch is not full (0: none).")
    adaptive_wait: bool = option(True, "Expect as many requests as the previous micro-batch held: wait for them for "
                                 "at most the previous forward pass's duration (--no-adaptive-wait: greedy).")
    max_texts: int = option(64, "Most texts in one request (413 beyond).")
    max_queue: int = option(256, "Most requests waiting for a micro-batch; beyond, 503 with Retry-After (0: no limit).")
    max_chars: int = option(2000, "Most characters in one text (413 beyond).")
    max_length: int = option(128, "Texts are truncated to this many tokens.")
    trust_remote_code: bool = option(False, "Allow custom model code from the model directory.")
    api_key: str | None = option(None, "Require `Authorization: Bearer KEY` on every endpoint but /health "
                                 "(default: the DISTILRUBERT_API_KEY environment variable; none if unset).",
                                 metavar="KEY")
    auth: bool = option(True, "Refuse to bind beyond loopback without an API key (--no-auth: serve openly).")

    def __post_init__(self) -> None:
        if self.model is None:
            from distilrubert.reference import reference_model

            self.model = str(reference_model("student"))
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"--model {self.model}: not a model directory (no config.json)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        for flag, value in (("--max-batch-size", self.max_batch_size), ("--max-texts", self.max_texts),
                            ("--max-chars", self.max_chars), ("--max-length", self.max_length)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        positions = _positions(Path(self.model))
        if positions is not None and self.max_length > positions:
            raise ValueError(f"--max-length {self.max_length} is above the model's {positions} positions "
                             f"(max_position_embeddings in {Path(self.model) / 'config.json'})")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key: empty")
        if self.auth and self.api_key is None and self.host not in LOOPBACK:
            raise ValueError(f"--host {self.host}: reachable from other machines, so an API key is required "
                             f"(--api-key or {API_KEY_ENV}); --no-auth serves without one")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _config_int(model_dir: Path, *names: str) -> int | None:
    """The first of ``names`` in the model's ``config.json`` that is a positive integer (else ``None``)."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for name in names:
        value = config.get(name) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _positions(model_dir: Path) -> int | None:
    """The model's ``max_position_embeddings`` from its ``config.json`` (``None`` when it does not say)."""
    return _config_int(model_dir, "max_position_embeddings")


def _width(model_dir: Path) -> int | None:
    """The width of the model's vectors (``dim`` of DistilBERT, ``hidden_size`` of BERT-like configs)."""
    return _config_int(model_dir, "dim", "hidden_size")


class ApiError(Exception):
    """An error answered with ``status`` and ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}


@dataclass
class Metrics:
    """Request counts by route and status, latency quantiles (last 10,000 per route), batch sizes.

    Labelled by the app's routes (``routes``, filled by ``create_app``; every route is a fixed path) and
    ``other`` for any other path: a client must not be able to grow the metrics or write into them
    through the paths it requests.
    """

    requests: collections.Counter = field(default_factory=collections.Counter)
    latencies: dict[str, collections.deque] = field(default_factory=dict)
    batches: int = 0
    batched_texts: int = 0
    routes: set[str] = field(default_factory=set)

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.routes else "other"
        self.requests[(path, status)] += 1
        self.latencies.setdefault(path, collections.deque(maxlen=10_000)).append(seconds)

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batched_texts += size

    def as_dict(self) -> dict:
        latency = {}
        for path, values in self.latencies.items():
            arr = np.asarray(values)
            latency[path] = {"count": len(arr), "p50_ms": 1000 * float(np.percentile(arr, 50)),
                             "p90_ms": 1000 * float(np.percentile(arr, 90)),
                             "p99_ms": 1000 * float(np.percentile(arr, 99))}
        return {"requests": [{"path": p, "status": s, "count": c} for (p, s), c in sorted(self.requests.items())],
                "latency": latency, "batches": self.batches, "batched_texts": self.batched_texts,
                "mean_batch_size": self.batched_texts / self.batches if self.batches else None}

    def prometheus(self) -> str:
        lines = ["# TYPE distilrubert_requests_total counter"]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'distilrubert_requests_total{{path="{_label(path)}",status="{status}"}} {count}')
        lines.append("# TYPE distilrubert_request_latency_seconds summary")
        for path, values in self.latencies.items():
            arr = np.asarray(values)
            for q in (0.5, 0.9, 0.99):
                lines.append(f'distilrubert_request_latency_seconds{{path="{_label(path)}",quantile="{q}"}} '
                             f"{float(np.quantile(arr, q)):.6f}")
            lines.append(f'distilrubert_request_latency_seconds_count{{path="{_label(path)}"}} {len(arr)}')
        lines += ["# TYPE distilrubert_batches_total counter", f"distilrubert_batches_total {self.batches}",
                  "# TYPE distilrubert_batched_texts_total counter",
                  f"distilrubert_batched_texts_total {self.batched_texts}"]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value, escaped (backslash, double quote, newline) as the text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class LimitsAndMetrics:
    """Pure ASGI middleware: the request-body cap (413 before the body is read; a chunked body is counted
    as it arrives and cut off at the cap) and per-route metrics.

    Written against ASGI directly rather than with ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` wraps every request in extra tasks and streams, which cost more per ``/embed``
    request than a micro-batched forward pass of the 5K model.
    """

    def __init__(self, app, metrics: "Metrics", max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts (an unhandled error is answered outside this middleware)

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is None:  # chunked (or no body): count the bytes as they arrive
            receive, too_large = await self._read_capped(receive)
        else:
            too_large = not length.isdigit() or int(length) > self.max_body
        app = error_response(413, "body_too_large", f"request body over {self.max_body} bytes") if too_large \
            else self.app
        try:
            await app(scope, receive, send_status)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)

    async def _read_capped(self, receive) -> tuple:
        """Read a body of unknown length up to the cap: ``(receive, False)`` replaying it to the app, or
        ``(receive, True)`` as soon as it passes the cap, the rest unread.

        Only for requests without ``Content-Length`` (uvicorn enforces a declared one), so the common path
        keeps streaming the body straight to the app.
        """
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                chunks = None
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return receive, True
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replay = [message] if chunks is None else [{"type": "http.request", "body": b"".join(chunks),
                                                     "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return replayed, False


def error_response(status: int, code: str, message: str, param: str | None = None, **extra):
    """The JSON error every endpoint answers with: ``{"error": {"code", "message", "type", "param", ...}}``.

    ``type`` and ``param`` make it OpenAI's error shape as well (what its clients parse).
    """
    from fastapi.responses import JSONResponse

    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"code": code, "message": message, "type": kind, "param": param, **extra}},
                        status_code=status)


def _heads(model_dir: Path, trust_remote_code: bool) -> dict[str, str]:
    """Which optional endpoints the model supports: ``fill-mask`` and/or ``predict`` (with its task)."""
    from transformers import AutoConfig

    try:
        names = " ".join(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code).architectures
                         or [])
    except (OSError, ValueError):
        return {}
    heads = {}
    if "ForMaskedLM" in names:
        heads["fill-mask"] = "fill-mask"
    if "ForSequenceClassification" in names:
        heads["predict"] = "text-classification"
    elif "ForTokenClassification" in names:
        heads["predict"] = "token-classification"
    return heads


def create_app(model_dir: str | Path, config: ServeConfig | None = None, encoder=None):
    """Build the FastAPI application for ``model_dir``.

    Args:
        model_dir: Model directory (HF format and/or an ``export`` output).
        config: Server options (limits, batching, backend); defaults of :class:`ServeConfig` when omitted.
        encoder: An already built :class:`~distilrubert.encoder.Encoder` (else one is loaded).

    Returns:
        A ``fastapi.FastAPI`` app; run it with uvicorn or test it with ``fastapi.testclient.TestClient``.
    """
    import orjson
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from transformers import pipeline

    from distilrubert.encoder import Encoder

    model_dir = Path(model_dir)
    config = config or ServeConfig(model=str(model_dir))
    # Every model call runs in this one thread, and so does loading (which runs forward passes: warm-up, the
    # packing probe). With torch's OpenMP each thread that runs ops gets its own worker threads; once two
    # threads have, there are more OpenMP threads than cores on a small CPU and every op pays a wake-up
    # instead of a spin (`scripts/check_threads.py` measures it).
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def load() -> tuple:
        loaded = encoder or Encoder.from_pretrained(model_dir, backend=config.backend, quantized=config.quantized,
                                                    threads=config.threads, max_length=config.max_length,
                                                    trust_remote_code=config.trust_remote_code)
        pipes = {}
        for endpoint, task in heads.items():
            kwargs = {"aggregation_strategy": "simple"} if task == "token-classification" else {}
            pipes[endpoint] = pipeline(task, model=str(model_dir), tokenizer=str(model_dir), device=-1,
                                       trust_remote_code=config.trust_remote_code, **kwargs)
        return loaded, pipes

    heads = _heads(model_dir, config.trust_remote_code)
    encoder, pipes = executor.submit(load).result()
    width = _width(model_dir) or int(executor.submit(lambda: encoder.encode(["."]).shape[1]).result())
    metrics = Metrics()
    # The body cap: every text at its limit, 4 bytes a character (UTF-8 worst case) plus JSON overhead.
    max_body = config.max_texts * (config.max_chars * 4 + 16) + 4096

    def embed_rows(pooling: str):
        def fn(texts: list[str]) -> np.ndarray:
            return encoder.encode(texts, batch_size=config.max_batch_size, pooling=pooling)  # (n, dim)
        return fn

    batchers = {p: MicroBatcher(embed_rows(p), executor, config.max_batch_size, config.max_wait_ms / 1000,
                                on_batch=metrics.batch, adaptive=config.adaptive_wait, max_queue=config.max_queue)
                for p in ("cls", "mean")}

    async def batched(pooling: str, texts: list[str]) -> np.ndarray:
        try:
            return await batchers[pooling].submit(texts)
        except QueueFull as err:
            raise ApiError(503, "overloaded", f"the server is overloaded ({err}); retry shortly",
                           headers={"Retry-After": "1"}) from None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()
        executor.shutdown(wait=False)

    app = FastAPI(title="distilrubert", version=_version(), lifespan=lifespan,
                  description="Embeddings, fill-mask and predictions from a compact Russian encoder.")

    class EmbedRequest(BaseModel):
        texts: list[str] = Field(description="Texts to embed.")
        pooling: Literal["cls", "mean"] = Field("mean", description="CLS token or attention-mask mean.")
        normalize: bool = Field(False, description="L2-normalise the vectors.")

    class EmbedResponse(BaseModel):
        embeddings: list[list[float]]
        dim: int
        model: str

    class TextsRequest(BaseModel):
        texts: list[str] = Field(description="Texts (fill-mask: each with the tokenizer's mask token).")
        top_k: int = Field(5, ge=1, le=50, description="fill-mask: candidates per mask.")

    def check_texts(texts: list[str], field: str = "texts") -> None:
        if not texts:
            raise ApiError(422, "empty_request", f"{field} must hold at least one text", field)
        if len(texts) > config.max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts; the limit is {config.max_texts} per request",
                           field)
        for i, text in enumerate(texts):
            if len(text) > config.max_chars:
                raise ApiError(413, "text_too_long",
                               f"{field}[{i}] has {len(text)} characters; the limit is {config.max_chars}", field)
            # JSON's \ud800 escapes decode to lone surrogates, which pass the schema but no tokenizer takes
            # (it would raise inside a shared micro-batch). ASCII, the common case, needs no encode.
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise ApiError(422, "invalid_unicode", f"{field}[{i}] is not valid Unicode: a lone surrogate "
                                   f"at character {err.start}", field) from None

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        response = error_response(err.status, err.code, err.message, err.param)
        response.headers.update(err.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in err.errors()]
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(400, "malformed_json", "the request body is not valid JSON", details=details)
        return error_response(422, "invalid_request", "the request does not match the schema (see /openapi.json)",
                              details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        # Starlette's own answers (unknown path, wrong method, unreadable body) as every other error.
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        response = error_response(err.status_code, code, str(err.detail))
        response.headers.update(err.headers or {})  # 405 carries Allow
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        logger.exception("error while serving %s", request.url.path)
        return error_response(500, "internal_error", f"{type(err).__name__}")

    app.add_middleware(LimitsAndMetrics, metrics=metrics, max_body=max_body)
    if config.api_key:  # added last, so it runs first: a request without the key is not even read
        app.add_middleware(ApiKeyAuth, key=config.api_key)

    @app.post("/embed", response_model=EmbedResponse, summary="Embed texts")
    async def embed(body: EmbedRequest):
        check_texts(body.texts)
        if config.batching:
            vectors = await batched(body.pooling, body.texts)
        else:
            vectors = await asyncio.get_running_loop().run_in_executor(
                executor, embed_rows(body.pooling), body.texts)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
        if body.normalize:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        # Serialised here with orjson (float32 arrays as they are) instead of through response_model validation
        # + jsonable_encoder: both cost more per request than a micro-batched forward pass of a tiny model.
        payload = {"embeddings": vectors, "dim": int(vectors.shape[1]), "model": model_dir.name}
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    class Embeddings:  # the EmbeddingService of /v1/embeddings
        model_name, dim = model_dir.name, width

        @staticmethod
        def check_texts(texts: list[str], field: str) -> None:
            check_texts(texts, field)

        @staticmethod
        async def embed(texts: list[str]) -> np.ndarray:
            if config.batching:
                return await batched("mean", texts)
            return await asyncio.get_running_loop().run_in_executor(executor, embed_rows("mean"), texts)

        @staticmethod
        def count_tokens(texts: list[str]) -> int:
            ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
            return sum(len(row) for row in ids)

    def raise_error(status: int, code: str, message: str, param: str | None = None):
        raise ApiError(status, code, message, param)

    add_openai_routes(app, Embeddings(), raise_error)

    @app.post("/fill-mask", summary="Fill the mask token (models with an MLM head)")
    async def fill_mask(body: TextsRequest) -> dict:
        pipe = pipes.get("fill-mask")
        if pipe is None:
            raise ApiError(404, "no_mlm_head", "this model has no masked-language-model head")
        check_texts(body.texts)
        mask = pipe.tokenizer.mask_token
        missing = [i for i, t in enumerate(body.texts) if mask not in t]
        if missing:
            raise ApiError(422, "no_mask_token", f"texts{missing} contain no {mask}")
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(executor, fill_masks, pipe, body.texts, body.top_k)
        return {"results": [_plain(o) for o in outputs]}

    def fill_masks(pipe, texts: list[str], top_k: int) -> list:
        # fill-mask cannot truncate (the mask could be cut off): a text longer than the model is refused.
        limit = getattr(pipe.model.config, "max_position_embeddings", None)
        if limit:
            for i, ids in enumerate(pipe.tokenizer(texts)["input_ids"]):
                if len(ids) > limit:
                    raise ApiError(413, "text_too_long",
                                   f"texts[{i}] has {len(ids)} tokens; this model takes at most {limit}")
        return [pipe(t, top_k=top_k) for t in texts]

    @app.post("/predict", summary="Classification / NER (fine-tuned models)")
    async def predict(body: TextsRequest) -> dict:
        pipe = pipes.get("predict")
        if pipe is None:
            raise ApiError(404, "no_task_head", "this model has no classification or token-classification head")
        check_texts(body.texts)
        outputs = await asyncio.get_running_loop().run_in_executor(executor, lambda: pipe(list(body.texts)))
        return {"task": heads["predict"], "results": _plain(outputs)}

    @app.get("/health", summary="Liveness and what this server offers")
    async def health() -> dict:
        return {"status": "ok", "model": str(model_dir), "backend": encoder.backend, "batching": config.batching,
                "endpoints": ["/embed", "/v1/embeddings", *(f"/{k}" for k in pipes)], "auth": bool(config.api_key),
                "limits": {"max_texts": config.max_texts, "max_chars": config.max_chars,
                           "max_length": config.max_length}}

    @app.get("/metrics", summary="Request counts, latency quantiles, micro-batch sizes")
    async def get_metrics(format: Literal["prometheus", "json"] = "prometheus"):
        if format == "json":
            return metrics.as_dict()
        return PlainTextResponse(metrics.prometheus())

    metrics.routes.update(route.path for route in app.routes)
    app.state.metrics = metrics
    app.state.encoder = encoder
    return app


def _plain(value: Any) -> Any:
    """Pipeline outputs with numpy scalars turned into JSON numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _version() -> str:
    from distilrubert import __version__

    return __version__


def run(config: ServeConfig) -> int:
    """Entry point of ``distilrubert serve``: build the app and run uvicorn until interrupted."""
    import uvicorn

    if config.host not in LOOPBACK:
        logger.warning("binding %s: the server is reachable from other machines (%s)", config.host,
                       "API key required" if config.api_key else "no authentication: --no-auth")
    # A micro-batch is at most --max-batch-size texts: tokenizing it on the Rust tokenizer's thread pool gains
    # nothing, and that pool's threads, spinning after each batch, took cores from the forward pass under
    # load. An explicit setting is kept.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(config.model, config)
    # Bound here rather than by uvicorn so that the port the system picked for --port 0 can be printed.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as err:
        sock.close()
        raise OSError(f"--host {config.host} --port {config.port}: cannot bind ({err.strerror})") from None
    host, port = sock.getsockname()[:2]
    print(f"distilrubert serve: listening on http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
