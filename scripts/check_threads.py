"""One-text torch forward time when one thread runs the model vs when two threads have run torch ops.

With torch's OpenMP each thread that runs ops gets its own pool of worker threads; once two have, a small
machine has more OpenMP threads than cores and every op pays a wake-up. This prints the Encoder's ms per
text (one text at a time) in three settings, alternating rounds: loaded and run in one worker thread;
loaded in the main thread and run in a worker (what ``serve`` did before loading in its worker); and the
main thread after that.

    python scripts/check_threads.py --model DIR --sentences ../shared/data/encodechka/sentences_sample.txt
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sentences", required=True)
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    texts = [t.strip() for t in Path(args.sentences).read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = texts[: args.texts]

    # The one-thread setting runs in a fresh process: torch must never have run ops in its main thread.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        one = pool.apply(_one_thread, (args.model, texts, args.rounds))
    from distilrubert import Encoder

    encoder = Encoder.from_pretrained(args.model, backend="torch")  # loaded (and probed) in the main thread
    worker = ThreadPoolExecutor(1)
    two, main_after = [], []
    for _ in range(args.rounds):
        two.append(worker.submit(_per_text, encoder, texts).result())
        main_after.append(_per_text(encoder, texts))
    fmt = ", ".join
    print(f"one thread only:                   {fmt(f'{x:.2f}' for x in one)} ms/text")
    print(f"loaded in main, run in a worker:   {fmt(f'{x:.2f}' for x in two)} ms/text")
    print(f"main thread, after the worker ran: {fmt(f'{x:.2f}' for x in main_after)} ms/text")
    return 0


def _one_thread(model: str, texts: list[str], rounds: int) -> list[float]:
    from distilrubert import Encoder

    worker = ThreadPoolExecutor(1)
    encoder = worker.submit(Encoder.from_pretrained, model, backend="torch").result()
    return [worker.submit(_per_text, encoder, texts).result() for _ in range(rounds)]


def _per_text(encoder, texts: list[str]) -> float:
    """ms per text, one text at a time."""
    start = time.perf_counter()
    for text in texts:
        encoder.encode([text], pooling="mean")
    return (time.perf_counter() - start) / len(texts) * 1e3


if __name__ == "__main__":
    raise SystemExit(main())
