"""What a checker says: one line per passed check, or one failure that teaches.

A failure names the TODO to work on, what was expected, what came back, what the numbers look
like (when they match a known mistake) and a hint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PASS, FAIL = "✓", "✗"


@dataclass
class Passed:
    text: str

    def __str__(self) -> str:
        return f"  {PASS} {self.text}"


class Failure(Exception):
    """A check that did not pass. Raised by a checker; the runner prints it and moves on."""

    def __init__(self, check: str, *, todo: str = "", expected: str = "", got: str = "",
                 looks_like: str = "", hint: str = "") -> None:
        super().__init__(check)
        self.check, self.todo, self.expected, self.got = check, todo, expected, got
        self.looks_like, self.hint = looks_like, hint

    def __str__(self) -> str:
        lines = [f"  {FAIL} {self.check}"]
        for label, text in (("TODO", self.todo), ("expected", self.expected), ("got", self.got),
                            ("looks like", self.looks_like), ("hint", self.hint)):
            if text:
                lines.append(f"      {label + ':':<11} {text}")
        return "\n".join(lines)


def shape(a) -> str:
    return "[" + ", ".join(str(int(d)) for d in np.shape(a)) + "]"


def tolerance(want: np.ndarray) -> float:
    """How far float32 results of two libraries may differ: 2e-5 of the values' size.

    They agree to ~1e-6 here; GPT-2's tanh GELU and the exact one differ by ~1e-4."""
    finite = np.abs(want[np.isfinite(want)])
    return 2e-5 * max(1.0, float(finite.max()) if finite.size else 1.0)


def gap(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want|, where -inf against -inf counts as equal; inf when shapes differ."""
    if np.shape(got) != np.shape(want):
        return float("inf")
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore"):  # -inf - -inf
        diff = np.where(got == want, 0.0, np.abs(got - want))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def close(got, want) -> bool:
    return gap(got, want) <= tolerance(np.asarray(want))


def expect_close(check: str, got, want, *, todo: str, expected: str, hint: str,
                 mistakes: dict | None = None, hints: dict[str, str] | None = None) -> Passed:
    """Passes when `got` equals `want` to float32 accuracy; else a Failure that names the known
    mistake the numbers match, if any.

    `mistakes` maps a description to what that mistake computes, or to (that, the TODO where it
    is made); the failure then points at that TODO, with its hint from `hints`."""
    got, want = np.asarray(got), np.asarray(want)
    if close(got, want):
        return Passed(f"{check} (max |Δ| {gap(got, want):.1e})")
    looks_like = ""
    for name, wrong in (mistakes or {}).items():
        wrong, where = wrong if isinstance(wrong, tuple) else (wrong, todo)
        if close(got, wrong):
            looks_like, hint = name, (hints or {}).get(where, hint) if where != todo else hint
            todo = where
            break
    raise Failure(check, todo=todo, expected=f"{expected}, shape {shape(want)}",
                  got=describe_difference(got, want), looks_like=looks_like, hint=hint)


def describe_difference(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"shape {shape(got)}"
    if np.isnan(got).any():
        where = tuple(int(i) for i in np.argwhere(np.isnan(got))[0])
        return f"NaN at {list(where)} (a softmax over a row with every entry -inf gives NaN)"
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.where(g == w, 0.0, np.abs(g - w))
    where = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return (f"shape {shape(got)} as expected, but values differ by up to {diff[where]:.3g} "
            f"at {[int(i) for i in where]}: expected {w[where]:.6g}, got {g[where]:.6g}")
