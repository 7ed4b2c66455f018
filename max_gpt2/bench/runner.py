"""`max-gpt2 bench`: the checkpoint, the rounds over the engines' processes, the report."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from max_gpt2.bench.arguments import COMPILED, DECODE_PROMPT, EVERY_ROUND, REFERENCE, settle, unavailable
from max_gpt2.bench.report import machine, print_table
from max_gpt2.bench.stats import Results, engine_report, listed, median, targets, teacher_forced
from max_gpt2.bench.worker import Worker
from max_gpt2.errors import GPT2Error
from max_gpt2.progress import Status, Waiting


def run(args) -> int:
    engines, lengths = settle(args)
    start = time.monotonic()
    say = Status()
    try:
        with tempfile.TemporaryDirectory(prefix="max-gpt2-bench-") as scratch:
            scratch = Path(scratch)
            model_path, random_weights = _checkpoint(args.model, scratch, say)
            config, parameters, weight_bytes = _describe(model_path)
            if (max(lengths) >= config.n_positions
                    or DECODE_PROMPT + max(args.new_tokens, args.batch_new_tokens) > config.n_positions):
                raise GPT2Error(f"the workloads do not fit the model's context of {config.n_positions} tokens: "
                                "lower --prompt-lengths or --new-tokens")
            load_before = os.getloadavg()
            bench = Bench(str(model_path), config.vocab_size, lengths, args, scratch, say)
            try:
                bench.run(engines)
            finally:
                bench.close()
    finally:
        say.close()

    results, bandwidth = bench.results, bench.bandwidth
    roofline = {r: gb_s * 1e9 / weight_bytes for r, gb_s in bandwidth.items()}
    reference = results.get(REFERENCE)
    report = {
        "machine": machine(load_before),
        "model": {"source": args.model or "seeded random weights (no --model)", "config": config.to_dict(),
                  "parameter_count": parameters, "random_weights": random_weights,
                  "weight_bytes_per_decode_step": weight_bytes},
        "workload": {"prompt_lengths": lengths, "new_tokens": args.new_tokens, "batch": args.batch,
                     "batch_new_tokens": args.batch_new_tokens, "decode_prompt_tokens": DECODE_PROMPT,
                     "dtype": "float32 unless the engine's name says otherwise", "rounds": args.rounds, "engines_every_round": list(EVERY_ROUND),
                     "quick": bool(args.quick)},
        "bench_seconds": None,
        "memory_bandwidth_gb_s": median(bandwidth),
        "memory_bandwidth_gb_s_per_round": listed(bandwidth),
        "roofline_decode_tokens_per_s": median(roofline),
        "engines": {e: engine_report(results[e], reference, roofline, args.batch) for e in engines},
    }
    report["targets"] = targets(results, roofline, max(lengths), parameters * 4 / 1e6)
    report["bench_seconds"] = round(time.monotonic() - start, 1)
    print_table(report, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.plot:
        from max_gpt2.bench.plot import plot

        plot(report, args.plot)
        say(f"wrote {args.plot}")
    return 0


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


class Bench:
    """Cold compiles, max-eager time-boxed, then rounds over engine processes kept alive.

    The machine's speed drifts within minutes, so two engines measured minutes apart carry that
    drift into their ratio. Here every engine stays loaded in its own process and each workload
    goes round them in turn, seconds apart; the figures are medians over the rounds, and each
    target is the median of the rounds' ratios.
    """

    def __init__(self, model: str, vocab: int, lengths: list[int], args, scratch: Path, say) -> None:
        self.model, self.lengths, self.args, self.scratch, self.say = model, lengths, args, scratch, say
        rng = np.random.default_rng(0)
        self.prefill_ids = {n: rng.integers(0, vocab, (1, n)).tolist() for n in lengths}
        self.decode_ids = rng.integers(0, vocab, (1, DECODE_PROMPT)).tolist()
        self.batch_ids = rng.integers(0, vocab, (args.batch, DECODE_PROMPT)).tolist()
        self.results: dict[str, Results] = {}
        self.bandwidth: dict[int, float] = {}  # round -> GB/s
        self.workers: list[Worker] = []

    def _start(self, engine: str | None, *, env=None, budget: float = float("inf"), tag: str = "") -> Worker:
        w = Worker(engine, self.model, self.scratch, env=env, budget=budget, timeout=self.args.timeout, tag=tag)
        self.workers.append(w)
        return w

    def _stop(self, w: Worker) -> None:
        w.close()
        self.workers.remove(w)
        if w.engine:
            res = self.results[w.engine]
            res.peak_rss_mb = max(res.peak_rss_mb, w.peak_rss_mb)
            if w.status != "ok":
                res.status.append(w.status)

    def _call(self, w: Worker, task: dict) -> dict | None:
        was_ok = w.status == "ok"
        reply = w.call(task)
        if reply is None and was_ok:
            self.say(f"{w.engine or 'memory bandwidth'}: {w.status}")
        return reply

    def close(self) -> None:
        try:
            for w in list(self.workers):
                self._stop(w)
        finally:
            for w in self.workers:  # left by an interruption (a second Ctrl-C): not waited for
                w.kill()

    def _budget(self, engine: str) -> float:
        budgets = {"max-eager": self.args.eager_timeout, "torch-compile": self.args.compile_timeout}
        return budgets.get(engine, float("inf"))

    def run(self, engines: list[str]) -> None:
        args, say = self.args, self.say
        # transformers' tokens are the ones to match, so it runs even when not asked for.
        every = list(dict.fromkeys([REFERENCE, *engines]))
        self.results = {e: Results() for e in every}
        for e in list(every):
            reason = unavailable(e)
            if reason:
                say(f"{e}: {reason}")
                self.results[e].status.append(reason)
                every.remove(e)
        meter = self._start(None)  # a streaming read each round, for that round's roofline

        envs: dict[str, dict] = {}
        for e in (e for e in every if e in COMPILED and not args.no_cold):
            cache = self.scratch / f"cache-{e}"  # empty; the processes after this one reuse it, warm
            cache.mkdir()
            envs[e] = {("MODULAR_DERIVED_PATH" if e.startswith("max") else "TORCHINDUCTOR_CACHE_DIR"): str(cache)}
            say(Waiting(f"{e}: compiling with an empty cache (cold; minutes)"))
            w = self._start(e, env=envs[e], budget=self._budget(e), tag="-cold")
            reply = self._call(w, {"task": "load"})
            if reply:
                self.results[e].compile_s_cold = reply["compile_s"]
            self._stop(w)

        if "max-eager" in every:
            self._eager()

        live = {}
        for e in (e for e in every if e != "max-eager"):
            say(Waiting(f"{e}: loading" + (" and compiling (warm cache)" if e in COMPILED else "")))
            w = self._start(e, env=envs.get(e), budget=self._budget(e))
            reply = self._call(w, {"task": "load"})
            if reply:
                self.results[e].put(0, compile_s_warm=reply["compile_s"])
                self.results[e].rss_after_load_mb = round(reply["rss_after_load_mb"], 1)
                live[e] = w
            else:
                self._stop(w)

        for r in range(args.rounds):
            here = [e for e in live if (r == 0 or e in EVERY_ROUND) and live[e].status == "ok"]
            if not here:
                break
            here = here[r % len(here):] + here[:r % len(here)]  # each round starts with another engine
            say(Waiting(f"round {r + 1} of {args.rounds}: {', '.join(here)}"))
            if r > 0:  # the warm compile again, in a new process (the loaded one has compiled)
                for e in (e for e in here if e in COMPILED):
                    w = self._start(e, env=envs.get(e), budget=self._budget(e), tag=f"-warm{r}")
                    reply = self._call(w, {"task": "load"})
                    if reply:
                        self.results[e].put(r, compile_s_warm=reply["compile_s"])
                    self._stop(w)
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
            say(Waiting(f"{REFERENCE}: transformers' greedy tokens and logit margins, to check every engine's"))
            rows = {"ids": self.decode_ids + self.batch_ids,
                    "n": [args.new_tokens] + [args.batch_new_tokens] * args.batch}
            reply = self._call(live[REFERENCE], {"task": "reference", **rows})
            if reply:
                self.results[REFERENCE].reference = reply["tokens"], reply["margins"]
                self._teacher_forced(live, self.decode_ids[0] + reply["tokens"][0])
        for w in live.values():
            self._stop(w)
        self._stop(meter)

    def _teacher_forced(self, live: dict[str, Worker], sequence: list[int]) -> None:
        """Each engine's logits of the decode prompt and transformers' greedy continuation,
        against transformers' own."""
        self.say(Waiting("teacher-forced logits of every engine, against transformers'"))
        logits = {}
        for e, w in live.items():
            out = self.scratch / f"logits-{e}.npy"
            if self._call(w, {"task": "logits", "ids": [sequence], "out": str(out)}) is not None:
                logits[e] = np.load(out)
        if REFERENCE in logits:
            for e, values in logits.items():
                self.results[e].teacher_forced = teacher_forced(values, logits[REFERENCE])

    def _eager(self) -> None:
        """max-eager takes minutes a forward: one of each workload, in one process, time-boxed."""
        budget = self.args.eager_timeout
        self.say(Waiting(f"max-eager: measuring (time-boxed to {budget:.0f} s)"))
        w = self._start("max-eager", budget=budget)
        if self._call(w, {"task": "load"}):
            for n in self.lengths:
                self._measure(w, 0, {"task": "prefill", "ids": self.prefill_ids[n]})
            self._measure(w, 0, {"task": "decode", "ids": self.decode_ids, "n": self.args.new_tokens})
            self._measure(w, 0, {"task": "batch", "ids": self.batch_ids, "n": self.args.batch_new_tokens})
        self._stop(w)

    def _measure(self, w: Worker, r: int, task: dict) -> None:
        reply = self._call(w, task)
        if reply is None:
            return
        res = self.results[w.engine]
        if task["task"] == "prefill":
            res.put(r, prefill_ms={**res.rounds.get(r, {}).get("prefill_ms", {}), len(task["ids"][0]): reply["ms"]})
        elif task["task"] == "decode":
            res.put(r, decode_tokens_per_s=reply["tokens_per_s"], ttft_ms=reply["ttft_ms"],
                    decode_tokens=reply["tokens"])
        else:
            res.put(r, batch_tokens_per_s=reply["tokens_per_s"], batch_tokens=reply["tokens"])
