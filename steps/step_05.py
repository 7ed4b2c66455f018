"""Step 05 · Layer normalization

What you build: `LayerNorm`, which rescales each position's hidden state to mean 0 and
variance 1 over its n_embd features, then applies a learned per-feature scale (`weight`) and
shift (`bias`):

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias      (over the last axis)

Why: it keeps the numbers flowing through 12 stacked blocks at a steady size. GPT-2 normalizes
the input of every attention and MLP (step 06) and the output of the last block (step 07).

GPT-2 specifics: the variance is the plain mean of squares (no n - 1 correction), and eps is
the config's layer_norm_epsilon (1e-5 for GPT-2; the checker uses a model with another value).

When finished, it lives in: max_gpt2/model.py, class LayerNorm (ANCHOR: layer_normalization).

Check:   pixi run s05   (or: make s05; the checker is checks/s05_layer_norm.py)
Compare: python solutions/solution_05.py
"""

from __future__ import annotations

import max.experimental.functional as F  # noqa: F401
from max.experimental.nn import Module
from max.experimental.tensor import Tensor


class LayerNorm(Module):
    """Normalize each position's features to zero mean and unit variance, then scale and shift."""

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        # TODO 5.1: the two parameters, named as in the checkpoint (h.0.ln_1.weight, .bias),
        # and eps:
        #   self.weight: dim ones   (a scale of 1 changes nothing until weights are loaded)
        #   self.bias:   dim zeros
        # Hint: a Module's Tensor attributes are its parameters; Tensor.ones([dim]).
        raise NotImplementedError("TODO 5.1: weight, bias, eps")

    def forward(self, x: Tensor) -> Tensor:  # x: (..., dim)
        # TODO 5.2: the formula in this file's docstring, over the last axis.
        # Hint: MAX has it as one op: F.layer_norm(x, gamma=..., beta=..., epsilon=...).
        # Writing it out with F.mean and F.sqrt (or F.rsqrt) works too and teaches more.
        raise NotImplementedError("TODO 5.2: normalize, then scale and shift")
