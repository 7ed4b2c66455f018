"""Step 03: causal_mask against the mask transformers' GPT-2 applies.

The Hub's checkpoint still carries it as the buffer h.N.attn.bias = tril(ones): query i sees
key j when j <= i. Ours is its additive form, with P cached keys in front.
"""

from __future__ import annotations

import numpy as np
from max.experimental.nn import Module

from checks.probe_graph import Probe
from checks.common import SEQLEN, causal_additive
from checks.report import expect_close

STEP, TITLE = 3, "causal mask (causal_mask)"
PAST = 3  # cached keys in the second check
HINTS = {
    "3.1": "F.band_part(minus_inf, num_lower=None, num_upper=0, exclude=True) on a [T, T] tensor of -inf "
    "leaves -inf strictly above the diagonal and 0 elsewhere",
    "3.2": "when num_past is not 0, F.concat([zeros of shape (T, P), the [T, T] mask], axis=1)",
}

EXPECTED = "transformers' causal mask, additive: 0.0 where visible, -inf where blocked"


class MaskProbe(Module):
    """Holds the learner's function, so the graph can trace it like a module."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def forward(self, x):
        t = x.shape[1]
        return (self.fn(t, 0, dtype=x.dtype, device=x.device),
                self.fn(t, PAST, dtype=x.dtype, device=x.device))


def prepare(code, graph):
    fn = code.get(STEP, "causal_mask")
    checks = (f"causal_mask(T={SEQLEN}, P=0) is 0 on and below the diagonal, -inf above",
              f"causal_mask(T={SEQLEN}, P={PAST}) also lets every query see the {PAST} cached keys")
    probe = graph.add(Probe(checks[0], MaskProbe(fn), lambda m, x, ids: m(x),
                            lambda e: code.failure(e, checks[0], todo="3.1", hints=HINTS, expected=EXPECTED)),
                      {}, todo="3.1", hint="")

    def judge():
        plain, past = probe.result()
        yield expect_close(checks[0], blocked_as_inf(plain), causal_additive(SEQLEN), todo="3.1", hint=HINTS["3.1"],
                           expected=EXPECTED,
                           mistakes=mistakes(SEQLEN, 0))
        yield expect_close(checks[1], blocked_as_inf(past), causal_additive(SEQLEN, PAST), todo="3.2",
                           hint=HINTS["3.2"], expected="[T, P + T]: P columns of 0.0, then the causal mask",
                           mistakes=mistakes(SEQLEN, PAST))

    return judge


def blocked_as_inf(mask: np.ndarray) -> np.ndarray:
    """A very negative number (-1e9, float32's lowest) blocks as well as -inf does."""
    return np.where(mask <= -1e9, -np.inf, mask)


def mistakes(t: int, past: int) -> dict[str, np.ndarray]:
    keys = np.arange(past + t)[None, :]
    queries = np.arange(t)[:, None] + past
    additive = lambda visible: np.where(visible, 0.0, -np.inf)  # noqa: E731
    return {
        "off by one: every position also sees the next one (the token it must predict)":
            additive(keys <= queries + 1),
        "off by one: the diagonal is blocked, so a position cannot see itself (and the first position "
        "sees nothing: its softmax is NaN)": additive(keys < queries),
        "the mask is flipped: positions see the future instead of the past": additive(keys >= queries),
        "the mask is inverted: -inf on and below the diagonal, 0 above (band_part's exclude=True keeps what is "
        "outside the band, exclude=False what is inside)": additive(keys > queries),
        "a 0/1 mask: GPT-2 adds the mask to the scores, so visible must be 0.0 and blocked -inf":
            np.where(keys <= queries, 1.0, 0.0),
        "the cached keys are blocked: every query should see all P of them":
            additive((keys <= queries) & (keys >= past)),
    }
