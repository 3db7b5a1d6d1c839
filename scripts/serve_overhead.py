"""Per-request cost of ``distilrubert serve`` without the model: a stub encoder (zeros) behind the real app.

Starts the app (micro-batching on) with an encoder that returns zero vectors instantly, loads it with wrk
(8 connections, one sentence a request) and prints requests/s: the HTTP, validation, batching and
serialisation cost alone, which every real request pays on top of the forward pass.

    python scripts/serve_overhead.py --model DIR --sentences ../shared/data/encodechka/sentences_sample.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import free_port, load_wrk


class StubEncoder:
    """Answers ``encode`` with zero vectors of the model's width, at once."""

    backend = "stub"

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, texts, batch_size: int = 32, pooling: str = "cls", **kwargs) -> np.ndarray:
        return np.zeros((len(texts), self.dim), dtype=np.float32)


def serve_stub(model: str, port: int, dim: int) -> None:
    import uvicorn

    from distilrubert.serve import ServeConfig, create_app

    app = create_app(model, ServeConfig(model=model), encoder=StubEncoder(dim))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> int:
    import subprocess

    import httpx
    from transformers import AutoConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A model directory (its config and tokenizer are read).")
    parser.add_argument("--sentences", required=True, help="Text file, one sentence a line.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve-stub", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    config = AutoConfig.from_pretrained(args.model)
    dim = getattr(config, "dim", None) or config.hidden_size
    if args.serve_stub is not None:
        serve_stub(args.model, args.serve_stub, dim)
        return 0
    texts = [t.strip() for t in Path(args.sentences).read_text(encoding="utf-8").splitlines() if t.strip()]
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--model", args.model, "--sentences", args.sentences,
                             "--serve-stub", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the stub server did not start") from None
                time.sleep(0.3)
        load_wrk(port, texts, args.clients, 2)  # warm-up
        result = load_wrk(port, texts, args.clients, args.seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"stub encoder, {args.clients} wrk connections: {result['requests_per_s']:.0f} requests/s, "
          f"{result['errors']} errors, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
