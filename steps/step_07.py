"""Step 07 · Embeddings and the stack of blocks

What you build: `GPT2Model`, the body of GPT-2: token ids in, one hidden state per position out.

    x = wte[input_ids] + wpe[0, 1, ..., T-1]     token embedding + position embedding
    x = h[0](x); x = h[1](x); ... h[n_layer-1]   the blocks of step 06, in order
    x = ln_f(x)                                  a final layer norm

Why: attention by itself does not know where a token stands (it would treat the sequence as a
bag of tokens); the learned position embedding `wpe` tells it. Stacking blocks gives the model
depth: 12 in GPT-2 124M, 48 in GPT-2 XL, the same code for all.

Names: wte (word token embedding), wpe (word position embedding), h (the blocks), ln_f (final
layer norm), as in the checkpoint: `transformer.h.3.attn.c_attn.weight` is block 3's.

When finished, it lives in: max_gpt2/model.py, class GPT2Model
(ANCHOR: stacking_transformer_blocks).

Check:   pixi run s07   (or: make s07; the checker is checks/s07_model.py)
Compare: python solutions/solution_07.py
"""

from __future__ import annotations

from max.experimental.nn import Embedding, Module, ModuleList  # noqa: F401
from max.experimental.tensor import Tensor

from step_01 import GPT2Config
from step_05 import LayerNorm  # noqa: F401
from step_06 import GPT2Block  # noqa: F401


class GPT2Model(Module):
    """Token and position embeddings, the stack of blocks, and the final layer norm."""

    def __init__(self, config: GPT2Config) -> None:
        # TODO 7.1: the four parts, named as in the checkpoint:
        #   self.wte:  an embedding of vocab_size tokens, n_embd wide
        #   self.wpe:  an embedding of n_positions positions, n_embd wide
        #   self.h:    n_layer GPT2Blocks (block i gets layer_idx=i)
        #   self.ln_f: a LayerNorm, n_embd wide, eps=config.layer_norm_epsilon
        # Hint: Embedding(count, dim=width); ModuleList(...) holds the blocks so that their
        # parameters are named h.0..., h.1..., like the checkpoint's.
        raise NotImplementedError("TODO 7.1: wte, wpe, h, ln_f")

    def forward(self, input_ids: Tensor) -> Tensor:  # input_ids: (B, T) int64
        # TODO 7.2: embeddings (token + position), every block in order, then ln_f.
        # Hint: Tensor.arange(T, dtype=input_ids.dtype, device=input_ids.device) gives the
        # positions, with T = input_ids.shape[1]; an Embedding is called like a function.
        raise NotImplementedError("TODO 7.2: embed, run the blocks, ln_f")
