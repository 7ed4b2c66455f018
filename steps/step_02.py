"""Step 02 · The feed-forward network (MLP)

What you build: `GPT2MLP`, the part of each transformer block that works on every position on
its own: widen the hidden state from n_embd to inner_dim (4 x wider in GPT-2), apply GELU,
project back to n_embd.

Why: attention (step 04) mixes information between positions; the MLP is where each position
is transformed. Two thirds of GPT-2's block parameters are here.

GPT-2 specifics:
- The two projections are named `c_fc` and `c_proj`, as in the checkpoint
  (`h.0.mlp.c_fc.weight`), so step 11 can load the weights by name.
- GPT-2 uses the tanh approximation of GELU (transformers calls it "gelu_new"), not the exact
  erf form; the two differ by up to ~1e-3, which is enough to change generated text.

When finished, it lives in: max_gpt2/model.py, class GPT2MLP (ANCHOR: feed_forward_network).

Check:   pixi run s02   (or: make s02; the checker is checks/s02_mlp.py)
Compare: python solutions/solution_02.py
"""

from __future__ import annotations

import max.experimental.functional as F  # noqa: F401  (you will need it)
from max.experimental.nn import Linear, Module  # noqa: F401
from max.experimental.tensor import Tensor

from step_01 import GPT2Config


class GPT2MLP(Module):
    """Widen to inner_dim, apply GELU (tanh approximation), project back to n_embd."""

    def __init__(self, config: GPT2Config) -> None:
        # TODO 2.1: create the two projections, both with a bias:
        #   self.c_fc:   n_embd -> config.inner_dim
        #   self.c_proj: config.inner_dim -> n_embd
        # Hint: Linear(in_dim, out_dim, bias=True). The names matter: they are the checkpoint's.
        raise NotImplementedError("TODO 2.1: create self.c_fc and self.c_proj")

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, n_embd)
        # TODO 2.2: c_fc, then GELU with the tanh approximation, then c_proj.
        # Hint: F.gelu takes an `approximate` argument.
        raise NotImplementedError("TODO 2.2: c_fc -> GELU (tanh) -> c_proj")
