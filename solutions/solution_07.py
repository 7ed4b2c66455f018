"""Step 07 solution: embeddings and the stack of blocks are max_gpt2.model.GPT2Model.

This project has one implementation of GPT-2, the package, and this is its class. Its second
method, forward_cached, is what generation runs: each token's position and a mask of padding
come in from outside, so prompts of different lengths share a batch and a key/value cache.
Read it all: python solutions/solution_07.py
"""

from max_gpt2.model import GPT2Model

__all__ = ["GPT2Model"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("stacking_transformer_blocks")
