"""The PNG: the engines side by side, one panel per workload."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from max_gpt2.bench.arguments import EVERY_ROUND
from max_gpt2.bench.report import fmt

COLORS = {"max-compiled-kv": "#d62728", "max-gpt2-bf16": "#e377c2", "max-gpt2-int8": "#bcbd22", "max-compiled-recompute": "#ff9896", "max-eager": "#c7c7c7",
          "torch-eager": "#1f77b4", "torch-compile": "#aec7e8", "ctranslate2-fp32": "#2ca02c",
          "onnxruntime-fp32": "#9467bd", "llama.cpp-f32": "#8c564b", "ctranslate2-int8": "#98df8a",
          "llama.cpp-q8_0": "#c49c94"}


def plot(report: dict, path: str) -> None:
    """Six panels, the engines side by side in each; a missing figure is marked n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = report["engines"]
    names = list(engines)
    batch = report["workload"]["batch"]
    lengths = [str(n) for n in report["workload"]["prompt_lengths"]]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    panels = [
        ("decode, batch 1 (tokens/s, higher is better)", "decode_tokens_per_s"),
        (f"batch {batch} (tokens/s, higher is better)", f"batch{batch}_tokens_per_s"),
        ("time to first token (ms, lower is better)", "ttft_ms"),
        ("compile: cold / warm cache (s, lower is better)", ("compile_s_cold", "cold", "compile_s_warm", "warm", 1)),
        ("resident memory: after load / peak (MB, lower is better)",
         ("rss_after_load_mb", "after load", "peak_rss_mb", "peak", 0)),
    ]
    # Prefill: one group of bars per prompt length.
    ax = axes[0][0]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [engines[name]["prefill_ms"].get(n) for n in lengths]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(lengths))]
        ax.bar(xs, [v or 0 for v in values], width, color=COLORS.get(name), label=name)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(lengths)), [f"{n} tokens" for n in lengths])
    ax.set_yscale("log")
    ax.set_title("prefill latency (ms, log scale, lower is better)")
    ax.legend(fontsize=8)
    for ax, (title, key) in zip([a for row in axes for a in row][1:], panels):
        if isinstance(key, tuple):  # two figures per engine: hatched, then plain
            first, first_label, second, second_label, digits = key
            xs = np.arange(len(names))
            for dx, field, label, hatch in ((-0.2, first, first_label, "//"), (0.2, second, second_label, None)):
                values = [engines[n].get(field) for n in names]
                ax.bar(xs + dx, [v or 0 for v in values], 0.4, color=[COLORS.get(n) for n in names], hatch=hatch,
                       edgecolor="black", label=label)
                for x, v in zip(xs, values):
                    ax.text(x + dx, v or 0, fmt(v, digits) if v is not None else "n/a", ha="center", va="bottom",
                            fontsize=6, rotation=90 if digits == 0 else 0)
            ax.legend(fontsize=8)
        else:
            values = [engines[n][key] for n in names]
            bars = ax.bar(range(len(names)), [v or 0 for v in values], color=[COLORS.get(n) for n in names])
            for b, v in zip(bars, values):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), fmt(v) if v is not None else "n/a",
                        ha="center", va="bottom", fontsize=8)
            for i, n in enumerate(names):  # each round's figure, where there were several
                rounds = engines[n]["per_round"].get(key, [])
                if len(rounds) > 1:
                    ax.plot([i] * len(rounds), rounds, "k.", markersize=4, label="each round" if i == 0 else None)
            if key == "decode_tokens_per_s" and report["roofline_decode_tokens_per_s"]:
                roof = report["roofline_decode_tokens_per_s"]
                ax.axhline(roof, color="black", linestyle="--", linewidth=1)
                ax.text(len(names) - 0.5, roof, f"roofline {roof:.0f}", ha="right", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
    m = report["model"]
    weights = "seeded random weights" if m["random_weights"] else Path(m["source"]).name
    every = [n for n in names if n in EVERY_ROUND]
    rounds = report["workload"]["rounds"]
    which = ("every engine" if len(every) == len(names) else
             f"{', '.join(every)}; of one round for the others")
    fig.suptitle(f"GPT-2 {m['parameter_count'] / 1e6:.0f}M ({weights}; float32 unless named) on {report['machine']['cpu']}, "
                 f"{report['machine']['cores']} cores — one run; bars: medians of {rounds} rounds for {which} "
                 "(dots: each round)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
