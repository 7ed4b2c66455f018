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

The machine's speed drifts over minutes, so the engines stay loaded, each in its own process,
and the workloads go round them in rounds, seconds apart. Ours and torch-eager, which the
targets compare, run every round, the others the first; a figure is the median over rounds,
and a target the median of the rounds' ratios.

Without --model, a seeded random checkpoint at GPT-2's real 124M configuration is written to a
temporary folder and benchmarked (speed does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
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
    p.add_argument("--rounds", type=int, metavar="N",
                   help="rounds of the workloads over the engines, kept loaded; ours and torch-eager run in "
                        "every round, the others in the first; figures are medians (default: 5; 2 with --quick)")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold-cache compile (each takes minutes); compile_s_cold is then null")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="seconds any one compile or workload of an engine may take (default: 600)")
    p.add_argument("--eager-timeout", type=float, metavar="S",
                   help="seconds max-eager may run, which needs minutes per forward; what finished is reported "
                        "(default: 120; 10 with --quick)")
    p.add_argument("--compile-timeout", type=float, default=300, metavar="S",
                   help="seconds each torch-compile process may run: the cold compile; the measured one's compile "
                        "and workloads (default: 300)")
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
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    lengths = _lengths(args.prompt_lengths)
    if args.new_tokens < 2 or args.batch_new_tokens < 1 or args.batch < 1 or args.rounds < 1:
        raise GPT2Error("--new-tokens must be >= 2, --batch-new-tokens, --batch and --rounds >= 1")
    _check_plot_backend(args.plot)

    say = _Progress()
    with tempfile.TemporaryDirectory(prefix="max-gpt2-bench-") as scratch:
        scratch = Path(scratch)
        model_path, random_weights = _checkpoint(args.model, scratch, say)
        config, parameters, weight_bytes = _describe(model_path)
        if max(lengths) >= config.n_positions or DECODE_PROMPT + max(args.new_tokens, args.batch_new_tokens) > config.n_positions:
            raise GPT2Error(f"the workloads do not fit the model's context of {config.n_positions} tokens: "
                            "lower --prompt-lengths or --new-tokens")
        load_before = os.getloadavg()
        bench = _Bench(str(model_path), config.vocab_size, lengths, args, scratch, say)
        try:
            bench.run(engines)
        finally:
            bench.close()

    results, bandwidth = bench.results, bench.bandwidth
    roofline = {r: gb_s * 1e9 / weight_bytes for r, gb_s in bandwidth.items()}
    reference = results.get(REFERENCE)
    report = {
        "machine": _machine(load_before),
        "model": {"source": args.model or "seeded random weights (no --model)", "config": config.to_dict(),
                  "parameter_count": parameters, "random_weights": random_weights,
                  "weight_bytes_per_decode_step": weight_bytes},
        "workload": {"prompt_lengths": lengths, "new_tokens": args.new_tokens, "batch": args.batch,
                     "batch_new_tokens": args.batch_new_tokens, "decode_prompt_tokens": DECODE_PROMPT,
                     "dtype": "float32", "rounds": args.rounds, "engines_every_round": list(PAIR),
                     "quick": bool(args.quick)},
        "bench_seconds": None,
        "memory_bandwidth_gb_s": _median(bandwidth),
        "memory_bandwidth_gb_s_per_round": _listed(bandwidth),
        "roofline_decode_tokens_per_s": _median(roofline),
        "engines": {e: _engine_report(results[e], reference, roofline, args.batch) for e in engines},
    }
    report["targets"] = _targets(results, roofline, max(lengths))
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


# The targets compare these two, so they run in every round; the other engines in the first.
PAIR = ("max-compiled-kv", REFERENCE)


class _Results:
    """What one engine measured, round by round."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}
        self.compile_s_cold = None
        self.peak_rss_mb = 0.0
        self.status: list[str] = []
        self.reference = None  # transformers' tokens and top-2 margins (the reference engine only)

    def put(self, round_: int, **values) -> None:
        self.rounds.setdefault(round_, {}).update(values)

    def series(self, key: str, length: int | None = None) -> dict[int, float]:
        """Round -> value, for the rounds that measured it."""
        out = {}
        for r, values in self.rounds.items():
            v = values.get(key)
            if length is not None and v is not None:
                v = v.get(length)
            if v is not None:
                out[r] = v
        return out


class _Bench:
    """Cold compiles, max-eager time-boxed, then rounds over engine processes kept alive.

    The machine's speed drifts by tens of percent within minutes, so two engines measured minutes
    apart carry that drift into their ratio. Here every engine stays loaded in its own process
    and each workload goes round them in turn, seconds apart; the figures are medians over the
    rounds, and each target is the median of the rounds' ratios.
    """

    def __init__(self, model: str, vocab: int, lengths: list[int], args, scratch: Path, say) -> None:
        self.model, self.lengths, self.args, self.scratch, self.say = model, lengths, args, scratch, say
        rng = np.random.default_rng(0)
        self.prefill_ids = {n: rng.integers(0, vocab, (1, n)).tolist() for n in lengths}
        self.decode_ids = rng.integers(0, vocab, (1, DECODE_PROMPT)).tolist()
        self.batch_ids = rng.integers(0, vocab, (args.batch, DECODE_PROMPT)).tolist()
        self.results: dict[str, _Results] = {}
        self.bandwidth: dict[int, float] = {}  # round -> GB/s
        self.processes: list[_Process] = []

    def _start(self, engine: str | None, *, env=None, budget: float = float("inf"), tag: str = "") -> _Process:
        p = _Process(engine, self.model, self.scratch, env=env, budget=budget, timeout=self.args.timeout, tag=tag)
        self.processes.append(p)
        return p

    def _stop(self, p: _Process) -> None:
        p.close()
        self.processes.remove(p)
        if p.engine:
            res = self.results[p.engine]
            res.peak_rss_mb = max(res.peak_rss_mb, p.peak_rss_mb)
            if p.status != "ok":
                res.status.append(p.status)

    def _call(self, p: _Process, task: dict) -> dict | None:
        was_ok = p.status == "ok"
        reply = p.call(task)
        if reply is None and was_ok:
            self.say(f"{p.engine or 'memory bandwidth'}: {p.status}")
        return reply

    def close(self) -> None:
        try:
            for p in list(self.processes):
                self._stop(p)
        finally:
            for p in self.processes:  # left by an interruption (a second Ctrl-C): not waited for
                p._kill()

    def _budget(self, engine: str) -> float:
        budgets = {"max-eager": self.args.eager_timeout, "torch-compile": self.args.compile_timeout}
        return budgets.get(engine, float("inf"))

    def run(self, engines: list[str]) -> None:
        args, say = self.args, self.say
        # transformers' tokens are the ones to match, so it runs even when not asked for.
        every = list(dict.fromkeys([REFERENCE, *engines]))
        self.results = {e: _Results() for e in every}
        meter = self._start(None)  # a streaming read each round, for that round's roofline

        envs: dict[str, dict] = {}
        for e in (e for e in every if e in COMPILED and not args.no_cold):
            cache = self.scratch / f"cache-{e}"  # empty; the processes after this one reuse it, warm
            cache.mkdir()
            envs[e] = {("MODULAR_DERIVED_PATH" if e.startswith("max") else "TORCHINDUCTOR_CACHE_DIR"): str(cache)}
            say(f"{e}: compiling with an empty cache (cold; minutes)")
            p = self._start(e, env=envs[e], budget=self._budget(e), tag="-cold")
            reply = self._call(p, {"task": "load"})
            if reply:
                self.results[e].compile_s_cold = reply["compile_s"]
            self._stop(p)

        if "max-eager" in every:
            self._eager()

        live = {}
        for e in (e for e in every if e != "max-eager"):
            say(f"{e}: loading" + (" and compiling (warm cache)" if e in COMPILED else ""))
            p = self._start(e, env=envs.get(e), budget=self._budget(e))
            reply = self._call(p, {"task": "load"})
            if reply:
                self.results[e].put(0, compile_s_warm=reply["compile_s"])
                live[e] = p
            else:
                self._stop(p)

        for r in range(args.rounds):
            here = [e for e in live if (r == 0 or e in PAIR) and live[e].status == "ok"]
            if not here:
                break
            here = here[r % len(here):] + here[:r % len(here)]  # each round starts with another engine
            say(f"round {r + 1} of {args.rounds}: {', '.join(here)}")
            if r > 0:  # the warm compile again, in a new process (the loaded one has compiled)
                for e in (e for e in here if e in COMPILED):
                    p = self._start(e, env=envs.get(e), budget=self._budget(e), tag=f"-warm{r}")
                    reply = self._call(p, {"task": "load"})
                    if reply:
                        self.results[e].put(r, compile_s_warm=reply["compile_s"])
                    self._stop(p)
            for n in self.lengths:
                for e in here:
                    self._measure(live[e], r, {"task": "prefill", "ids": self.prefill_ids[n]})
            reply = self._call(meter, {"task": "bandwidth"})
            if reply:
                self.bandwidth[r] = reply["bandwidth_gb_s"]
            for e in here:
                self._measure(live[e], r, {"task": "decode", "ids": self.decode_ids, "n": args.new_tokens})
            for e in here:
                self._measure(live[e], r, {"task": "batch", "ids": self.batch_ids, "n": args.batch_new_tokens})

        if REFERENCE in live:  # after the timed runs, which it must not slow down
            say(f"{REFERENCE}: transformers' greedy tokens and logit margins, to check every engine's")
            rows = {"ids": self.decode_ids + self.batch_ids,
                    "n": [args.new_tokens] + [args.batch_new_tokens] * args.batch}
            reply = self._call(live[REFERENCE], {"task": "reference", **rows})
            if reply:
                self.results[REFERENCE].reference = reply["tokens"], reply["margins"]
        for p in live.values():
            self._stop(p)
        self._stop(meter)

    def _eager(self) -> None:
        """max-eager takes minutes a forward: one of each workload, in one process, time-boxed."""
        budget = self.args.eager_timeout
        self.say(f"max-eager: measuring (time-boxed to {budget:.0f} s)")
        p = self._start("max-eager", budget=budget)
        if self._call(p, {"task": "load"}):
            for n in self.lengths:
                self._measure(p, 0, {"task": "prefill", "ids": self.prefill_ids[n]})
            self._measure(p, 0, {"task": "decode", "ids": self.decode_ids, "n": self.args.new_tokens})
            self._measure(p, 0, {"task": "batch", "ids": self.batch_ids, "n": self.args.batch_new_tokens})
        self._stop(p)

    def _measure(self, p: _Process, r: int, task: dict) -> None:
        reply = self._call(p, task)
        if reply is None:
            return
        res = self.results[p.engine]
        if task["task"] == "prefill":
            res.put(r, prefill_ms={**res.rounds.get(r, {}).get("prefill_ms", {}), len(task["ids"][0]): reply["ms"]})
        elif task["task"] == "decode":
            res.put(r, decode_tokens_per_s=reply["tokens_per_s"], ttft_ms=reply["ttft_ms"],
                    decode_tokens=reply["tokens"])
        else:
            res.put(r, batch_tokens_per_s=reply["tokens_per_s"], batch_tokens=reply["tokens"])


class _Process:
    """One worker process (`python -m max_gpt2.bench`), kept alive: it takes one task at a time
    on its stdin and answers each with a line of JSON on a pipe of its own (MAX and torch may
    print to stdout; that goes to a log).

    Between its tasks the process is stopped (SIGSTOP), so that it takes no CPU from the engine
    being measured: once MAX has run a graph, a thread of its runtime wakes so often that an idle
    process uses 13-15% of a core, and both cores for about 0.2 s after each task.

    A task that overruns its time (the per-task --timeout, or what is left of the engine's
    budget) kills the process and its session (the engine and any compile workers); the engine
    is then done, and its status says why. Peak RSS is the process's own high-water mark
    (VmHWM): wait4's ru_maxrss would start from the parent's RSS, inherited at exec.
    """

    def __init__(self, engine: str | None, model: str, scratch: Path, *, env=None, budget: float,
                 timeout: float, tag: str = "") -> None:
        self.engine, self.budget, self.total, self.timeout = engine, budget, budget, timeout
        self.status, self.peak_rss_mb = "ok", 0.0
        self.log = scratch / f"{engine or 'bandwidth'}{tag}.log"
        read, write = os.pipe()
        # env= always: importing MAX puts PYTHONEXECUTABLE in the real environment, and a child that
        # inherits it would start outside this virtual environment.
        child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
        child_env.pop("PYTHONEXECUTABLE", None)
        job = {"engine": engine, "model": model, "reply_fd": write, "parent": os.getpid()}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "max_gpt2.bench", json.dumps(job)],
                                         stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                         pass_fds=(write,), start_new_session=True)
        os.close(write)
        self.replies, self.pending = read, b""

    def call(self, task: dict) -> dict | None:
        """Runs one task; its reply, or None if the process is done (see status)."""
        if self.status != "ok":
            return None
        limit = min(self.timeout, self.budget)
        self._signal(signal.SIGCONT)
        start = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has died; the read below says how
        line = self._read_line(start + limit)
        self.budget -= time.monotonic() - start
        if line is None:
            if time.monotonic() < start + limit:  # it ended by itself
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                tail = [s for s in self.log.read_text(errors="replace").splitlines() if s.strip()][-1:]
                self.status = f"{task['task']}: failed ({tail[0][:160] if tail else f'exit {self.proc.returncode}'})"
            else:
                self.peak_rss_mb = max(self.peak_rss_mb, _vm_hwm_mb(self.proc.pid))
                self._kill()
                which = (f"the {self.timeout:.0f} s limit for one task" if limit == self.timeout
                         else f"its {self.total:.0f} s time limit")
                self.status = f"{task['task']}: stopped at {which}"
            return None
        self._signal(signal.SIGSTOP)  # idle until its next task (see the class's docstring)
        reply = json.loads(line)
        self.peak_rss_mb = max(self.peak_rss_mb, reply.pop("peak_rss_mb"))
        return reply

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([self.replies], [], [], min(left, 1.0))[0]:
                chunk = os.read(self.replies, 1 << 20)
                if not chunk:  # closed: the process has ended
                    return None
                self.pending += chunk
            elif self.proc.poll() is not None:
                return None
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # its own session: the engine and any compile workers
        except ProcessLookupError:
            pass

    def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self.proc.stdin.close()  # no more tasks: it returns
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._kill()
        os.close(self.replies)


def _vm_hwm_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory, MB (Linux); 0 where /proc is not there to say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _median(series: dict):
    return float(np.median(list(series.values()))) if series else None


def _listed(series: dict) -> list:
    return [series[r] for r in sorted(series)]


def _ratio(a: dict, b: dict) -> dict:
    return {r: a[r] / b[r] for r in a if b.get(r)}


def _engine_report(res: _Results, reference: _Results | None, roofline: dict, batch: int) -> dict:
    lengths = sorted({n for values in res.rounds.values() for n in values.get("prefill_ms", {})})
    prefill = {str(n): res.series("prefill_ms", n) for n in lengths}
    decode = res.series("decode_tokens_per_s")
    series = {
        "decode_tokens_per_s": decode,
        f"batch{batch}_tokens_per_s": res.series("batch_tokens_per_s"),
        "ttft_ms": res.series("ttft_ms"),
        "compile_s_warm": res.series("compile_s_warm"),
        "decode_roofline_fraction": _ratio(decode, roofline),
    }
    report = {key: _median(s) for key, s in series.items()}
    report.update({
        "prefill_ms": {n: _median(s) for n, s in prefill.items()},
        "compile_s_cold": res.compile_s_cold,
        "peak_rss_mb": round(res.peak_rss_mb, 1),
        "greedy_tokens_match": None,
        "greedy_tokens_checked": 0,
        "rounds": len(decode),
        "per_round": {**{key: _listed(s) for key, s in series.items()},
                      "prefill_ms": {n: _listed(s) for n, s in prefill.items()}},
        "status": "; ".join(res.status) or "ok",
    })
    if reference is not None and reference.reference:
        tokens, margins = reference.reference  # the decode prompt's row, then the batch's
        compared = [_compare(values[key], tokens[part], margins[part]) for values in res.rounds.values()
                    for key, part in (("decode_tokens", slice(0, 1)), ("batch_tokens", slice(1, None)))
                    if key in values]
        if compared:
            report["greedy_tokens_match"] = all(same for same, _ in compared)
            report["greedy_tokens_checked"] = sum(n for _, n in compared)
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


def _targets(results: dict[str, _Results], roofline: dict, longest: int) -> list[dict]:
    """The issue's targets for the compiled engine against transformers eager: each the median
    over the rounds of that round's ratio (the two engines measured seconds apart)."""
    ours, theirs = results.get("max-compiled-kv"), results.get(REFERENCE)
    if ours is None or theirs is None:
        return []
    decode = ours.series("decode_tokens_per_s")
    rows = [
        ("decode ≥ 2× torch-eager", _ratio(decode, theirs.series("decode_tokens_per_s")), 2.0),
        ("prefill of the longest prompt ≥ 2× torch-eager (latency ratio)",
         _ratio(theirs.series("prefill_ms", longest), ours.series("prefill_ms", longest)), 2.0),
        ("batch throughput ≥ 3× torch-eager",
         _ratio(ours.series("batch_tokens_per_s"), theirs.series("batch_tokens_per_s")), 3.0),
        ("decode ≥ 50% of the roofline", _ratio(decode, roofline), 0.5),
        ("warm compile ≤ 5 s", ours.series("compile_s_warm"), 5.0),
    ]
    out = []
    for name, series, goal in rows:
        m = _median(series)
        at_most = "≤" in name
        met = None if m is None else (m <= goal if at_most else m >= goal)
        out.append({"target": name, "measured": m, "per_round": _listed(series), "goal": goal, "at_most": at_most,
                    "met": met})
    return out


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
        ("rounds", [e["rounds"] for e in engines.values()], 0),
    ]
    width = max(len(r[0]) for r in rows) + 2
    col = max(12, *(len(n) + 2 for n in names))
    print("".ljust(width) + "".join(n.rjust(col) for n in names), file=out)
    for label, values, digits in rows:
        print(label.ljust(width) + "".join(_fmt(v, digits).rjust(col) for v in values), file=out)
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
        print("targets, ours against torch-eager: the median of the rounds' ratios (each round's)", file=out)
    for t in report.get("targets", []):
        mark = "?" if t["met"] is None else ("✓" if t["met"] else "✗")
        rounds = ", ".join(_fmt(v, 2) for v in t["per_round"])
        print(f"  {mark} {t['target']}: {_fmt(t['measured'], 2)} ({rounds})", file=out)


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
    fig.suptitle(f"GPT-2 {m['parameter_count'] / 1e6:.0f}M float32 ({weights}) on {report['machine']['cpu']}, "
                 f"{report['machine']['cores']} cores — one run; bars are medians of {report['workload']['rounds']} "
                 f"rounds for {' and '.join(PAIR)} (dots: each round), of one for the others")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the worker: one engine in its own process ---------------------------------------------------


