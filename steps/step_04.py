"""Step 04 · Multi-head attention

What you build: `GPT2Attention`, causal self-attention with n_head heads. Every position asks
(query) every earlier position (key) how relevant it is, and takes a weighted average of their
values. Each head does this in its own head_dim-wide slice of the hidden state.

Why: it is the only place where positions exchange information. Without it each token would be
predicted from itself alone.

GPT-2 specifics:
- One fused projection, `c_attn` (n_embd -> 3 * n_embd), produces query, key and value side by
  side: [q | k | v] along the last axis. `c_proj` (n_embd -> n_embd) mixes the heads' outputs.
- Scores are divided by sqrt(head_dim) before the softmax, so their size does not grow with the
  head width.

The data flow, with B batch, T positions, C = n_embd, H = n_head, D = head_dim = C / H:

    x (B, T, C) -> c_attn -> q, k, v (B, T, C) each -> split_heads -> (B, H, T, D)
    -> attend: softmax(q @ k^T / sqrt(D) + mask) @ v -> (B, H, T, D)
    -> merge_heads -> (B, T, C) -> c_proj -> (B, T, C)

The methods come in the order to write them, which is the order the checker checks them: the
two reshapes and attend first, each on its own known inputs, then split_qkv and forward, which
put them together.

When finished, it lives in: max_gpt2/model.py, class GPT2Attention
(ANCHOR: multi_head_attention).

Check:   pixi run s04   (or: make s04; the checker is checks/s04_attention.py)
Compare: python solutions/solution_04.py
"""

from __future__ import annotations

import math  # noqa: F401

import max.experimental.functional as F  # noqa: F401
from max.experimental.nn import Linear, Module  # noqa: F401
from max.experimental.tensor import Tensor

from step_01 import GPT2Config
from step_03 import causal_mask  # noqa: F401


class GPT2Attention(Module):
    """Causal multi-head self-attention with GPT-2's fused query/key/value projection."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        # TODO 4.1: store self.n_head and self.head_dim; create the projections, with biases:
        #   self.c_attn: n_embd -> 3 * n_embd   (query, key and value at once)
        #   self.c_proj: n_embd -> n_embd
        # and self.scale = 1 / sqrt(head_dim), the factor attend() multiplies the scores by.
        # (layer_idx is unused in GPT-2; the package takes it for GPT-2 variants that scale by layer.)
        raise NotImplementedError("TODO 4.1: c_attn, c_proj, n_head, head_dim, scale")

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, H, T, D): each head gets its own D-wide slice of the features."""
        # TODO 4.2: reshape to (B, T, H, D), then swap the T and H axes.
        # Hint: `b, t, _ = x.shape` gives B and T (symbolic: use them as they are);
        # x.reshape([...]) takes the new dims as a list; x.transpose(i, j) swaps two axes.
        raise NotImplementedError("TODO 4.2: split_heads")

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, D) -> (B, T, C): the inverse of split_heads."""
        # TODO 4.3: undo split_heads: move the head axis back next to D, then reshape.
        # A reshape alone does not do it: it would mix positions and heads.
        raise NotImplementedError("TODO 4.3: merge_heads")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Scaled dot-product attention per head: (B, H, T, D) x3 and an additive mask -> (B, H, T, D)."""
        # TODO 4.4: scores = q @ k^T (over D) times self.scale, plus the mask; softmax over the
        # keys (the last axis); the weighted sum of v.
        # Hint: k.transpose(-1, -2); F.softmax(scores) works on the last axis.
        raise NotImplementedError("TODO 4.4: attend")

    def split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> three (B, H, T, D): query, key, value."""
        # TODO 4.5: apply c_attn, cut its output into three C-wide pieces along the last axis,
        # and split each into heads.
        # Hint: F.split(t, [c, c, c], axis=2) returns the three pieces.
        raise NotImplementedError("TODO 4.5: c_attn, then split into q, k, v and into heads")

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, C)
        # TODO 4.6: split_qkv; the causal mask for T = x.shape[1] new tokens and 0 cached ones
        # (your step 03, with dtype=x.dtype, device=x.device); attend; merge_heads; c_proj.
        raise NotImplementedError("TODO 4.6: forward")
