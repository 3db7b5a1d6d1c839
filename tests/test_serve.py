"""The HTTP server in-process: endpoints, limits, malformed requests, micro-batching, metrics, the CLI."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distilrubert.cli import main
from distilrubert.encoder import Encoder
from distilrubert.serve import ServeConfig, create_app
from tests.conftest import SENTENCES


@pytest.fixture(scope="module")
def client(tiny_student_dir):
    config = ServeConfig(model=str(tiny_student_dir), max_texts=4, max_chars=200, backend="torch")
    with TestClient(create_app(tiny_student_dir, config)) as test_client:
        yield test_client


def test_embed_returns_encoder_vectors_in_order(client, tiny_student_dir):
    texts = [SENTENCES[5], "Да.", SENTENCES[9]]
    response = client.post("/embed", json={"texts": texts, "pooling": "mean"})
    assert response.status_code == 200
    body = response.json()
    expected = Encoder.from_pretrained(tiny_student_dir, backend="torch").encode(texts, pooling="mean")
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-5)
    assert body["dim"] == 16
    unit = client.post("/embed", json={"texts": texts, "normalize": True}).json()["embeddings"]
    assert np.linalg.norm(unit, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)


@pytest.mark.parametrize(("payload", "status", "code"), [
    ({"texts": ["a"] * 5}, 413, "too_many_texts"),
    ({"texts": ["a" * 201]}, 413, "text_too_long"),
    ({"texts": []}, 422, "empty_request"),
    ({"texts": "not a list"}, 422, "invalid_request"),
    ({"texts": [1, 2]}, 422, "invalid_request"),
    ({"text": ["a"]}, 422, "invalid_request"),
    ({"texts": ["a"], "pooling": "max"}, 422, "invalid_request"),
    ([1, 2, 3], 422, "invalid_request"),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(client, payload, status, code):
    response = client.post("/embed", json=payload)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert client.post("/embed", json={"texts": ["ещё работает"]}).status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b'{"texts": ["a"]'])
def test_malformed_json_is_400_or_422_never_500(client, body):
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)
    assert "error" in response.json()


def test_body_over_the_cap_is_413(client):
    response = client.post("/embed", content=b"x" * 1_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_fill_mask_predict_health_metrics_openapi(client):
    fill = client.post("/fill-mask", json={"texts": ["Привет, [MASK]!"], "top_k": 3})
    assert fill.status_code == 200 and len(fill.json()["results"][0]) == 3
    assert client.post("/fill-mask", json={"texts": ["без маски"]}).json()["error"]["code"] == "no_mask_token"
    assert client.post("/predict", json={"texts": ["Привет"]}).status_code == 404  # an MLM model has no head
    health = client.get("/health").json()
    assert health["status"] == "ok" and "/fill-mask" in health["endpoints"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and 'distilrubert_requests_total{path="/embed",status="200"}' in metrics.text
    assert client.get("/metrics", params={"format": "json"}).json()["batches"] >= 1
    assert "/embed" in client.get("/openapi.json").json()["paths"]


def test_predict_on_a_classification_model(tiny_student, tmp_path):
    torch.manual_seed(0)
    head_dir = tmp_path / "cls"
    AutoModelForSequenceClassification.from_pretrained(tiny_student, num_labels=2).save_pretrained(head_dir)
    AutoTokenizer.from_pretrained(tiny_student).save_pretrained(head_dir)
    with TestClient(create_app(head_dir, ServeConfig(model=str(head_dir), backend="torch"))) as test_client:
        response = test_client.post("/predict", json={"texts": ["Привет", "Пока"]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2 and {"label", "score"} <= set(results[0])


@pytest.mark.parametrize("max_wait_ms", [0.0, 200.0])
def test_concurrent_requests_are_micro_batched(tiny_student_dir, max_wait_ms):
    # 0: requests that queue up while the first batch runs form the next one; 200: the first waits for them.
    config = ServeConfig(model=str(tiny_student_dir), backend="torch", max_wait_ms=max_wait_ms, max_batch_size=8)
    app = create_app(tiny_student_dir, config)
    texts = SENTENCES[:8]

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/embed", json={"texts": [t]}) for t in texts))
            metrics = (await http.get("/metrics", params={"format": "json"})).json()
        return responses, metrics

    responses, metrics = asyncio.run(burst())
    got = np.array([r.json()["embeddings"][0] for r in responses])
    np.testing.assert_allclose(got, app.state.encoder.encode(texts, pooling="mean"), atol=1e-5)
    assert metrics["batched_texts"] == 8 and metrics["batches"] < 8


def test_serve_cli_builds_the_app_and_binds_loopback(tiny_student, monkeypatch, capsys):
    seen = {}

    def fake_run(server, sockets):
        host, port = sockets[0].getsockname()
        seen.update(app=server.config.app, host=host, port=port)

    monkeypatch.setattr("uvicorn.Server.run", fake_run)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    assert main(["serve", "--model", str(tiny_student), "--port", "0", "--no-batching", "--backend", "torch"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] > 0  # --port 0: the system picked one ...
    assert capsys.readouterr().out == f"distilrubert serve: listening on http://127.0.0.1:{seen['port']}\n"  # ... shown
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # micro-batches are tokenized in the model thread
    with TestClient(seen["app"]) as test_client:
        assert test_client.get("/health").json()["batching"] is False
        assert test_client.post("/embed", json={"texts": ["Привет"]}).status_code == 200
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["serve", "--model", str(tiny_student), "--max-texts", "0"])
    assert "--max-texts must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("adaptive", [True, False])
def test_adaptive_wait_keeps_closed_loop_clients_in_one_batch(adaptive):
    # 4 clients that send again only after their answer (a closed loop): they all come back just after a
    # batch ends. Greedy takes the first one alone, then the other three (batches of 1 and 3); the adaptive
    # wait expects the previous batch's 4 requests and waits (at most one forward pass) for them.
    from concurrent.futures import ThreadPoolExecutor

    from distilrubert.microbatch import MicroBatcher

    sizes = []

    def fn(items):
        time.sleep(0.03)  # a forward pass
        sizes.append(len(items))
        return items

    async def client(batcher, k):
        for i in range(6):
            assert await batcher.submit([(k, i)]) == [(k, i)]
            await asyncio.sleep(0.002 * (k + 1))  # the client's own work before its next request

    async def run():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(fn, executor, max_batch=16, max_wait=0.0, adaptive=adaptive)
            batcher.start()
            await asyncio.gather(*(client(batcher, k) for k in range(4)))
            await batcher.stop()

    asyncio.run(run())
    assert sum(sizes) == 24
    mean = sum(sizes) / len(sizes)
    if adaptive:
        assert mean >= 3.4, sizes
    else:
        assert mean < 3.0, sizes
