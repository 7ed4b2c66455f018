"""Step 04: GPT2Attention against transformers' GPT2Attention (layer 0 of the reference).

Four checks, each on its own copy of the learner's layer so that one broken method does not
hide the others: split_heads, merge_heads and attend on known inputs, then the whole layer.
"""

from __future__ import annotations

import math

import numpy as np

from checks.common import CONFIG, add_probe, build, inputs, no_grad, torch_inputs, torch_mask
from checks.report import expect_close

STEP, TITLE = 4, "multi-head attention (GPT2Attention)"
H, D, C = CONFIG.n_head, CONFIG.head_dim, CONFIG.n_embd
HINTS = {
    "4.1": "c_attn = Linear(n_embd, 3 * n_embd, bias=True), c_proj = Linear(n_embd, n_embd, bias=True), "
    "head_dim = n_embd // n_head, scale = 1 / math.sqrt(head_dim)",
    "4.2": "x.reshape([b, t, n_head, head_dim]).transpose(1, 2)",
    "4.3": "x.transpose(1, 2) first, back to (B, T, H, D), then .reshape([b, t, n_head * head_dim])",
    "4.4": "F.softmax((q @ k.transpose(-1, -2)) * self.scale + mask) @ v",
    "4.5": "q, k, v = F.split(self.c_attn(x), [C, C, C], axis=2), then split_heads on each",
    "4.6": "self.c_proj(self.merge_heads(self.attend(q, k, v, causal_mask(x.shape[1], 0, dtype=x.dtype, "
    "device=x.device))))",
    "3.1": "check step 03 first: pixi run s03",
}
CHECKS = {
    "split_heads": f"split_heads: (B, T, C) -> (B, H, T, D) with H={H}, D={D}",
    "merge_heads": "merge_heads undoes split_heads: (B, H, T, D) -> (B, T, C)",
    "attend": "attend(q, k, v, mask) is softmax(q @ k^T / sqrt(D) + mask) @ v",
    "forward": "GPT2Attention(x) equals transformers' GPT2Attention(x) (causal)",
}

EXPECTED = {
    "split_heads": "x.reshape(B, T, H, D) with T and H swapped",
    "merge_heads": "the (B, T, C) tensor that was split",
    "attend": "scaled dot-product attention of the given q, k, v with the causal mask",
    "forward": "transformers' GPT2Attention on the same x and weights, causal",
}


# --- in the graph: the reference split and inputs for attend, made with MAX ops --------------

def _heads(t):
    b, s, _ = t.shape
    return t.reshape([b, s, H, D]).transpose(1, 2)


def _attend_inputs(x):
    from max_gpt2.model import causal_mask  # the package's: attend is checked on its own

    mask = causal_mask(x.shape[1], 0, dtype=x.dtype, device=x.device)
    return _heads(x), _heads(x * 0.5 + 0.25), _heads(0.1 - x), mask


PROBES = {
    "split_heads": (lambda m, x, ids: m.split_heads(x), "4.2"),
    "merge_heads": (lambda m, x, ids: m.merge_heads(_heads(x)), "4.3"),
    "attend": (lambda m, x, ids: m.attend(*_attend_inputs(x)), "4.4"),
    "forward": (lambda m, x, ids: m(x), "4.6"),
}


def prepare(code, graph):
    probes = {}
    for name, (fn, todo) in PROBES.items():
        attn = build(code, STEP, "GPT2Attention", CONFIG, 0, check=CHECKS[name], todo="4.1", hints=HINTS,
                     expected=EXPECTED[name])
        probes[name] = add_probe(code, graph, CHECKS[name], attn, fn, "transformer.h.0.attn.", build_todo="4.1",
                                 run_todo=todo, hints=HINTS, expected=EXPECTED[name])

    def judge():
        x, _ = inputs()
        (got,) = probes["split_heads"].result()
        yield expect_close(CHECKS["split_heads"], got, split_np(x), todo="4.2", hint=HINTS["4.2"], hints=HINTS,
                           expected=EXPECTED["split_heads"],
                           mistakes={"a reshape to (B, H, T, D) without the transpose: each head got a slice of "
                                     "positions instead of a slice of features": x.reshape(len(x), H, -1, D)})
        (got,) = probes["merge_heads"].result()
        yield expect_close(CHECKS["merge_heads"], got, x, todo="4.3", hint=HINTS["4.3"], hints=HINTS,
                           expected=EXPECTED["merge_heads"], mistakes=merge_mistakes(split_np(x)))
        (got,) = probes["attend"].result()
        yield expect_close(CHECKS["attend"], got, attend_np(), todo="4.4", hint=HINTS["4.4"], hints=HINTS,
                           expected=EXPECTED["attend"],
                           mistakes=attend_mistakes())
        (got,) = probes["forward"].result()
        yield expect_close(CHECKS["forward"], got, attention(), todo="4.6", hint=HINTS["4.6"], hints=HINTS,
                           expected=EXPECTED["forward"],
                           mistakes=forward_mistakes())

    return judge


