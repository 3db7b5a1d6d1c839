"""The server under bad and hostile requests: one bad text fails only its own request, body caps hold for
chunked bodies, metrics labels stay bounded and escaped, and every edge answers the documented JSON error."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distilrubert.microbatch import MicroBatcher
from distilrubert.serve import ServeConfig, create_app


class PoisonEncoder:
    """Zero vectors, except that a batch holding ``"poison"`` raises (as a tokenizer does on bad input)."""

    backend = "stub"

    def __init__(self):
        self.batches: list[list[str]] = []

    def encode(self, texts, batch_size: int = 32, pooling: str = "cls", **kwargs) -> np.ndarray:
        time.sleep(0.02)  # a forward pass: requests that arrive meanwhile join the next batch
        self.batches.append(list(texts))
        if "poison" in texts:
            raise RuntimeError("cannot tokenize")
        return np.full((len(texts), 4), float(len(texts[0]) if texts else 0), dtype=np.float32)


@pytest.fixture(scope="module")
def client(tiny_student_dir):
    config = ServeConfig(model=str(tiny_student_dir), max_texts=4, max_chars=200, backend="torch")
    with TestClient(create_app(tiny_student_dir, config), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def classifier_client(tiny_student_dir, tmp_path_factory):
    torch.manual_seed(0)
    head_dir = tmp_path_factory.mktemp("cls") / "cls"
    AutoModelForSequenceClassification.from_pretrained(tiny_student_dir, num_labels=2).save_pretrained(head_dir)
    AutoTokenizer.from_pretrained(tiny_student_dir).save_pretrained(head_dir)
    with TestClient(create_app(head_dir, ServeConfig(model=str(head_dir), backend="torch")),
                    raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/embed", "/fill-mask", "/predict"])
def test_lone_surrogate_is_422_at_the_edge(client, classifier_client, path):
    http = classifier_client if path == "/predict" else client
    # Raw JSON: the escape \ud800 decodes to a lone surrogate, which no tokenizer can take.
    body = b'{"texts": ["ok [MASK]", "\xd1\x91 a\\ud800b [MASK]"]}'
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert error["message"] == "texts[1] is not valid Unicode: a lone surrogate at character 3"
    assert http.post(path, json={"texts": ["ещё [MASK] работает"]}).status_code == 200


def test_a_failing_request_does_not_fail_the_others_in_its_micro_batch(tiny_student_dir):
    encoder = PoisonEncoder()
    config = ServeConfig(model=str(tiny_student_dir), backend="torch", max_wait_ms=100.0, max_batch_size=16)
    app = create_app(tiny_student_dir, config, encoder=encoder)
    texts = ["a", "bb", "poison", "dddd", "eeeee"]

    async def burst():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(http.post("/embed", json={"texts": [t]}) for t in texts))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200]
    for text, response in zip(texts, responses, strict=True):
        if text != "poison":
            assert response.json()["embeddings"] == [[float(len(text))] * 4]
    assert responses[2].json()["error"]["code"] == "internal_error"
    assert len(encoder.batches[0]) == 5  # they did share one batch, which failed and was retried one by one
    assert sorted(map(tuple, encoder.batches[1:])) == sorted((t,) for t in texts)


def test_micro_batcher_retries_a_failed_batch_request_by_request():
    def fn(items):
        time.sleep(0.01)
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return [x * 10 for x in items]

    async def run():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(fn, executor, max_batch=16, max_wait=0.05)
            batcher.start()
            results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([-1]), batcher.submit([3]),
                                           return_exceptions=True)
            await batcher.stop()
        return results

    good, bad, other = asyncio.run(run())
    assert good == [10, 20] and other == [30]
    assert isinstance(bad, ValueError) and str(bad) == "negative"


def test_a_chunked_body_over_the_cap_is_413_without_reading_the_rest(tiny_student_dir):
    config = ServeConfig(model=str(tiny_student_dir), max_texts=4, max_chars=200, backend="torch")
    app = create_app(tiny_student_dir, config, encoder=PoisonEncoder())
    sent = []

    async def body(total: int, chunk: bytes = b"x" * 65536):
        # No Content-Length: httpx sends an async iterator as Transfer-Encoding: chunked.
        for _ in range(total // len(chunk)):
            sent.append(len(chunk))
            yield chunk

    async def small():
        yield b'{"texts": '
        yield b'["a", "bb"]}'

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            big = await http.post("/embed", content=body(60 * 2**20), headers={"content-type": "application/json"})
            ok = await http.post("/embed", content=small(), headers={"content-type": "application/json"})
            return big, ok

    big, ok = asyncio.run(run())
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    max_body = 4 * (200 * 4 + 16) + 4096
    assert max_body < sum(sent) <= max_body + 65536  # stopped at the cap, not after 60 MB
    assert ok.status_code == 200 and ok.json()["embeddings"] == [[1.0] * 4, [1.0] * 4]


def test_metrics_label_routes_not_raw_paths(tiny_student_dir):
    config = ServeConfig(model=str(tiny_student_dir), backend="torch")
    with TestClient(create_app(tiny_student_dir, config, encoder=PoisonEncoder())) as http:
        assert http.post("/embed", json={"texts": ["a"]}).status_code == 200
        # Percent-decoded, this path is `/a"} 1\nfake_metric{x="`: raw, it would write a line of its own.
        assert http.get('/a%22%7D%201%0Afake_metric%7Bx=%22').status_code == 404
        before = http.get("/metrics").text
        for i in range(300):
            http.get(f"/random-{i}")
        after = http.get("/metrics").text
        as_json = http.get("/metrics", params={"format": "json"}).json()
    assert not any(line.startswith("fake_metric") for line in after.splitlines())
    assert 'distilrubert_requests_total{path="/embed",status="200"} 1' in after
    assert 'distilrubert_requests_total{path="other",status="404"} 301' in after
    assert len(after.splitlines()) == len(before.splitlines()) + 5  # /metrics itself appears, nothing more
    assert {r["path"] for r in as_json["requests"]} == {"/embed", "/metrics", "other"}


def test_prometheus_label_values_are_escaped():
    from distilrubert.serve import Metrics

    metrics = Metrics(routes={'/a"b\\c\nd'})
    metrics.observe('/a"b\\c\nd', 200, 0.01)
    assert 'path="/a\\"b\\\\c\\nd",status="200"} 1' in metrics.prometheus()


def test_fill_mask_over_the_model_positions_is_413(client):
    long_text = "[MASK]" + "!" * 190  # 190 punctuation tokens, in 196 characters; the tiny model has 128 positions
    response = client.post("/fill-mask", json={"texts": ["Привет, [MASK]!", long_text]})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "text_too_long" and error["message"].startswith("texts[1] has ")
    assert error["message"].endswith("tokens; this model takes at most 128")
    assert client.post("/fill-mask", json={"texts": ["Привет, [MASK]!"]}).status_code == 200


def test_unknown_paths_and_methods_answer_the_documented_error_shape(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": {"code": "not_found", "message": "Not Found",
                                                                   "type": "invalid_request_error", "param": None}}
    wrong = client.get("/embed")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


def test_max_length_above_the_model_positions_is_refused(tiny_student_dir):
    with pytest.raises(ValueError, match=r"^--max-length 100000 is above the model's 128 positions"):
        ServeConfig(model=str(tiny_student_dir), max_length=100000)
    assert ServeConfig(model=str(tiny_student_dir), max_length=128).max_length == 128


def test_fifty_clients_with_poisoned_requests_on_loopback(tiny_student_dir):
    # A real uvicorn on 127.0.0.1: 50 concurrent clients, 4 requests each, 5% of them poisoned (a lone
    # surrogate, a fill-mask text longer than the model, a chunked body over the cap). Every good request
    # gets its vectors, every bad one its 4xx, and nothing is a 5xx.
    import socket
    import threading

    import uvicorn

    from tests.conftest import SENTENCES

    config = ServeConfig(model=str(tiny_student_dir), backend="torch", max_texts=4, max_chars=200)
    app = create_app(tiny_student_dir, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    headers = {"content-type": "application/json"}

    async def chunked():
        for _ in range(200):  # 13 MB, far over the ~7 KB cap
            yield b"x" * 65536

    poisons = [
        ("/embed", {"content": b'{"texts": ["a\\ud800b"]}', "headers": headers}, 422),
        ("/fill-mask", {"json": {"texts": ["[MASK]" + "!" * 190]}}, 413),
        ("/embed", {"content": chunked, "headers": headers}, 413),
    ]

    async def client(http, k):
        seen = []
        for i in range(4):
            n = 4 * k + i
            if n % 20 == 7:  # 10 of 200
                path, kwargs, status = poisons[n % 3]
                if callable(kwargs.get("content")):
                    kwargs = {**kwargs, "content": kwargs["content"]()}
                response = await http.post(path, **kwargs)
                seen.append((None, status, response))
            else:
                text = SENTENCES[n % len(SENTENCES)]
                seen.append((text, 200, await http.post("/embed", json={"texts": [text]})))
        return seen

    async def run():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as http:
            return [x for part in await asyncio.gather(*(client(http, k) for k in range(50))) for x in part]

    try:
        results = asyncio.run(asyncio.wait_for(run(), 120))
    finally:
        server.should_exit = True
        thread.join(30)
    assert len(results) == 200 and sum(text is None for text, _, _ in results) == 10
    assert [(r.status_code, status) for _, status, r in results if r.status_code != status] == []
    good = [(text, r) for text, _, r in results if text is not None]
    expected = app.state.encoder.encode([t for t, _ in good], pooling="mean")
    np.testing.assert_allclose(np.array([r.json()["embeddings"][0] for _, r in good]), expected, atol=1e-5)
    assert all("error" in r.json() for text, _, r in results if text is None)


def test_a_full_queue_is_refused_at_once_and_the_server_answers_503_with_retry_after(tiny_student_dir):
    from distilrubert.microbatch import QueueFull

    release = threading.Event()

    def slow(items):
        release.wait(10)
        return [x for x in items]

    async def run():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(slow, executor, max_batch=1, max_wait=0.0, max_queue=2)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit([1]))  # taken by the worker, which then blocks
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(batcher.submit([i])) for i in (2, 3)]
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFull, match="2 requests are already waiting"):
                await batcher.submit([4])
            release.set()
            results = await asyncio.gather(first, *queued)
            await batcher.stop()
        return results

    assert asyncio.run(run()) == [[1], [2], [3]]

    class Stuck:  # an encoder whose forward pass never ends while the test holds it
        backend, max_length, tokenizer = "stub", 128, None

        def encode(self, texts, batch_size=32, pooling="mean"):
            release2.wait(10)
            return np.zeros((len(texts), 16), dtype=np.float32)

    release2 = threading.Event()
    config = ServeConfig(model=str(tiny_student_dir), backend="torch", max_queue=1)
    with TestClient(create_app(tiny_student_dir, config, encoder=Stuck())) as http:
        pool = ThreadPoolExecutor(4)
        pending = [pool.submit(http.post, "/embed", json={"texts": [f"t{i}"]}) for i in range(3)]
        time.sleep(0.5)
        refused = http.post("/embed", json={"texts": ["over"]})
        release2.set()
        answers = [f.result(timeout=30) for f in pending]
        pool.shutdown()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert sorted(a.status_code for a in answers)[0] == 200
