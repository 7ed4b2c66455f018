"""The report's machine section, and the table bench prints."""

from __future__ import annotations

import os
import platform
import sys

from max_gpt2.machine import cpu_name


def machine(load_before) -> dict:
    """The machine, its software, and its load before and after the run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    versions = {}
    for package in ("max", "torch", "transformers", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:  # not installed: just not reported
            versions[package] = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None,
            "os": platform.platform(), "python": platform.python_version(), "versions": versions,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def fmt(value, digits=1) -> str:
    """A figure for the table: `digits` after the point, or in scientific notation if negative."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if digits < 0:
        return f"{value:.{-digits}e}"
    return f"{value:,.{digits}f}"


def print_table(report: dict, batch: int, out=None) -> None:
    out = out or sys.stdout
    engines = report["engines"]
    names = list(engines)
    lengths = report["workload"]["prompt_lengths"]
    m = report["model"]
    c = m["config"]
    kind = "seeded random weights" if m["random_weights"] else f"weights from {m['source']}"
    print(f"\nGPT-2 {m['parameter_count'] / 1e6:.0f}M ({c['n_layer']} layers, {c['n_embd']} wide; {kind}), float32 unless "
          f"an engine's name says otherwise, "
          f"on {report['machine']['cpu']} ({report['machine']['cores']} cores)", file=out)
    rows = [(f"prefill {n} tokens (ms)", [e["prefill_ms"].get(str(n)) for e in engines.values()], 1) for n in lengths]
    rows += [
        (f"decode, batch 1 (tokens/s)", [e["decode_tokens_per_s"] for e in engines.values()], 1),
        ("  share of the roofline", [e["decode_roofline_fraction"] for e in engines.values()], 2),
        (f"batch {batch} (tokens/s)", [e[f"batch{batch}_tokens_per_s"] for e in engines.values()], 1),
        ("time to first token (ms)", [e["ttft_ms"] for e in engines.values()], 1),
        ("compile, cold cache (s)", [e["compile_s_cold"] for e in engines.values()], 1),
        ("compile, warm cache (s)", [e["compile_s_warm"] for e in engines.values()], 1),
        ("RSS after load (MB)", [e["rss_after_load_mb"] for e in engines.values()], 0),
        ("peak RSS (MB)", [e["peak_rss_mb"] for e in engines.values()], 0),
        ("greedy tokens = transformers", [e["greedy_tokens_match"] for e in engines.values()], 0),
        ("teacher-forced top-1 = transformers", [e["teacher_forced_top1_agreement"] for e in engines.values()], 3),
        ("  max |Δlogit|", [e["max_abs_logit_diff"] for e in engines.values()], 5),
        ("  mean KL(transformers ‖ engine)", [e["teacher_forced_kl"] for e in engines.values()], -1),
        ("rounds", [e["rounds"] for e in engines.values()], 0),
    ]
    width = max(len(r[0]) for r in rows) + 2
    col = max(12, *(len(n) + 2 for n in names))
    print("".ljust(width) + "".join(n.rjust(col) for n in names), file=out)
    for label, values, digits in rows:
        print(label.ljust(width) + "".join(fmt(v, digits).rjust(col) for v in values), file=out)
    print("\nfigures: medians over rounds; the time-boxed or failed are missing (—)", file=out)
    bw, roof = report["memory_bandwidth_gb_s"], report["roofline_decode_tokens_per_s"]
    if bw:
        print(f"roofline: {bw:.1f} GB/s read ÷ {m['weight_bytes_per_decode_step'] / 1e6:.0f} MB of weights per "
              f"token = {roof:.1f} tokens/s (median of {len(report['memory_bandwidth_gb_s_per_round'])} rounds' reads)",
              file=out)
    for name, e in engines.items():
        if e["status"] != "ok":
            print(f"{name}: {e['status']}", file=out)
    if report.get("targets"):
        print("targets, ours against torch-eager and the best float32 peer: the median of the rounds' ratios "
              "(each round's)", file=out)
    for t in report.get("targets", []):
        mark = "?" if t["met"] is None else ("✓" if t["met"] else "✗")
        rounds = ", ".join(fmt(v, 2) for v in t["per_round"])
        print(f"  {mark} {t['target']}: {fmt(t['measured'], 2)} ({rounds})", file=out)