# --- expected values --------------------------------------------------------------------------

def split_np(x: np.ndarray) -> np.ndarray:
    b, t, _ = x.shape
    return x.reshape(b, t, H, D).transpose(0, 2, 1, 3)


def merge_mistakes(heads: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    b, _, t, _ = heads.shape
    return {
        "heads merged in the wrong order: (B, H, T, D) was reshaped to (B, T, C) without first moving the "
        "head axis back (transpose(1, 2)), which mixes positions and heads": (heads.reshape(b, t, C), "4.3"),
        "heads merged in the wrong order: the features must be head 0's D values, then head 1's, ... "
        "(transpose to (B, T, H, D), not (B, T, D, H))": (heads.transpose(0, 2, 3, 1).reshape(b, t, C), "4.3"),
    }


def _softmax(s: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attend(q, k, v, *, scale=1 / math.sqrt(D), mask=True, axis=-1) -> np.ndarray:
    from checks.common import causal_additive

    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = q @ k.swapaxes(-1, -2) * scale
    if mask:
        s = s + causal_additive(q.shape[2])
    return _softmax(s, axis) @ v


def _attend_args():
    x, _ = inputs()
    return split_np(x), split_np(x * 0.5 + 0.25), split_np(0.1 - x)


def attend_np() -> np.ndarray:
    return _attend(*_attend_args())


def attend_mistakes() -> dict[str, tuple[np.ndarray, str]]:
    q, k, v = _attend_args()
    return {
        "no 1/sqrt(head_dim) scale on the scores": (_attend(q, k, v, scale=1.0), "4.1"),
        "scores divided by head_dim instead of sqrt(head_dim)": (_attend(q, k, v, scale=1 / D), "4.1"),
        "the mask was not added to the scores": (_attend(q, k, v, mask=False), "4.4"),
        "softmax over the queries axis; it must run over the keys (the last axis)":
            (_attend(q, k, v, axis=-2), "4.4"),
    }


def attention(*, scale=True, mask="causal", merge="ok", order="qkv", by_hand=False) -> np.ndarray:
    """transformers' GPT2Attention on x or, with a knob turned, what a known mistake computes
    with its weights. Written out by hand (by_hand=True, no knob turned) it equals transformers';
    tests/test_tutorial.py checks that it does."""
    import torch

    attn = _hf_attention()
    x, _ = torch_inputs()
    if (scale, mask, merge, order, by_hand) == (True, "causal", "ok", "qkv", False):
        return no_grad(lambda: attn(x, attention_mask=torch_mask(x.shape[1]))[0])

    def run():
        b, t, _ = x.shape
        parts = dict(zip("qkv", attn.c_attn(x).split(C, dim=2)))
        q, k, v = (parts[n].view(b, t, H, D).transpose(1, 2) for n in order)
        s = q @ k.transpose(-1, -2) * (1 / math.sqrt(D) if scale else 1.0)
        shift = {"causal": 1, "next": 2, "none": None}[mask]
        if shift is not None:
            s = s + torch.full((t, t), float("-inf")).triu(shift)
        o = torch.softmax(s, -1) @ v  # (B, H, T, D)
        o = o.transpose(1, 2).reshape(b, t, C) if merge == "ok" else o.reshape(b, t, C)
        return attn.c_proj(o)

    return no_grad(run)


def forward_mistakes() -> dict[str, tuple[np.ndarray, str]]:
    return {
        "no 1/sqrt(head_dim) scale on the scores": (attention(scale=False), "4.1"),
        "heads merged in the wrong order (no transpose(1, 2) before the reshape)": (attention(merge="flat"), "4.3"),
        "the causal mask is off by one: each position also sees the next one": (attention(mask="next"), "3.1"),
        "no causal mask: every position sees the whole sequence": (attention(mask="none"), "4.6"),
        "query, key and value taken from c_attn in the wrong order: it holds [q | k | v]":
            (attention(order="kqv"), "4.5"),
    }


def _hf_attention():
    from checks.common import reference

    return reference().transformer.h[0].attn
