"""Choosing the next token from logits, with Hugging Face's names and meanings.

Applied in HF's order: temperature, then top-k, then top-p (nucleus). `do_sample=False` or
`temperature=0` is greedy. Runs on the host in numpy: one [batch, vocab] row per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from max_gpt2.errors import GenerationError, SettingsError


@dataclass
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1.0: no limit
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not _number(self.temperature) or not 0 <= self.temperature < math.inf:
            raise SettingsError(f"temperature must be >= 0 and finite (0 is greedy), got {self.temperature!r}")
        if not _whole(self.top_k) or self.top_k < 0:
            raise SettingsError(f"top_k must be a whole number >= 0 (0 turns it off), got {self.top_k!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise SettingsError(f"top_p must be in (0, 1] (1 turns it off), got {self.top_p!r}")
        if self.seed is not None and (not _whole(self.seed) or self.seed < 0):
            raise SettingsError(f"seed must be a whole number >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def sampler(self) -> Sampler:
        return Sampler(self)


def check_max_new_tokens(max_new_tokens) -> None:
    """Any count >= 1 is valid: generation stops at the context limit (n_positions) anyway."""
    if not _whole(max_new_tokens) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")


def _whole(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


class Sampler:
    """Draws next tokens; seeded once, so a whole generation is reproducible."""

    def __init__(self, settings: Sampling) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """[batch, vocab] logits -> [batch] token ids."""
        s = self.settings
        if s.greedy:
            return logits.argmax(axis=-1)
        probs = probabilities(logits, s.temperature, s.top_k, s.top_p)
        u = self.rng.random((probs.shape[0], 1))
        # Inverse CDF; the clip guards against a cumulative sum that ends a hair below 1.
        return np.minimum((probs.cumsum(axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def probabilities(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The sampling distribution after temperature, top-k and top-p, as float64 rows summing to 1."""
    # The largest logit is subtracted first: divided by a tiny temperature, raw logits would
    # overflow to inf, and inf - inf is NaN. The rest may overflow to -inf: probability 0.
    x = logits.astype(np.float64)
    with np.errstate(over="ignore"):
        x = (x - x.max(axis=-1, keepdims=True)) / temperature
    if 0 < top_k < x.shape[-1]:
        kth = np.partition(x, -top_k, axis=-1)[:, -top_k, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_probs = softmax(np.take_along_axis(x, order, axis=-1))
        # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
        before = sorted_probs.cumsum(axis=-1) - sorted_probs
        drop_sorted = before >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    return softmax(x)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
