"""Step 08 · The language-model head

What you build: `GPT2LMHeadModel`, GPT-2 as a language model: token ids in, for every position
a score (logit) for each of the vocab_size tokens that could come next.

    logits = GPT2Model(input_ids) @ wte.weight^T          (B, T, n_embd) -> (B, T, vocab_size)

Why tied: GPT-2 has no separate output matrix. The head reuses the token embedding `wte`
(vocab_size x n_embd): a hidden state scores each token by its dot product with that token's
embedding. The checkpoint therefore has no `lm_head.weight` of its own, and a model that creates
one starts from random numbers there (the classic "untied head" bug: it loads, and it talks
nonsense).

When finished, it lives in: max_gpt2/model.py, class GPT2LMHeadModel
(ANCHOR: language_model_head).

Check:   pixi run s08   (or: make s08; the checker is checks/s08_lm_head.py)
Compare: python solutions/solution_08.py
"""

from __future__ import annotations

from max.experimental.nn import Module
from max.experimental.tensor import Tensor

from step_01 import GPT2Config
from step_07 import GPT2Model  # noqa: F401


class GPT2LMHeadModel(Module):
    """GPT-2 with its language-model head, tied to the token embedding."""

    def __init__(self, config: GPT2Config) -> None:
        # TODO 8.1: self.transformer, the GPT2Model of step 07. The name gives every parameter
        # the checkpoint's "transformer." prefix. Create nothing else: the head is wte.
        raise NotImplementedError("TODO 8.1: self.transformer")

    def forward(self, input_ids: Tensor) -> Tensor:  # input_ids: (B, T) int64
        # TODO 8.2: the hidden states from self.transformer, times wte's weight transposed.
        # Hint: self.transformer.wte.weight is (vocab_size, n_embd); `.T` transposes it.
        raise NotImplementedError("TODO 8.2: logits from the tied head")