def _timed(tokens: Iterator[np.ndarray]) -> tuple[list[list[int]], list[float]]:
    """Drains a generator of [batch] token arrays: the tokens [batch][n], and when each step's came."""
    steps, stamps = [], []
    for t in tokens:
        stamps.append(time.perf_counter())
        steps.append([int(x) for x in np.asarray(t).reshape(-1)])
    return [list(row) for row in zip(*steps)], stamps


def _worker(job: dict) -> int:
    """Takes tasks from stdin, one JSON line each, until it closes; answers each on the reply pipe."""
    _die_with_parent(job["parent"])
    os.set_inheritable(job["reply_fd"], False)  # not to compile workers: the pipe closes when this ends
    reply = os.fdopen(job["reply_fd"], "w")
    engine = None
    for line in sys.stdin:
        task = json.loads(line)
        if task["task"] == "load":
            engine = ENGINE_CLASSES[job["engine"]](job["model"])
            values = {"compile_s": engine.compile()}
        elif task["task"] == "bandwidth":
            values = {"bandwidth_gb_s": memory_bandwidth()}
        else:
            values = getattr(engine, "task_" + task["task"])(np.array(task["ids"]), task.get("n"))
        reply.write(json.dumps({**values, "peak_rss_mb": _vm_hwm_mb()}) + "\n")
        reply.flush()
    return 0


