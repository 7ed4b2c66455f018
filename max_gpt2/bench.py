"""Compiled MAX against eager inference on one GPT-2 checkpoint, each engine in its own process.

Engines:
  max-compiled-kv         ours: the compiled step graph with a key/value cache (GPT2.generate_tokens)
  max-compiled-recompute  the tutorial's design: the compiled full-sequence graph re-run over the
                          whole sequence for every new token
  max-eager               the same MAX modules called without compiling (time-boxed: very slow)
  torch-eager             transformers' generate with its key/value cache
  torch-compile           the same, with the model's forward under torch.compile (time-boxed)

Workloads: prefill latency by prompt length; decode tokens/s over N new tokens at batch 1; time to
first token; tokens/s at batch 8; compile time with an empty (cold) and a filled (warm) compile
cache; peak resident memory. Greedy tokens of every engine are checked against transformers.
The roofline is the memory read bandwidth measured in the same run divided by the weight bytes
one decode step reads: the fastest any engine could decode one sequence on this machine.

Without --model, a seeded random checkpoint at GPT-2's real 124M configuration is written to a
temporary folder and benchmarked (speed does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from max_gpt2.errors import GPT2Error

ENGINES = ("max-compiled-kv", "max-compiled-recompute", "max-eager", "torch-eager", "torch-compile")
COMPILED = ("max-compiled-kv", "max-compiled-recompute", "torch-compile")  # these have compile times
REFERENCE = "torch-eager"  # transformers itself: its greedy tokens are the ones to match
FIELDS = ("decode_tokens_per_s", "prefill_ms", "batch_tokens_per_s", "ttft_ms", "compile_s_cold",
          "compile_s_warm", "peak_rss_mb", "greedy_tokens_match")
DECODE_PROMPT = 16  # tokens in the prompt of the decode and batch workloads
BANDWIDTH_GIB = 1.0
BANDWIDTH_PASSES = 7


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="a GPT-2 checkpoint (folder, .safetensors or pytorch_model.bin; default: a seeded "
                        "random checkpoint at the 124M configuration, written to a temporary folder)")
    p.add_argument("--engines", default=",".join(ENGINES), metavar="LIST",
                   help=f"comma-separated, from {', '.join(ENGINES)} (default: all)")
    p.add_argument("--prompt-lengths", default="16,128,512", metavar="LIST",
                   help="prompt lengths for the prefill latency (default: 16,128,512)")
    p.add_argument("--new-tokens", type=int, default=128, metavar="N",
                   help="tokens generated at batch 1, for decode tokens/s (default: 128)")
    p.add_argument("--batch", type=int, default=8, metavar="B", help="the batch size of the throughput run (default: 8)")
    p.add_argument("--batch-new-tokens", type=int, default=64, metavar="N",
                   help="tokens generated per sequence in the throughput run (default: 64)")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold-cache compile (each takes minutes); compile_s_cold is then null")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="seconds any one engine process may run (default: 600)")
    p.add_argument("--eager-timeout", type=float, metavar="S",
                   help="seconds for max-eager, which needs minutes per forward; what finished is reported "
                        "(default: 120; 10 with --quick)")
    p.add_argument("--compile-timeout", type=float, default=300, metavar="S",
                   help="seconds for torch-compile's processes (default: 300)")
    p.add_argument("--quick", action="store_true",
                   help="a check that bench works, not a measurement: prompt lengths 8,16, 8 new tokens, "
                        "no cold compile, max-eager time-boxed to 10 s")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw the engines side by side in a PNG")


def run(args) -> int:
    engines = _engines(args.engines)
    if args.quick:
        args.prompt_lengths, args.new_tokens, args.batch_new_tokens, args.no_cold = "8,16", 8, 8, True
    if args.eager_timeout is None:
        args.eager_timeout = 10 if args.quick else 120
    lengths = _lengths(args.prompt_lengths)
    if args.new_tokens < 2 or args.batch_new_tokens < 1 or args.batch < 1:
        raise GPT2Error("--new-tokens must be >= 2, --batch-new-tokens and --batch >= 1")
    _check_plot_backend(args.plot)

    say = _Progress()
    with tempfile.TemporaryDirectory(prefix="max-gpt2-bench-") as scratch:
        scratch = Path(scratch)
        model_path, random_weights = _checkpoint(args.model, scratch, say)
        config, parameters, weight_bytes = _describe(model_path)
        if max(lengths) >= config.n_positions or DECODE_PROMPT + max(args.new_tokens, args.batch_new_tokens) > config.n_positions:
            raise GPT2Error(f"the workloads do not fit the model's context of {config.n_positions} tokens: "
                            "lower --prompt-lengths or --new-tokens")
        spec = dict(model=str(model_path), lengths=lengths, new_tokens=args.new_tokens, batch=args.batch,
                    batch_new_tokens=args.batch_new_tokens, decode_prompt=DECODE_PROMPT, vocab=config.vocab_size)
        load_before = os.getloadavg()

        say(f"roofline: streaming read of {BANDWIDTH_GIB:g} GiB on {os.cpu_count()} cores, best of {BANDWIDTH_PASSES}")
        bw = _worker_process("bandwidth", "bench", spec, scratch, timeout=args.timeout)
        bandwidth = bw.values.get("bandwidth_gb_s")
        roofline = bandwidth * 1e9 / weight_bytes if bandwidth else None

        results = {}
        order = [REFERENCE] + [e for e in engines if e != REFERENCE]  # the reference tokens first
        for engine in order:
            results[engine] = _bench_engine(engine, spec, scratch, args, say)

    reference = results[REFERENCE]
    report = {
        "machine": _machine(load_before),
        "model": {"source": args.model or "seeded random weights (no --model)", "config": config.to_dict(),
                  "parameter_count": parameters, "random_weights": random_weights,
                  "weight_bytes_per_decode_step": weight_bytes},
        "workload": {"prompt_lengths": lengths, "new_tokens": args.new_tokens, "batch": args.batch,
                     "batch_new_tokens": args.batch_new_tokens, "decode_prompt_tokens": DECODE_PROMPT,
                     "dtype": "float32", "quick": bool(args.quick)},
        "bench_seconds": None,
        "memory_bandwidth_gb_s": bandwidth,
        "roofline_decode_tokens_per_s": roofline,
        "engines": {e: _engine_report(results[e], reference, roofline, args.batch) for e in engines},
    }
    report["targets"] = _targets(report["engines"], roofline, max(lengths))
    report["bench_seconds"] = round(say.seconds, 1)
    _print_table(report, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        say(f"wrote {args.plot}")
    return 0


# --- the parent: checkpoint, engine processes, report ------------------------------------------


def _engines(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown or not names:
        raise GPT2Error(f"unknown engine {', '.join(unknown) or '(none)'}; choose from {', '.join(ENGINES)}")
    return list(dict.fromkeys(names))


def _lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise GPT2Error(f"--prompt-lengths must be whole numbers separated by commas, got {text!r}") from None
    if not lengths or lengths[0] < 1:
        raise GPT2Error(f"--prompt-lengths must be >= 1, got {text!r}")
    return lengths


def _check_plot_backend(path) -> None:
    if path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise GPT2Error("--plot needs matplotlib: pip install 'max-gpt2[bench]'") from None


def _checkpoint(model: str | None, scratch: Path, say) -> tuple[Path, bool | None]:
    """The checkpoint to run, and whether its weights are random (None: the user's, not known)."""
    if model:
        path = Path(model).expanduser()
        if not path.exists():
            raise GPT2Error(f"no such checkpoint: {model} (bench runs local checkpoints; for a Hub id, "
                            "download it first and pass its folder)")
        return path, None
    from max_gpt2.config import GPT2Config
    from max_gpt2.reference import make_checkpoint

    say("no --model: benchmarking a seeded random checkpoint at GPT-2's 124M configuration "
        "(openai-community/gpt2's file layout; speed does not depend on the weight values)")
    folder = scratch / "gpt2-124M-random"
    make_checkpoint(folder, GPT2Config.preset("gpt2"), layout="hub", seed=0)
    return folder, True


def _describe(path: Path):
    """The config, the parameter count, and the bytes of weights one decode step reads."""
    from max_gpt2 import weights as ckpt

    found = ckpt.resolve(path)
    state = ckpt.adapt(found.tensors, found.config)
    c = found.config
    parameters = sum(int(a.size) for a in state.values())
    # Every weight is read once per token, except the position table, of which one row is.
    read = parameters - c.n_positions * c.n_embd + c.n_embd
    return c, parameters, read * 4  # float32


def _bench_engine(engine: str, spec: dict, scratch: Path, args, say) -> dict:
    """Runs one engine's processes: a cold compile (if any), then the measured run."""
    timeout = {"max-eager": args.eager_timeout, "torch-compile": args.compile_timeout}.get(engine, args.timeout)
    env: dict[str, str] = {}
    if engine in COMPILED and not args.no_cold:
        # An empty cache of its own; the measured run that follows reuses it, warm.
        cache = scratch / f"cache-{engine}"
        cache.mkdir()
        env = {"MODULAR_DERIVED_PATH": str(cache)} if engine.startswith("max") else {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    runs = []
    if env:
        say(f"{engine}: compiling with an empty cache (cold; minutes)")
        runs.append(_worker_process(engine, "cold", spec, scratch, env=env, timeout=timeout))
    label = {"max-eager": f"(time-boxed to {timeout:.0f} s)"}.get(engine, "")
    say(f"{engine}: measuring {label}".rstrip())
    runs.append(_worker_process(engine, "bench", spec, scratch, env=env, timeout=timeout))
    values: dict = {}
    for r in runs:
        values.update(r.values)
    values["peak_rss_mb"] = max(r.peak_rss_mb for r in runs)
    values["status"] = "; ".join(r.status for r in runs if r.status != "ok") or "ok"
    if values["status"] != "ok":
        say(f"{engine}: {values['status']}")
    return values


class _Finished:
    def __init__(self, values: dict, peak_rss_mb: float, status: str) -> None:
        self.values, self.peak_rss_mb, self.status = values, peak_rss_mb, status


def _worker_process(engine: str, role: str, spec: dict, scratch: Path, *, env=None, timeout: float) -> _Finished:
    """Runs `python -m max_gpt2.bench` for one engine and role; collects what it reported.

    The worker appends each figure to a file as soon as it is measured, so an engine stopped by
    its time limit still reports what finished. The peak RSS comes from the kernel (wait4).
    """
    out = scratch / f"{engine}-{role}.jsonl"
    log = scratch / f"{engine}-{role}.log"
    job = {**spec, "engine": engine, "role": role, "out": str(out)}
    # env= always: importing MAX puts PYTHONEXECUTABLE in the real environment, and a child that
    # inherits it would start outside this virtual environment.
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
    child_env.pop("PYTHONEXECUTABLE", None)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "max_gpt2.bench", json.dumps(job)], env=child_env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline and not timed_out:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the engine and any compile workers
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
    values = {}
    if out.exists():
        for line in out.read_text().splitlines():
            item = json.loads(line)
            if "length" in item:
                values.setdefault(item["name"], {})[str(item["length"])] = item["value"]
            else:
                values[item["name"]] = item["value"]
    if timed_out:
        status = f"{role}: stopped at the {timeout:.0f} s time limit"
    elif proc.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        status = f"{role}: failed ({tail[0][:160] if tail else f'exit {proc.returncode}'})"
    else:
        status = "ok"
    return _Finished(values, usage.ru_maxrss / 1024, status)


def _engine_report(values: dict, reference: dict, roofline, batch: int) -> dict:
    report = {
        "decode_tokens_per_s": values.get("decode_tokens_per_s"),
        "prefill_ms": values.get("prefill_ms", {}),
        f"batch{batch}_tokens_per_s": values.get("batch_tokens_per_s"),
        "ttft_ms": values.get("ttft_ms"),
        "compile_s_cold": values.get("compile_s_cold"),
        "compile_s_warm": values.get("compile_s_warm"),
        "peak_rss_mb": round(values["peak_rss_mb"], 1),
        "greedy_tokens_match": None,
        "greedy_tokens_checked": 0,
        "status": values["status"],
    }
    decode = report["decode_tokens_per_s"]
    report["decode_roofline_fraction"] = decode / roofline if decode and roofline else None
    rows = (values.get("decode_tokens") or []) + (values.get("batch_tokens") or [])
    if rows and reference.get("reference_tokens"):
        same, checked = _compare(rows, reference["reference_tokens"], reference["reference_margins"])
        report["greedy_tokens_match"], report["greedy_tokens_checked"] = same, checked
    return report


NEAR_TIE = 0.01  # logits; two implementations' float32 sums differ by up to ~1e-3 here


def _compare(rows, reference, margins) -> tuple[bool, int]:
    """Whether every row equals transformers' greedy tokens, and how many tokens were compared.

    Each row is compared up to the first step where transformers' two best logits are within
    NEAR_TIE: there, float32 rounding may pick either, and after it the texts legitimately part.
    (transformers' own batched run parts from its single-row run at such a step.)
    """
    checked = 0
    for ours, theirs, gaps in zip(rows, reference, margins):
        n = next((i for i, g in enumerate(gaps) if g < NEAR_TIE), len(gaps))
        if ours[:n] != theirs[:n]:
            return False, checked + n
        checked += n
    return True, checked


# The targets for the compiled engine, against transformers eager in the same run.
TARGETS = (
    ("decode ≥ 2× torch-eager", "decode_tokens_per_s", 2.0),
    ("prefill of the longest prompt ≥ 2× torch-eager (latency ratio)", "prefill_ms", 2.0),
    ("batch throughput ≥ 3× torch-eager", "batch", 3.0),
)


def _targets(engines: dict, roofline, longest: int) -> list[dict]:
    ours, theirs = engines.get("max-compiled-kv"), engines.get(REFERENCE)
    if not ours or not theirs:
        return []
    batch_key = next(k for k in ours if k.startswith("batch"))

    def ratio(key):
        if key == "prefill_ms":
            a, b = theirs["prefill_ms"].get(str(longest)), ours["prefill_ms"].get(str(longest))
        else:
            key = batch_key if key == "batch" else key
            a, b = ours.get(key), theirs.get(key)
        return a / b if a and b else None

    rows = [{"target": name, "measured": ratio(key), "goal": goal} for name, key, goal in TARGETS]
    rows.append({"target": "decode ≥ 50% of the roofline", "measured": ours["decode_roofline_fraction"], "goal": 0.5})
    rows.append({"target": "warm compile ≤ 5 s", "measured": ours["compile_s_warm"], "goal": 5.0, "at_most": True})
    for r in rows:
        m = r["measured"]
        r["met"] = None if m is None else (m <= r["goal"] if r.get("at_most") else m >= r["goal"])
    return rows


def _machine(load_before) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = None
    versions = {}
    for package in ("max", "torch", "transformers", "numpy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001  not installed: just not reported
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None,
            "os": platform.platform(), "python": platform.python_version(), "versions": versions,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


class _Progress:
    """Progress lines on stderr, each with the time since the benchmark started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(self.seconds)
        print(f"· [{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


# --- output -------------------------------------------------------------------------------------


def _fmt(value, digits=1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,.{digits}f}"


def _print_table(report: dict, batch: int, out=None) -> None:
    out = out or sys.stdout
    engines = report["engines"]
    names = list(engines)
    lengths = report["workload"]["prompt_lengths"]
    m = report["model"]
    c = m["config"]
    kind = "seeded random weights" if m["random_weights"] else f"weights from {m['source']}"
    print(f"\nGPT-2 {m['parameter_count'] / 1e6:.0f}M ({c['n_layer']} layers, {c['n_embd']} wide; {kind}), float32, "
          f"on {report['machine']['cpu']} ({report['machine']['cores']} cores)", file=out)
    rows = [(f"prefill {n} tokens (ms)", [e["prefill_ms"].get(str(n)) for e in engines.values()], 1) for n in lengths]
    rows += [
        (f"decode, batch 1 (tokens/s)", [e["decode_tokens_per_s"] for e in engines.values()], 1),
        ("  share of the roofline", [e["decode_roofline_fraction"] for e in engines.values()], 2),
        (f"batch {batch} (tokens/s)", [e[f"batch{batch}_tokens_per_s"] for e in engines.values()], 1),
        ("time to first token (ms)", [e["ttft_ms"] for e in engines.values()], 1),
        ("compile, cold cache (s)", [e["compile_s_cold"] for e in engines.values()], 1),
        ("compile, warm cache (s)", [e["compile_s_warm"] for e in engines.values()], 1),
        ("peak RSS (MB)", [e["peak_rss_mb"] for e in engines.values()], 0),
        ("greedy tokens = transformers", [e["greedy_tokens_match"] for e in engines.values()], 0),
    ]
    width = max(len(r[0]) for r in rows) + 2
    col = max(12, *(len(n) + 2 for n in names))
    print("".ljust(width) + "".join(n.rjust(col) for n in names), file=out)
    for label, values, digits in rows:
        print(label.ljust(width) + "".join(_fmt(v, digits).rjust(col) for v in values), file=out)
    bw, roof = report["memory_bandwidth_gb_s"], report["roofline_decode_tokens_per_s"]
    if bw:
        print(f"\nroofline: {bw:.1f} GB/s read ÷ {m['weight_bytes_per_decode_step'] / 1e6:.0f} MB of weights per "
              f"token = {roof:.1f} tokens/s", file=out)
    for name, e in engines.items():
        if e["status"] != "ok":
            print(f"{name}: {e['status']}", file=out)
    for t in report.get("targets", []):
        mark = "?" if t["met"] is None else ("✓" if t["met"] else "✗")
        print(f"  {mark} {t['target']}: {_fmt(t['measured'], 2)}", file=out)


COLORS = {"max-compiled-kv": "#d62728", "max-compiled-recompute": "#ff9896", "max-eager": "#c7c7c7",
          "torch-eager": "#1f77b4", "torch-compile": "#aec7e8"}


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
        ("compile: cold / warm cache (s, lower is better)", None),
        ("peak RSS (MB, lower is better)", "peak_rss_mb"),
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
        if key is None:
            cold = [engines[n]["compile_s_cold"] for n in names]
            warm = [engines[n]["compile_s_warm"] for n in names]
            xs = np.arange(len(names))
            ax.bar(xs - 0.2, [v or 0 for v in cold], 0.4, color=[COLORS.get(n) for n in names], hatch="//",
                   edgecolor="black", label="cold")
            ax.bar(xs + 0.2, [v or 0 for v in warm], 0.4, color=[COLORS.get(n) for n in names], edgecolor="black",
                   label="warm")
            for x, c, w in zip(xs, cold, warm):
                for dx, v in ((-0.2, c), (0.2, w)):
                    ax.text(x + dx, v or 0, _fmt(v) if v is not None else "n/a", ha="center", va="bottom", fontsize=7)
            ax.legend(fontsize=8)
        else:
            values = [engines[n][key] for n in names]
            bars = ax.bar(range(len(names)), [v or 0 for v in values], color=[COLORS.get(n) for n in names])
            for b, v in zip(bars, values):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), _fmt(v) if v is not None else "n/a",
                        ha="center", va="bottom", fontsize=8)
            if key == "decode_tokens_per_s" and report["roofline_decode_tokens_per_s"]:
                roof = report["roofline_decode_tokens_per_s"]
                ax.axhline(roof, color="black", linestyle="--", linewidth=1)
                ax.text(len(names) - 0.5, roof, f"roofline {roof:.0f}", ha="right", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
    m = report["model"]
    weights = "seeded random weights" if m["random_weights"] else Path(m["source"]).name
    fig.suptitle(f"GPT-2 {m['parameter_count'] / 1e6:.0f}M float32 ({weights}) on {report['machine']['cpu']}, "
                 f"{report['machine']['cores']} cores — one run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the worker: one engine in its own process ---------------------------------------------------


class _Emitter:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, name: str, value, length: int | None = None) -> None:
        item = {"name": name, "value": value}
        if length is not None:
            item["length"] = length
        with open(self.path, "a") as f:
            f.write(json.dumps(item) + "\n")


def _timed(tokens: Iterator[np.ndarray]) -> tuple[list[list[int]], list[float]]:
    """Drains a generator of [batch] token arrays: the tokens [batch][n], and when each step's came."""
    steps, stamps = [], []
    for t in tokens:
        stamps.append(time.perf_counter())
        steps.append([int(x) for x in np.asarray(t).reshape(-1)])
    return [list(row) for row in zip(*steps)], stamps


def _worker(job: dict) -> int:
    emit = _Emitter(job["out"])
    if job["engine"] == "bandwidth":
        emit("bandwidth_gb_s", memory_bandwidth())
        return 0
    engine = ENGINE_CLASSES[job["engine"]](job["model"])
    compile_s = engine.compile()
    if compile_s is not None:
        emit("compile_s_cold" if job["role"] == "cold" else "compile_s_warm", compile_s)
    if job["role"] == "cold":
        return 0

    rng = np.random.default_rng(0)
    n, batch, vocab = job["new_tokens"], job["batch"], job["vocab"]
    slow = not engine.compiled_graph  # an eager engine: one try of each, no warm-up
    for length in job["lengths"]:
        ids = rng.integers(0, vocab, (1, length))
        if not slow:
            engine.prefill(ids)  # warm-up: first-call allocations, torch.compile's per-shape compile
        times = []
        for _ in range(1 if slow else 3):
            start = time.perf_counter()
            engine.prefill(ids)
            times.append(time.perf_counter() - start)
        emit("prefill_ms", float(np.median(times)) * 1e3, length)

    prompt = rng.integers(0, vocab, (1, job["decode_prompt"]))
    if not slow:
        engine.generate(prompt, 2)  # warm-up of the decode path
    start = time.perf_counter()
    tokens, stamps = engine.generate(prompt, n)
    emit("ttft_ms", (stamps[0] - start) * 1e3)
    emit("decode_tokens_per_s", (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    emit("decode_tokens", tokens)

    prompts = rng.integers(0, vocab, (batch, job["decode_prompt"]))
    if not slow:
        engine.generate(prompts, 2)  # warm-up at this batch size
    start = time.perf_counter()
    tokens, stamps = engine.generate(prompts, job["batch_new_tokens"])
    emit("batch_tokens_per_s", batch * len(stamps) / (stamps[-1] - start))
    emit("batch_tokens", tokens)

    if job["engine"] == REFERENCE:  # after the timed runs, which it must not slow down
        tokens, margins = engine.reference(prompt, n)
        more, more_margins = engine.reference(prompts, job["batch_new_tokens"])
        tokens, margins = tokens + more, margins + more_margins
        emit("reference_tokens", tokens)
        emit("reference_margins", margins)
    return 0


def memory_bandwidth(gib: float = BANDWIDTH_GIB, passes: int = BANDWIDTH_PASSES) -> float:
    """GB/s of a streaming read on every core: numpy's max over slices of a large array, one
    thread per core (numpy releases the GIL inside a reduction), best of several passes."""
    from concurrent.futures import ThreadPoolExecutor

    cores = os.cpu_count() or 1
    data = np.ones(int(gib * 2**30) // 4, dtype=np.float32)  # written once, so every page is real
    pieces = np.array_split(data, cores * 8)
    best = float("inf")
    with ThreadPoolExecutor(cores) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.max, pieces))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


class _MaxKV:
    """Ours: GPT2.generate_tokens, the compiled step graph with a key/value cache."""

    compiled_graph = True

    def __init__(self, path: str) -> None:
        from max_gpt2.engine import GPT2

        self.model = GPT2.from_pretrained(path)

    def compile(self) -> float:
        start = time.perf_counter()
        self.model.step_graph, self.model.decode_graph  # noqa: B018  prefill and decode
        return time.perf_counter() - start

    def prefill(self, ids: np.ndarray) -> None:
        next(iter(self.model.generate_tokens(ids.tolist(), 1)))

    def generate(self, ids: np.ndarray, n: int):
        return _timed(self.model.generate_tokens(ids.tolist(), n))


class _MaxRecompute(_MaxKV):
    """The tutorial's design: the full-sequence logits graph over the whole sequence, every token."""

    def compile(self) -> float:
        start = time.perf_counter()
        self.model.logits_graph  # noqa: B018
        return time.perf_counter() - start

    def prefill(self, ids: np.ndarray) -> None:
        self.model.logits(ids)

    def generate(self, ids: np.ndarray, n: int):
        return _timed(self._tokens(ids, n))

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        for _ in range(n):
            nxt = self.model.logits(ids)[:, -1].argmax(axis=-1)
            yield nxt
            ids = np.concatenate([ids, nxt[:, None]], axis=1)


class _MaxEager:
    """The same MAX modules (GPT2Step: the KV-cached forward) called directly, without compiling:
    every operation runs on its own as it is reached."""

    compiled_graph = False

    def __init__(self, path: str) -> None:
        import max.experimental.functional as F
        from max.dtype import DType
        from max.experimental.tensor import default_device, default_dtype

        from max_gpt2.engine import GPT2
        from max_gpt2.model import GPT2Step

        loaded = GPT2.from_pretrained(path)
        self.config, self.device = loaded.config, loaded._device
        # Built lazily (no random init, which alone takes minutes eagerly), then given real weights.
        with F.lazy(), default_device(self.device), default_dtype(DType.float32):
            self.module = GPT2Step(self.config)
        self.module.load_state_dict(loaded.state)

    def compile(self) -> None:
        return None

    def _tensor(self, a):
        from max.experimental.tensor import Tensor

        return Tensor.from_dlpack(np.ascontiguousarray(a)).to(self.device)

    def _step(self, ids, start, past_k, past_v):
        b, t = ids.shape
        positions = np.broadcast_to(np.arange(start, start + t), (b, t))
        key_mask = np.zeros((b, start + t), np.float32)
        logits, k, v = self.module(self._tensor(ids), self._tensor(positions), self._tensor(key_mask), past_k, past_v)
        return logits.to_numpy(), k, v

    def prefill(self, ids: np.ndarray) -> None:
        self._step(ids, 0, *self._empty(len(ids)))

    def _empty(self, b):
        c = self.config
        empty = np.zeros((c.n_layer, b, c.n_head, 0, c.head_dim), np.float32)
        return self._tensor(empty), self._tensor(empty)

    def generate(self, ids: np.ndarray, n: int):
        return _timed(self._tokens(ids, n))

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        logits, k, v = self._step(ids, 0, *self._empty(len(ids)))
        length = ids.shape[1]
        for i in range(n):
            nxt = logits.argmax(axis=-1)
            yield nxt
            if i < n - 1:
                logits, k, v = self._step(nxt[:, None], length, k, v)
                length += 1


class _TorchEager:
    """transformers' GPT2LMHeadModel: generate (greedy) with its key/value cache."""

    compiled_graph = True  # fast enough for warm-ups and repeats

    def __init__(self, path: str) -> None:
        import torch

        from max_gpt2.reference import load_reference
        from max_gpt2.weights import resolve

        p = Path(path)
        if p.is_dir():
            self.model = load_reference(p)
        else:
            found = resolve(p)
            self.model = load_reference(None, found.config, found.tensors)
        self.torch = torch

    def compile(self) -> float | None:
        return None

    def prefill(self, ids: np.ndarray) -> None:
        # As generate's first step does: the prompt through the model, logits of the last position.
        with self.torch.inference_mode():
            self.model(self.torch.from_numpy(ids), use_cache=True, logits_to_keep=1)

    def generate(self, ids: np.ndarray, n: int):
        from transformers import GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        steps, stamps = [], []

        class Collect(BaseStreamer):  # generate hands it the prompt, then each step's tokens
            def put(self, value):
                stamps.append(time.perf_counter())
                steps.append(value.reshape(-1).tolist())

            def end(self):
                pass

        x = self.torch.from_numpy(ids)
        settings = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        with self.torch.inference_mode():
            self.model.generate(x, attention_mask=self.torch.ones_like(x), generation_config=settings,
                                streamer=Collect())
        steps, stamps = steps[1:], stamps[1:]  # not the prompt
        return [list(row) for row in zip(*steps)], stamps

    def reference(self, prompts: np.ndarray, n: int) -> tuple[list[list[int]], list[list[float]]]:
        """transformers' greedy tokens for each prompt alone (batch 1, as `reference_greedy`),
        with the gap between the two best logits at every step."""
        from max_gpt2.reference import reference_greedy

        tokens, margins = [], []
        for prompt in prompts:
            gaps: list[float] = []
            tokens.append(reference_greedy(self.model, prompt.tolist(), n, gaps))
            margins.append([float(g) for g in gaps])
        return tokens, margins


class _TorchCompile(_TorchEager):
    """transformers' generate with the model's forward compiled by torch.compile (inductor, C++
    on a CPU). Compile time: the first generation, which compiles the prefill and decode shapes."""

    def compile(self) -> float:
        self.model.forward = self.torch.compile(self.model.forward)
        start = time.perf_counter()
        rng = np.random.default_rng(1)
        self.generate(rng.integers(0, self.model.config.vocab_size, (1, DECODE_PROMPT)), 3)
        return time.perf_counter() - start


ENGINE_CLASSES = {
    "max-compiled-kv": _MaxKV,
    "max-compiled-recompute": _MaxRecompute,
    "max-eager": _MaxEager,
    "torch-eager": _TorchEager,
    "torch-compile": _TorchCompile,
}


if __name__ == "__main__":
    sys.exit(_worker(json.loads(sys.argv[1])))
