"""ONNX Runtime's SkipLayerNormalization against the Add + LayerNormalization it fuses, on the CPU.

Why ``export`` no longer makes that fusion and every session disables ORT's own
(``encoder.ORT_DISABLED_OPTIMIZERS``): two one-op graphs, ``LayerNorm(x + skip + bias)``, timed side by
side in one process at the encoder widths (264 = the 5K student, 768 = the teacher) for a 33-token text
(the mean of ``sentences_sample.txt``) and a batch of 32. Microseconds per call, minimum over rounds.

Usage (numbers in docs/performance.md):
    python scripts/bench_ort_layernorm.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def graph(hidden: int, fused: bool) -> bytes:
    """A model computing ``LayerNorm(x + skip + bias)`` with the fused op or with Add, Add, LayerNormalization."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(name, TensorProto.FLOAT, [hidden], rng.normal(size=hidden).astype(np.float32))
             for name in ("gamma", "beta", "bias")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden])
    skip = helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["b", "s", hidden])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])
    if fused:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "bias"], ["xb"]), helper.make_node("Add", ["xb", "skip"], ["s"]),
                 helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    model = helper.make_model(helper.make_graph(nodes, "ln", [x, skip], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def time_us(session, feed: dict, calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"onnxruntime {ort.__version__}, {args.threads} threads; us per call (min of {args.rounds} rounds)")
    print("| hidden | batch x tokens | SkipLayerNormalization | Add + Add + LayerNormalization | ratio |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for hidden in (264, 768):
        sessions = {fused: ort.InferenceSession(graph(hidden, fused), options, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=[] if fused else ["SkipLayerNormFusion"])
                    for fused in (True, False)}
        for batch, tokens in ((1, 33), (32, 33)):
            feed = {name: rng.normal(size=(batch, tokens, hidden)).astype(np.float32) for name in ("x", "skip")}
            np.testing.assert_allclose(*(s.run(None, feed)[0] for s in sessions.values()), atol=1e-4)
            calls = max(50, args.calls // batch)
            fused_us, plain_us = (time_us(sessions[f], feed, calls, args.rounds) for f in (True, False))
            print(f"| {hidden} | {batch} x {tokens} | {fused_us:.1f} | {plain_us:.1f} | {fused_us / plain_us:.2f}x |")


if __name__ == "__main__":
    main()
