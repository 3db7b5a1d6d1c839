"""``POST /v1/embeddings`` against a real server on an ephemeral loopback port, with the official client."""

from __future__ import annotations

import base64
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from distilrubert.encoder import Encoder
from distilrubert.serve import ServeConfig, create_app
from tests.conftest import SENTENCES

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tiny_student_dir):
    import uvicorn

    config = ServeConfig(model=str(tiny_student_dir), backend="torch", api_key=KEY, max_texts=8)
    app = create_app(tiny_student_dir, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=30)


def _expected(model_dir, texts):
    vectors = Encoder.from_pretrained(model_dir, backend="torch").encode(texts, pooling="mean", normalize=True)
    return np.asarray(vectors, dtype=np.float32)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_official_client_gets_the_encoder_vectors(client, tiny_student_dir, encoding_format):
    texts = SENTENCES[:3]
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}  # None: the client's default
    answer = client.embeddings.create(model="anything", input=texts, **kwargs)
    assert answer.model == tiny_student_dir.name and [d.index for d in answer.data] == [0, 1, 2]
    if encoding_format == "base64":  # asked for explicitly, the client hands the strings over as they came
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data])
    else:  # (by default the client asks for base64 and decodes it itself)
        got = np.asarray([d.embedding for d in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, _expected(tiny_student_dir, texts), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(ids) for ids in Encoder.from_pretrained(tiny_student_dir, backend="torch").tokenizer(
        texts, truncation=True, max_length=128)["input_ids"])
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


def test_a_single_string_and_the_model_width(client, tiny_student_dir):
    answer = client.embeddings.create(model="m", input=SENTENCES[0], dimensions=16)
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 16


def test_bad_requests_get_openai_errors(client, tiny_student_dir):
    import openai

    with pytest.raises(openai.BadRequestError, match="token ids are not accepted") as err:
        client.embeddings.create(model="m", input=[[1, 2, 3]])
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="have 16 dimensions and cannot be shortened"):
        client.embeddings.create(model="m", input="привет", dimensions=8)
    with pytest.raises(openai.APIStatusError, match="9 texts; the limit is 8 per request") as err:
        client.embeddings.create(model="m", input=["a"] * 9)
    assert err.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError, match="input must hold at least one text"):
        client.embeddings.create(model="m", input=[])
    # The server keeps answering.
    assert len(client.embeddings.create(model="m", input="ещё").data) == 1


def test_the_api_key_guards_everything_but_health(server):
    import openai

    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        bad.embeddings.create(model="m", input="x")
    no_key = httpx.post(f"{server}/embed", json={"texts": ["x"]})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server}/health").json()["auth"] is True
    ok = httpx.post(f"{server}/embed", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_binding_beyond_loopback_needs_a_key_or_no_auth(tiny_student_dir, monkeypatch):
    monkeypatch.delenv("DISTILRUBERT_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"--host 0\.0\.0\.0: reachable from other machines, so an API key is "
                                         r"required \(--api-key or DISTILRUBERT_API_KEY\); --no-auth"):
        ServeConfig(model=str(tiny_student_dir), host="0.0.0.0")
    assert ServeConfig(model=str(tiny_student_dir), host="0.0.0.0", auth=False).api_key is None
    monkeypatch.setenv("DISTILRUBERT_API_KEY", "from-env")
    assert ServeConfig(model=str(tiny_student_dir), host="0.0.0.0").api_key == "from-env"
