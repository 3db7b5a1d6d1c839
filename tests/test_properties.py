"""Property-based tests (hypothesis): any input gives a 4xx answer or a file:line error, never an unhandled one."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilrubert.corpus import Corpus, CorpusError
from distilrubert.serve import ServeConfig, create_app

# Lines as a corpus file may hold them: text, JSON-looking fragments, escapes, control characters, bytes that
# are not UTF-8.
FRAGMENTS = st.sampled_from(['{"text": ', '"', "}", "[", "]", "\\ud800", "\\u0000", ",", ":", "\n", "\r", "\t",
                             "null", "1e999", '{"text": "ok"}', "Привет", "\\"])
LINE = st.one_of(
    st.lists(FRAGMENTS, max_size=8).map("".join).map(lambda s: s.encode("utf-8")),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)
SUFFIX = st.sampled_from([".jsonl", ".txt", ".csv", ".jsonl.gz", ".txt.gz"])


def _write(lines: list[bytes], suffix: str, directory: Path) -> Path:
    import gzip

    path = directory / f"corpus{suffix}"
    data = b"\n".join(lines)
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    return path


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(LINE, max_size=12), suffix=SUFFIX, cut=st.booleans())
def test_any_corpus_file_reads_or_fails_with_its_file_and_line(lines, suffix, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(lines, suffix, Path(tmp))
        if cut and suffix.endswith(".gz"):
            path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
        try:
            texts = list(Corpus([path]))
        except CorpusError as err:
            assert str(path) in str(err)  # the file is named (and the line, for a line's fault)
        else:
            assert all(isinstance(t, str) and t == t.strip() and t for t in texts)
        skipping = Corpus([path], on_error="skip")
        try:
            texts = list(skipping)
        except CorpusError as err:  # only what no line can be blamed for: a CSV header, an unreadable file
            assert str(path) in str(err)
        else:
            for text in texts:
                text.encode("utf-8")  # never a lone surrogate
            for message in skipping.first_errors:
                assert re.match(re.escape(str(path)) + r"(:\d+)?: ", message), message


@pytest.fixture(scope="module")
def client(tiny_student_dir):
    config = ServeConfig(model=str(tiny_student_dir), max_texts=4, max_chars=50, backend="torch")
    with TestClient(create_app(tiny_student_dir, config)) as test_client:
        yield test_client


FINITE = st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN or infinity
JSON = st.recursive(st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=5), max_leaves=12)
FIELDS = {"/embed": ("texts", "pooling", "normalize"),
          "/v1/embeddings": ("input", "model", "encoding_format", "dimensions"),
          "/fill-mask": ("texts", "top_k")}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_any_request_body_gets_a_json_answer_below_500(client, route, data):
    body = data.draw(st.fixed_dictionaries({}, optional={k: JSON for k in FIELDS[route]}) | JSON)
    answer = client.post(route, json=body)
    assert answer.status_code < 500, (route, body, answer.text)
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert error["message"] and error["code"] and error["type"] == "invalid_request_error"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_raw_body_gets_a_json_answer_below_500(client, raw):
    answer = client.post("/embed", content=raw, headers={"content-type": "application/json"})
    assert (answer.status_code < 500 and "error" in answer.json()) or answer.status_code == 200
