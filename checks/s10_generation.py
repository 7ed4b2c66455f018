"""Step 10: probabilities against transformers' logits warpers (TemperatureLogitsWarper,
TopKLogitsWarper, then softmax); sample_next_token's draws against those probabilities; the
greedy loop against transformers' own generate() on the reference model."""

from __future__ import annotations

import numpy as np

from checks.report import Failure, Passed, expect_close

STEP, TITLE = 10, "text generation: temperature, top-k, the loop"
HINTS = {
    "10.1": "x = x / temperature",
    "10.2": "kth = np.partition(x, -top_k, axis=-1)[:, -top_k, None]; x = np.where(x < kth, -np.inf, x) "
    "(only when 0 < top_k < vocab)",
    "10.3": "if temperature == 0: return logits.argmax(-1); else, for each row p of probabilities(...): "
    "rng.choice(len(p), p=p)",
    "10.4": "ids = list(prompt_ids); each turn: logits = next_logits(np.array([ids]))[:, -1]; "
    "token = int(sample_next_token(logits, temperature, top_k, rng)[0]); stop at eos; ids.append(token); "
    "return ids[len(prompt_ids):]",
}
VOCAB, DRAWS = 50, 20_000
PROMPT, NEW = [464, 3290, 286, 262], 8


def _logits() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 2, (3, VOCAB)).astype(np.float32)  # no ties


