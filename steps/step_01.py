"""Step 01 · The model configuration

What you build: `GPT2Config`, a dataclass of GPT-2's hyper-parameters, with the values of the
124M model (OpenAI's smallest, `gpt2` on the Hugging Face Hub) as its defaults.

Why: every later step reads its sizes from this object. Using Hugging Face's field names
(`n_embd`, `n_head`, ...) means a checkpoint's config.json fills it directly in step 11, and
that our code can be read next to transformers' and the checkpoint's keys.

When finished, it lives in: max_gpt2/config.py, class GPT2Config.

Check:   pixi run s01   (or: make s01; the checker is checks/s01_config.py)
Compare: python solutions/solution_01.py
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GPT2Config:
    """GPT-2's hyper-parameters; the defaults are the 124M model's."""

    # TODO 1.1: declare the fields, with GPT-2 124M's values as defaults:
    #   vocab_size           tokens in the vocabulary: 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    #   n_positions          the longest context, in tokens (a power of two)
    #   n_embd               the width of every hidden state
    #   n_layer              how many transformer blocks
    #   n_head               attention heads per block
    #   n_inner              the MLP's width; None means 4 * n_embd
    #   activation_function  Hugging Face's name for the tanh approximation of GELU: "gelu_new"
    #   layer_norm_epsilon   the small number layer norm adds to the variance
    # Hint: the GPT-2 paper's table of sizes gives 12 layers of width 768 for the smallest
    # model; write each field as `name: type = default`.

    @property
    def head_dim(self) -> int:
        # TODO 1.2: the width of one attention head: the heads share n_embd equally.
        raise NotImplementedError("TODO 1.2: head_dim")

    @property
    def inner_dim(self) -> int:
        # TODO 1.3: the MLP's width: n_inner, or 4 * n_embd when n_inner is None.
        raise NotImplementedError("TODO 1.3: inner_dim")
