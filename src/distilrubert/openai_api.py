"""The OpenAI-compatible embeddings endpoint of ``serve`` and its optional API key.

``POST /v1/embeddings`` follows https://platform.openai.com/docs/api-reference/embeddings, the API that
the official ``openai`` client, LangChain and LlamaIndex speak:

* ``input``: a string or a list of strings (token-id inputs, which OpenAI also accepts, are refused:
  this server's vocabulary is not OpenAI's, so ids would silently mean other text);
* ``model``: required by the API; any name is accepted and the answer names the served model;
* ``encoding_format``: ``float`` (lists of numbers) or ``base64`` (little-endian float32 bytes);
* ``dimensions``: the model's own width only (a smaller value is refused: a truncated vector of a
  model not trained for it is not an embedding);
* vectors are mean-pooled and L2-normalised, as OpenAI's are; ``usage`` counts the tokens after
  truncation to ``--max-length`` (special tokens included);
* errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.

Requests go through the same micro-batcher and limits as ``/embed``.

:class:`ApiKeyAuth` guards every route except ``/health`` with ``Authorization: Bearer KEY`` when a key is
set (``--api-key`` or ``DISTILRUBERT_API_KEY``).
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the handler's annotations.
import base64
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["API_KEY_ENV", "ApiKeyAuth", "EmbeddingService", "add_openai_routes"]

API_KEY_ENV = "DISTILRUBERT_API_KEY"


class EmbeddingService(Protocol):
    """What the endpoint needs from the server."""

    model_name: str
    dim: int

    def check_texts(self, texts: list[str], field: str) -> None:
        """Raise the server's 4xx error for texts beyond its limits (count, length, invalid Unicode)."""
        ...

    def embed(self, texts: list[str]) -> Awaitable[np.ndarray]:
        """``(len(texts), dim)`` mean-pooled vectors (micro-batched with ``/embed``)."""
        ...

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts`` (after truncation, special tokens included)."""
        ...


def add_openai_routes(app: Any, service: EmbeddingService, error: Callable[..., Any]) -> None:
    """Register ``POST /v1/embeddings`` on ``app``; ``error(status, code, message, param=...)`` raises."""
    from fastapi.responses import Response
    from pydantic import BaseModel, Field

    class EmbeddingsRequest(BaseModel):
        input: str | list[str] | list[int] | list[list[int]] = Field(description="A text or a list of texts.")
        model: str = Field(description="Any name: this server serves one model, named in the answer.")
        encoding_format: Literal["float", "base64"] = Field("float", description="float lists or base64 float32.")
        dimensions: int | None = Field(None, description="Only the model's own width is accepted.")
        user: str | None = Field(None, description="Accepted and ignored.")

    @app.post("/v1/embeddings", summary="OpenAI-compatible embeddings")
    async def embeddings(body: EmbeddingsRequest):
        import orjson

        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if any(not isinstance(t, str) for t in texts):
            error(400, "token_ids_not_supported", "input: token ids are not accepted (this model's vocabulary "
                  "is not OpenAI's); send the text", param="input")
        if body.dimensions is not None and body.dimensions != service.dim:
            error(400, "unsupported_dimensions", f"dimensions: this model's embeddings have {service.dim} "
                  f"dimensions and cannot be shortened; omit dimensions or send {service.dim}", param="dimensions")
        service.check_texts(texts, "input")
        vectors = np.asarray(await service.embed(texts), dtype=np.float32)  # (n, dim)
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        if body.encoding_format == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            rows = list(vectors)
        tokens = service.count_tokens(texts)
        payload = {"object": "list", "model": service.model_name,
                   "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


class ApiKeyAuth:
    """ASGI middleware: every HTTP route but ``/health`` needs ``Authorization: Bearer <key>``.

    The key is compared in constant time; a missing or wrong key gets 401 with OpenAI's error shape and
    ``WWW-Authenticate: Bearer``.
    """

    def __init__(self, app: Any, key: str, open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app, self.key, self.open_paths = app, key.encode("utf-8"), open_paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        import orjson

        message = "missing API key (Authorization: Bearer ...)" if not header else "invalid API key"
        body = orjson.dumps({"error": {"message": message, "type": "authentication_error", "param": None,
                                       "code": "invalid_api_key"}})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