def warped(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """softmax after transformers' warpers, in the order generate() applies them."""
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    scores = torch.from_numpy(logits.astype(np.float32))
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    return torch.softmax(scores.double(), -1).numpy()


def prepare(code, graph):
    def judge():
        yield from _probabilities(code)
        yield from _sampling(code)
        yield from _loop(code)

    return judge


def _probabilities(code):
    fn = code.get(STEP, "probabilities")
    x = _logits()
    cases = [
        (0.7, 0, "10.1", "probabilities with temperature 0.7 equal softmax(TemperatureLogitsWarper(0.7))",
         {"the logits multiplied by the temperature; divide them": (_softmax(x * 0.7), "10.1"),
          "the temperature is not applied": (_softmax(x), "10.1")}),
        (1.0, 5, "10.2", "probabilities with top_k 5 equal softmax(TopKLogitsWarper(5))",
         {"top-k off by one: kept 4 tokens": (_softmax(_keep(x, 4)), "10.2"),
          "top-k off by one: kept 6 tokens": (_softmax(_keep(x, 6)), "10.2"),
          "top-k kept the smallest logits": (_softmax(np.where(x > np.sort(x, -1)[:, 4, None], -np.inf, x)), "10.2"),
          "top-k not applied": (_softmax(x), "10.2")}),
        (1.5, 3, "10.2", "probabilities with temperature 1.5 and top_k 3: temperature, then top-k", {}),
        (1.0, VOCAB + 10, "10.2", f"top_k above the vocabulary size ({VOCAB}) limits nothing", {}),
    ]
    for temperature, top_k, todo, check, mistakes in cases:
        got = code.run(check, fn, x, temperature, top_k, 1.0, todo=todo, hints=HINTS, expected="[3, 50] probabilities")
        yield expect_close(check, np.asarray(got, np.float64), warped(x, temperature, top_k), todo=todo,
                           hint=HINTS[todo], hints=HINTS, expected="transformers' warpers, then softmax",
                           mistakes=mistakes)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _keep(x, k):
    kth = np.sort(x, -1)[:, -k, None]
    return np.where(x < kth, -np.inf, x)


def _sampling(code):
    fn = code.get(STEP, "sample_next_token")
    x = _logits()

    check = "temperature 0 is greedy: sample_next_token gives each row's argmax"
    got = code.run(check, fn, x, 0.0, 0, np.random.default_rng(0), todo="10.3", hints=HINTS, expected="[3] ids")
    if np.shape(got) != (3,) or list(np.asarray(got)) != list(x.argmax(-1)):
        raise Failure(check, todo="10.3", expected=f"{list(x.argmax(-1))}", got=repr(got), hint=HINTS["10.3"])
    yield Passed(check)

    check = f"{DRAWS} draws at temperature 0.8, top_k 5 follow transformers' distribution"
    rows = np.repeat(x[:1], DRAWS, axis=0)
    draws = np.asarray(code.run(check, fn, rows, 0.8, 5, np.random.default_rng(1), todo="10.3", hints=HINTS,
                                expected=f"[{DRAWS}] ids"))
    want = warped(x[:1], 0.8, 5)[0]
    if draws.shape != (DRAWS,):
        raise Failure(check, todo="10.3", expected=f"shape [{DRAWS}]: one id per row", got=f"shape {list(draws.shape)}",
                      hint=HINTS["10.3"])
    outside = sorted(set(draws.tolist()) - set(np.flatnonzero(want).tolist()))
    freq = np.bincount(draws.astype(np.int64), minlength=VOCAB)[:VOCAB] / DRAWS
    distance = 0.5 * np.abs(freq - want).sum()  # total variation: 0 when equal, 1 when disjoint
    if outside or distance > 0.02:
        raise Failure(check, todo="10.3", expected=f"frequencies {_top(want)}",
                      got=f"frequencies {_top(freq)}" + (f"; tokens outside the top 5: {outside[:5]}" * bool(outside)),
                      looks_like="draws from the unwarped softmax: use probabilities(logits, temperature, top_k)"
                      if outside else "", hint=HINTS["10.3"])
    yield Passed(f"{check} (total variation {distance:.3f})")

    check = "the draws come from `rng`: the same seed gives the same tokens, another seed others"
    runs = [np.asarray(code.run(check, fn, rows[:200], 1.0, 0, np.random.default_rng(seed), todo="10.3",
                                hints=HINTS)).tolist() for seed in (7, 7, 8)]
    if runs[0] != runs[1] or runs[0] == runs[2]:
        raise Failure(check, todo="10.3", expected="reproducible draws from the rng passed in",
                      got="the same seed gave different tokens" if runs[0] != runs[1] else
                      "another seed gave the same tokens",
                      looks_like="numpy's global random state (np.random.choice) instead of rng.choice",
                      hint=HINTS["10.3"])
    yield Passed(check)


def _top(p) -> str:
    order = np.argsort(-p)[:5]
    return ", ".join(f"{int(i)}: {p[i]:.3f}" for i in order)


def _loop(code):
    from max_gpt2.reference import reference_greedy
    from checks.common import reference

    fn = code.get(STEP, "generate")
    model = reference()
    calls = []

    def next_logits(ids):
        from max_gpt2.reference import reference_logits

        calls.append(np.asarray(ids).shape)
        return reference_logits(model, ids)

    check = f"greedy generate() gives transformers' generate(do_sample=False): {NEW} tokens"
    got = code.run(check, fn, next_logits, PROMPT, NEW, todo="10.4", hints=HINTS, expected=f"{NEW} token ids")
    want = reference_greedy(model, PROMPT, NEW)
    if not _ints(got) or [int(t) for t in got] != want:
        raise Failure(check, todo="10.4", expected=f"{want} for the prompt {PROMPT}", got=repr(got),
                      looks_like=_loop_mistake(got, want, calls), hint=HINTS["10.4"])
    yield Passed(check)

    check = "sampling in the loop: a seed reproduces it, and top_k 1 is greedy"
    runs = [[int(t) for t in code.run(check, fn, next_logits, PROMPT, 4, temperature=0.9, top_k=1 if k else 40,
                                      rng=np.random.default_rng(3), todo="10.4", hints=HINTS)] for k in (1, 0, 0)]
    if runs[0] != want[:4] or runs[1] != runs[2]:
        raise Failure(check, todo="10.4", expected=f"top_k 1: {want[:4]}; the same seed twice: the same tokens",
                      got=f"top_k 1: {runs[0]}; seed 3 twice: {runs[1]} and {runs[2]}",
                      hint="pass temperature, top_k and rng on to sample_next_token")
    yield Passed(check)

    check = "generation stops at eos_token_id, which is not returned"
    stop = want[2]
    got = [int(t) for t in code.run(check, fn, next_logits, PROMPT, NEW, eos_token_id=stop, todo="10.4", hints=HINTS)]
    if got != want[:want.index(stop)]:
        raise Failure(check, todo="10.4", expected=f"{want[:want.index(stop)]} (stopping before {stop})",
                      got=repr(got), hint="break out of the loop when the new token is eos_token_id")
    yield Passed(check)


def _ints(got) -> bool:
    try:
        return all(float(t) == int(t) for t in got)
    except (TypeError, ValueError):
        return False


def _loop_mistake(got, want, calls) -> str:
    if not _ints(got):
        return ""
    got = [int(t) for t in got]
    if got[: len(PROMPT)] == PROMPT and got[len(PROMPT):] == want:
        return "the prompt is returned too: return only the new tokens"
    if len(got) != len(want):
        return f"{len(got)} tokens for max_new_tokens={NEW}"
    if calls and all(shape[-1] == 1 for shape in calls[1:]):
        return "only the newest token was fed back: without a KV cache the model must see the whole sequence"
    return "check that you take the last position's logits ([:, -1]), not the first"
