"""Figures from the rounds: what each engine measured, its medians, the targets' ratios, and
whether its greedy tokens are transformers'."""

from __future__ import annotations

import numpy as np

from max_gpt2.bench.arguments import OURS, PEERS, PEERS_INT8, REFERENCE


class Results:
    """What one engine measured, round by round."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}
        self.compile_s_cold = None
        self.peak_rss_mb = 0.0
        self.rss_after_load_mb = None  # resident once loaded, before compiling
        self.status: list[str] = []
        self.reference = None  # transformers' tokens and top-2 margins (the reference engine only)
        self.teacher_forced = None  # (top-1 agreement, max |Δlogit|, mean KL) against transformers

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


def median(series: dict):
    return float(np.median(list(series.values()))) if series else None


def listed(series: dict) -> list:
    return [series[r] for r in sorted(series)]


def _ratio(a: dict, b: dict) -> dict:
    return {r: a[r] / b[r] for r in a if b.get(r)}


def engine_report(res: Results, reference: Results | None, roofline: dict, batch: int) -> dict:
    """One engine's entry in the report: medians over its rounds, each round's figures, and the
    greedy-token check."""
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
    report = {key: median(s) for key, s in series.items()}
    report.update({
        "prefill_ms": {n: median(s) for n, s in prefill.items()},
        "compile_s_cold": res.compile_s_cold,
        "peak_rss_mb": round(res.peak_rss_mb, 1),
        "rss_after_load_mb": res.rss_after_load_mb,
        "greedy_tokens_match": None,
        "greedy_tokens_checked": 0,
        "teacher_forced_top1_agreement": res.teacher_forced and res.teacher_forced[0],
        "max_abs_logit_diff": res.teacher_forced and res.teacher_forced[1],
        "teacher_forced_kl": res.teacher_forced and res.teacher_forced[2],
        "rounds": len(decode),
        "per_round": {**{key: listed(s) for key, s in series.items()},
                      "prefill_ms": {n: listed(s) for n, s in prefill.items()}},
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


def teacher_forced(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float] | None:
    """How often an engine's likeliest token is transformers' at the same position of the same
    sequence, the largest logit difference, and the mean KL(transformers || engine) over the
    positions, as `max-gpt2 eval --against` computes it; None if the logits do not even have one
    shape."""
    from max_gpt2.evaluate import log_softmax

    if ours.shape != theirs.shape:
        return None
    logq, logp = log_softmax(ours), log_softmax(theirs)
    kl = float((np.exp(logp) * (logp - logq)).sum(-1).mean())
    return float(np.mean(ours.argmax(-1) == theirs.argmax(-1))), float(np.abs(ours - theirs).max()), kl


# Logits closer than this are a tie: two implementations' float32 sums differ in the last digits
# (docs/benchmarks.md, "Design decisions").
NEAR_TIE = 0.01


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


def targets(results: dict[str, Results], roofline: dict, longest: int, weights_mb: float) -> list[dict]:
    """The targets for the compiled engine, against transformers eager and against the best of
    the float32 peers that ran: each the median over the rounds of that round's ratio (the
    engines measured seconds apart), against the best peer of that round."""
    ours, theirs = results.get(OURS), results.get(REFERENCE)
    narrow = _narrow_rows(results, ours, theirs, longest)  # issue #16's, where their engines ran
    if ours is None or theirs is None:
        return _judged(narrow)
    decode = ours.series("decode_tokens_per_s")
    peers = [results[p] for p in PEERS if p in results and results[p].rounds]
    rows = [
        ("decode ≥ 2× torch-eager", _ratio(decode, theirs.series("decode_tokens_per_s")), 2.0),
        ("prefill of the longest prompt ≥ 2× torch-eager (latency ratio)",
         _ratio(theirs.series("prefill_ms", longest), ours.series("prefill_ms", longest)), 2.0),
        ("batch throughput ≥ 3× torch-eager",
         _ratio(ours.series("batch_tokens_per_s"), theirs.series("batch_tokens_per_s")), 3.0),
        ("decode ≥ 92% of the roofline", _ratio(decode, roofline), 0.92),
        ("warm compile ≤ 5 s", ours.series("compile_s_warm"), 5.0),
    ]
    if peers:
        rows += [
            ("decode ≥ 1.1× the best float32 peer", _ratio(decode, _best(peers, "decode_tokens_per_s", max)), 1.1),
            ("batch throughput ≥ 1.2× the best float32 peer",
             _ratio(ours.series("batch_tokens_per_s"), _best(peers, "batch_tokens_per_s", max)), 1.2),
            ("prefill of the longest prompt ≥ 1.2× the best float32 peer (latency ratio)",
             _ratio(_best(peers, "prefill_ms", min, longest), ours.series("prefill_ms", longest)), 1.2),
            ("time to first token ≤ the best float32 peer's (ratio)",
             _ratio(ours.series("ttft_ms"), _best(peers, "ttft_ms", min)), 1.0),
        ]
    if ours.rss_after_load_mb:
        rows.append((f"RSS after load ≤ the weights + 300 MB ({weights_mb + 300:,.0f} MB)",
                     {0: ours.rss_after_load_mb}, weights_mb + 300))
    return _judged(rows + narrow)


def _judged(rows: list[tuple]) -> list[dict]:
    """(name, round -> value, goal) rows as the report's targets: the median, met or not."""
    out = []
    for name, series, goal in rows:
        m = median(series)
        at_most = "≤" in name
        met = None if m is None else (m <= goal if at_most else m >= goal)
        out.append({"target": name, "measured": m, "per_round": listed(series), "goal": goal, "at_most": at_most,
                    "met": met})
    return out


