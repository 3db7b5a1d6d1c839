"""Load test of ``distilrubert serve``: concurrent clients sending single texts, micro-batching on vs off.

Starts the server twice as subprocesses on free loopback ports (``--batching`` and ``--no-batching``), runs
``--clients`` clients that each POST one sentence at a time to ``/embed``, alternating between the two
servers in ``--rounds`` windows that add up to ``--seconds`` per mode (so a slow spell of a shared machine
hits both modes alike), and reports requests/s, errors and latency percentiles for both, plus the
throughput ratio.

    python scripts/load_test.py --model DIR --sentences ../shared/data/encodechka/sentences_sample.txt \
        --output load_test.json

Client and server share the machine's cores; the numbers are for this setting, not a server's capacity.
``--client wrk`` drives the load with wrk (a C load generator: ``apt-get install wrk``), one connection
per client and one request in flight per connection, so the clients take far less of the shared CPU than
Python asyncio clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, batching: bool, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distilrubert", "serve", "--model", model,
           "--port", str(port), "--batching" if batching else "--no-batching", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("server did not start within 120 s")


def build_preset_model(name: str, sentences: str) -> str:
    """A preset's random-weight model (bench's tokenizer) with model.onnx and model_quantized.onnx beside it."""
    from distilrubert.bench import BenchConfig, build_preset, preset_tokenizer
    from distilrubert.export import export_encoder_onnx

    workdir = Path(tempfile.mkdtemp(prefix="distilrubert-load-test-"))
    tokenizer = preset_tokenizer(BenchConfig(output=str(workdir / "unused"), sentences=sentences), workdir)
    model_dir = build_preset(name, tokenizer, workdir, seed=0)
    export_encoder_onnx(model_dir, model_dir, quantize=True, task="encoder")
    return str(model_dir)


async def load(port: int, texts: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    url = f"http://127.0.0.1:{port}/embed"
    stop = time.perf_counter() + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                response = await http.post(url, json={"texts": [texts[i % len(texts)]]})
                ok = response.status_code == 200 and len(response.json()["embeddings"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        # One warm-up request per client so model warm-up is not measured.
        await asyncio.gather(*(http.post(url, json={"texts": [texts[0]]}) for _ in range(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - start
    arr = np.asarray(latencies) * 1000
    return {"requests": len(arr), "errors": errors, "seconds": elapsed, "requests_per_s": len(arr) / elapsed,
            "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99))}


WRK_SCRIPT = """
local bodies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def load_wrk(port: int, texts: list[str], clients: int, seconds: float) -> dict:
    """The same load through wrk: ``clients`` connections, each sending one text a request."""
    workdir = Path(tempfile.mkdtemp(prefix="distilrubert-wrk-"))
    (workdir / "bodies.jsonl").write_text("".join(json.dumps({"texts": [t]}, ensure_ascii=False) + "\n"
                                                  for t in texts), encoding="utf-8")
    (workdir / "embed.lua").write_text(WRK_SCRIPT, encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/embed", json={"texts": [texts[0]]}, timeout=30)  # warm-up
    out = subprocess.run(["wrk", "-t", "1", "-c", str(clients), "-d", f"{seconds:g}s", "--latency",
                          "-s", str(workdir / "embed.lua"), url, "--", str(workdir / "bodies.jsonl")],
                         capture_output=True, text=True, check=True).stdout
    shutil.rmtree(workdir, ignore_errors=True)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    requests = int(done.group(1))
    elapsed = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors
                                                           else 0)
    return {"client": "wrk", "requests": requests, "errors": errors, "seconds": elapsed,
            "requests_per_s": requests / elapsed,
            "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"), "wrk_output": out}


