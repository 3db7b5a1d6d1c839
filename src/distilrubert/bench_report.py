"""The reports of ``distilrubert bench``: the markdown table and the chart of a benchmark JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["chart", "markdown"]


def markdown(report: dict, command: str) -> str:
    """The markdown tables of a report."""
    gemm = report["gemm"]["fp32_flops"] / 1e9
    lines = [
        "# distilrubert bench", "",
        f"Command: `{command}`", "",
        f"Hardware: {report['hardware']['cpu']}, {report['hardware']['cpus']} CPUs"
        f"{', GPU ' + report['hardware']['gpu'] if report['hardware']['gpu'] else ''}; threads {report['threads']}; "
        f"measured fp32 GEMM {gemm:.1f} GFLOP/s; load average at start {report['loadavg_start']}, "
        f"at end {report['loadavg_end']} (other processes on the machine skew timings); "
        f"torch {report['versions'].get('torch')}, onnxruntime {report['versions'].get('onnxruntime')}, "
        f"transformers {report['versions'].get('transformers')}; wall {report['wall_seconds']:.0f} s.", "",
        "Encodechka protocol: one text at a time (tokenize + forward + copy out, max length "
        f"{report['settings']['max_length']}) over {report['sentences']} sentences. Corpus: the sentence file "
        f"repeated (up to {report['settings']['corpus_size']} texts), length-sorted batches of "
        f"{report['settings']['corpus_batch_size']}; `eager` = plain transformers, unsorted padded batches of 32. "
        "% limit = achieved model FLOP/s / measured fp32 GEMM FLOP/s (int8 may exceed 100%). "
        "Peak RSS +MB = peak resident memory above the process's RSS when the backend started. "
        "The eager one-text reference is timed before and after the backends; the faster run is used.", "",
        "| model | backend | ms/text (encodechka) | x vs eager | corpus texts/s | x vs eager b32 | % fp32 limit "
        "| peak RSS +MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["models"]:
        base = entry["baseline"]
        lines.append(f"| {entry['model']} | eager (transformers) | {base['encodechka']['ms_per_text']:.2f} | 1.0 "
                     f"| {base['corpus']['texts_per_s']:.0f} | 1.0 | {base['corpus']['pct_fp32_matmul_limit']:.0f} "
                     f"| {base['peak_rss_mb']:.0f} |")
        for backend, res in entry["backends"].items():
            if "error" in res:
                lines.append(f"| {entry['model']} | {backend} | failed: {res['error'][:80]} | | | | | |")
                continue
            lines.append(
                f"| {entry['model']} | {backend} | {res['encodechka']['ms_per_text']:.2f} "
                f"| {res['encodechka']['speedup_vs_eager']:.1f} | {res['corpus']['texts_per_s']:.0f} "
                f"| {res['corpus']['speedup_vs_eager_b32_unsorted']:.1f} "
                f"| {res['corpus']['pct_fp32_matmul_limit']:.0f} | {res['peak_rss_mb']:.0f} |")
    lines += ["", "## Models", "", "| model | source | params | tokens/text | MFLOP/text | ONNX export s | fused ops "
              "| max abs diff fp32 | int8 mean cosine |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for entry in report["models"]:
        exp = entry.get("export", {})
        fused = ", ".join(f"{k} {v}" for k, v in exp.get("fused", {}).items())
        cosine = exp.get("mean_cosine_int8_vs_fp32")
        lines.append(f"| {entry['model']} | {entry['source']} | {entry['parameters'] / 1e6:.1f}M "
                     f"| {entry['tokens_per_text']:.1f} | {entry['flop_per_text'] / 1e6:.0f} "
                     f"| {exp.get('seconds', float('nan')):.0f} | {fused} "
                     f"| {exp.get('max_abs_diff_fp32_vs_torch', float('nan')):.1e} "
                     f"| {'' if cosine is None else f'{cosine:.4f}'} |")
    lines += ["", "## Forward pass on synthetic ids (latency = batch 1)", "",
              "| model | backend | seq | batch | min ms | median ms | texts/s | % fp32 limit |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for entry in report["models"]:
        for backend, res in entry["backends"].items():
            for row in res.get("synthetic", []):
                lines.append(f"| {entry['model']} | {backend} | {row['seq']} | {row['batch']} | {row['min_ms']:.2f} "
                             f"| {row['median_ms']:.2f} | {row['texts_per_s']:.0f} "
                             f"| {row['pct_fp32_matmul_limit']:.0f} |")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    """A PNG with encodechka ms/text and corpus texts/s per model and backend (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["eager", *report["settings"]["backends"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for i, backend in enumerate(names):
        ms, tps = [], []
        for entry in report["models"]:
            res = entry["baseline"] if backend == "eager" else entry["backends"].get(backend, {})
            ok = "encodechka" in res
            ms.append(res["encodechka"]["ms_per_text"] if ok else 0)
            tps.append(res["corpus"]["texts_per_s"] if ok else 0)
        x = np.arange(len(report["models"])) + i * width
        axes[0].bar(x, ms, width, label=backend)
        axes[1].bar(x, tps, width, label=backend)
    labels = [e["model"] for e in report["models"]]
    for ax, title in zip(axes, ("encodechka: ms per text, one at a time (lower is better)",
                                "corpus throughput: texts/s (higher is better)"), strict=True):
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['hardware']['cpu']}, {report['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