def _narrow_rows(results: dict[str, Results], ours: Results | None, theirs: Results | None,
                 longest: int) -> list[tuple]:
    """Issue #16's targets for our bfloat16 and int8 engines, where they and what they are
    compared with ran."""
    rows = []
    bf16, int8 = results.get("max-gpt2-bf16"), results.get("max-gpt2-int8")
    q8, ct2 = results.get("llama.cpp-q8_0"), results.get("ctranslate2-int8")
    if bf16 is not None and bf16.rounds and ours is not None and theirs is not None:
        rows += [
            ("bf16 decode ≥ 1.8× our float32",
             _ratio(bf16.series("decode_tokens_per_s"), ours.series("decode_tokens_per_s")), 1.8),
            ("bf16 prefill of the longest prompt ≥ 2× torch-eager (latency ratio)",
             _ratio(theirs.series("prefill_ms", longest), bf16.series("prefill_ms", longest)), 2.0),
        ]
    peers = [results[p] for p in PEERS_INT8 if p in results and results[p].rounds]
    if int8 is None or not int8.rounds or not peers:
        return rows
    if q8 is not None and q8.rounds:
        rows.append(("int8 decode ≥ 1.2× llama.cpp q8_0",
                     _ratio(int8.series("decode_tokens_per_s"), q8.series("decode_tokens_per_s")), 1.2))
    rows.append(("int8 batch throughput ≥ 1.2× the best 8-bit peer",
                 _ratio(int8.series("batch_tokens_per_s"), _best(peers, "batch_tokens_per_s", max)), 1.2))
    if ct2 is not None and ct2.rounds:
        rows.append(("int8 prefill of the longest prompt ≥ CTranslate2 int8's (latency ratio)",
                     _ratio(ct2.series("prefill_ms", longest), int8.series("prefill_ms", longest)), 1.0))
    forced = [p.teacher_forced for p in peers if p.teacher_forced]
    if int8.teacher_forced and forced:
        rows.append(("int8 teacher-forced top-1 ≥ the better 8-bit peer's (difference)",
                     {0: int8.teacher_forced[0] - max(f[0] for f in forced)}, 0.0))
        rows.append(("int8 KL(transformers ‖ engine) ≤ the better 8-bit peer's (ratio)",
                     {0: int8.teacher_forced[2] / max(min(f[2] for f in forced), 1e-30)}, 1.0))
    if q8 is not None and int8.rss_after_load_mb and q8.rss_after_load_mb:
        rows.append(("int8 RSS after load ≤ llama.cpp q8_0's (ratio)", {0: int8.rss_after_load_mb / q8.rss_after_load_mb},
                     1.0))
    return rows


def _best(engines: list[Results], key: str, best, length: int | None = None) -> dict[int, float]:
    """Round -> the best figure among the engines that measured `key` in that round."""
    series = [e.series(key, length) for e in engines]
    rounds = sorted({r for s in series for r in s})
    return {r: best(s[r] for s in series if r in s) for r in rounds}