def combine(rounds: list[dict]) -> dict:
    """One mode's rounds together: requests/s over all of them, errors summed, latency quantiles as the
    request-weighted mean of the rounds' (p99: the worst round's)."""
    requests = sum(r["requests"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    weighted = {q: sum(r[q] * r["requests"] for r in rounds) / max(requests, 1) for q in ("p50_ms", "p90_ms")}
    return {"requests": requests, "errors": sum(r["errors"] for r in rounds), "seconds": seconds,
            "requests_per_s": requests / seconds, **weighted, "p99_ms": max(r["p99_ms"] for r in rounds),
            "rounds_requests_per_s": [r["requests_per_s"] for r in rounds], "rounds": rounds}


def model_batch_gain(model: str, texts: list[str], clients: int, server_args: list[str], rounds: int = 30) -> dict:
    """In-process ceiling of what micro-batching can give: the Encoder's time per text for ``clients`` random
    texts in one call vs one at a time (same backend flags as the server; no HTTP)."""
    import random

    from distilrubert import Encoder

    flags = {k: v for k, v in zip(server_args[::2], server_args[1::2], strict=False)}
    threads = int(flags["--threads"]) if "--threads" in flags else None
    encoder = Encoder.from_pretrained(model, backend=flags.get("--backend", "auto"), threads=threads,
                                      quantized="--quantized" in server_args)
    rng = random.Random(0)
    batches = [rng.sample(texts, clients) for _ in range(rounds)]
    encoder.encode(batches[0], pooling="mean")  # warm-up
    start = time.perf_counter()
    for batch in batches:
        encoder.encode(batch, pooling="mean")
    batched = (time.perf_counter() - start) / (rounds * clients)
    start = time.perf_counter()
    for batch in batches:
        for text in batch:
            encoder.encode([text], pooling="mean")
    single = (time.perf_counter() - start) / (rounds * clients)
    return {"single_ms_per_text": round(single * 1e3, 3), "batched_ms_per_text": round(batched * 1e3, 3),
            "batch_size": clients, "gain": round(single / batched, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="Model directory to serve.")
    model.add_argument("--preset", help="Serve a random-weight model of a bench preset (e.g. distilrubert-tiny-5k), "
                       "with its ONNX fp32 and int8 graphs.")
    parser.add_argument("--sentences", required=True, help="Text file, one sentence a line.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="Load time per mode (split over --rounds).")
    parser.add_argument("--rounds", type=int, default=4,
                        help="Alternate the load between the two servers in this many windows per mode.")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="Unmeasured load on each server first.")
    parser.add_argument("--client", choices=["python", "wrk"], default="python",
                        help="Load generator: asyncio httpx clients, or wrk (lighter; must be installed).")
    parser.add_argument("--output", default=None, help="Write the JSON report here.")
    parser.add_argument("server_args", nargs="*", help="Extra `serve` flags after `--` (e.g. --backend onnx).")
    args = parser.parse_args(argv)
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("--client wrk: wrk is not installed (apt-get install wrk)")
    texts = [t.strip() for t in Path(args.sentences).read_text(encoding="utf-8").splitlines() if t.strip()]
    if args.preset:
        args.model = build_preset_model(args.preset, args.sentences)
    report = {"clients": args.clients, "client": args.client, "seconds": args.seconds, "rounds": args.rounds,
              "warmup_seconds": args.warmup_seconds,
              "server_args": args.server_args,
              "cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": list(os.getloadavg())}
    report["model_batch_gain"] = gain = model_batch_gain(args.model, texts, args.clients, args.server_args)
    print(f"in-process Encoder: {gain['single_ms_per_text']:.2f} ms/text one at a time, "
          f"{gain['batched_ms_per_text']:.2f} ms/text in batches of {args.clients}: {gain['gain']:.2f}x "
          "(the most micro-batching can gain before HTTP costs)")
    # Both servers run side by side and the load alternates between them in --rounds windows, so a slow
    # spell of a shared machine hits both modes alike instead of deciding the ratio.
    ports, procs = {}, {}

    def drive(batching: bool, seconds: float) -> dict:
        if args.client == "wrk":
            return load_wrk(ports[batching], texts, args.clients, seconds)
        return asyncio.run(load(ports[batching], texts, args.clients, seconds))

    try:
        for batching in (True, False):
            ports[batching] = free_port()
            procs[batching] = start_server(args.model, ports[batching], batching, args.server_args)
        if args.warmup_seconds > 0:  # warm-up load, not measured (first batches of new shapes, allocators)
            for batching in (True, False):
                drive(batching, args.warmup_seconds)
        rounds: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(args.rounds):
            for batching in ((True, False) if r % 2 == 0 else (False, True)):
                rounds[batching].append(drive(batching, args.seconds / args.rounds))
        for batching in (True, False):
            result = combine(rounds[batching])
            result["server_metrics"] = httpx.get(f"http://127.0.0.1:{ports[batching]}/metrics?format=json").json()
            report["batching_on" if batching else "batching_off"] = result
            print(f"batching {'on ' if batching else 'off'}: {result['requests_per_s']:.0f} req/s "
                  f"(rounds: {', '.join(f'{x:.0f}' for x in result['rounds_requests_per_s'])}), "
                  f"{result['errors']} errors, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    report["throughput_ratio_on_vs_off"] = (report["batching_on"]["requests_per_s"]
                                            / report["batching_off"]["requests_per_s"])
    report["loadavg_end"] = list(os.getloadavg())
    print(f"throughput ratio (batching on / off): {report['throughput_ratio_on_vs_off']:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["batching_on"]["errors"] == 0 and report["batching_off"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