def _die_with_parent(parent: int) -> None:
    """A worker spends most of its life stopped, in a session of its own: if the bench dies
    without closing it (SIGTERM, SIGKILL, out of memory), nothing else would end it. On Linux
    the kernel kills it with its parent."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent was gone before the line above
        sys.exit(1)


class _Engine:
    """The workloads, the same for every engine; each engine supplies prefill, generate and compile.
    An eager engine (no compiled graph) gets one try of each and no warm-up: minutes a forward."""

    compiled_graph = True

    def task_prefill(self, ids: np.ndarray, _) -> dict:
        if self.compiled_graph:
            self.prefill(ids)  # warm-up: first-call allocations, torch.compile's per-shape compile
        times = []
        for _ in range(3 if self.compiled_graph else 1):
            start = time.perf_counter()
            self.prefill(ids)
            times.append(time.perf_counter() - start)
        return {"ms": float(np.median(times)) * 1e3}

    def task_decode(self, ids: np.ndarray, n: int) -> dict:
        if self.compiled_graph:
            self.generate(ids, 2)  # warm-up of the decode path
        start = time.perf_counter()
        tokens, stamps = self.generate(ids, n)
        return {"ttft_ms": (stamps[0] - start) * 1e3, "tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                "tokens": tokens}

    def task_batch(self, ids: np.ndarray, n: int) -> dict:
        if self.compiled_graph:
            self.generate(ids, 2)  # warm-up at this batch size
        start = time.perf_counter()
        tokens, stamps = self.generate(ids, n)
        return {"tokens_per_s": len(ids) * len(stamps) / (stamps[-1] - start), "tokens": tokens}


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


class _MaxKV(_Engine):
    """Ours: GPT2.generate_tokens, the compiled step graph with a key/value cache."""

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


class _MaxEager(_Engine):
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


class _TorchEager(_Engine):
    """transformers' GPT2LMHeadModel: generate (greedy) with its key/value cache."""

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

    def task_reference(self, ids: np.ndarray, ns: list[int]) -> dict:
        """transformers' greedy tokens for each prompt alone (batch 1, as `reference_greedy`), with
        the gap between the two best logits at every step."""
        from max_gpt2.reference import reference_greedy

        tokens, margins = [], []
        for prompt, n in zip(ids, ns):
            gaps: list[float] = []
            tokens.append(reference_greedy(self.model, prompt.tolist(), n, gaps))
            margins.append([float(g) for g in gaps])
        return {"tokens": tokens, "margins": margins}


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
