"""Step 06 · The transformer block

What you build: `GPT2Block`, one of GPT-2's 12 identical layers: attention then MLP, each
applied to a layer-normalized copy of the hidden state and added back onto it:

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Why: the additions (residual connections) let every block refine the hidden state rather than
replace it, which is what makes a deep stack trainable. Normalizing each sublayer's *input*
("pre-LN", GPT-2's choice) rather than the sum ("post-LN", the original Transformer's) keeps the
residual stream itself untouched between blocks.

This step uses your own pieces: GPT2MLP (step 02), GPT2Attention (step 04), LayerNorm (step 05).

When finished, it lives in: max_gpt2/model.py, class GPT2Block (ANCHOR: transformer_block).

Check:   pixi run s06   (or: make s06; the checker is checks/s06_block.py)
Compare: python solutions/solution_06.py
"""

from __future__ import annotations

from max.experimental.nn import Module
from max.experimental.tensor import Tensor

from step_01 import GPT2Config
from step_02 import GPT2MLP  # noqa: F401
from step_04 import GPT2Attention  # noqa: F401
from step_05 import LayerNorm  # noqa: F401


class GPT2Block(Module):
    """Pre-LN: normalize before attention and before the MLP; add each result to the residual."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        # TODO 6.1: the four sublayers, named as in the checkpoint (h.0.ln_1, h.0.attn, ...):
        #   self.ln_1, self.attn, self.ln_2, self.mlp
        # Hint: both layer norms are n_embd wide with eps=config.layer_norm_epsilon;
        # GPT2Attention takes (config, layer_idx).
        raise NotImplementedError("TODO 6.1: ln_1, attn, ln_2, mlp")

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, n_embd)
        # TODO 6.2: the two residual steps in this file's docstring, in that order.
        raise NotImplementedError("TODO 6.2: pre-LN attention and MLP, each with its residual")
