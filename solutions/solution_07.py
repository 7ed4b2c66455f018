"""Step 07 solution: embeddings and the stack of blocks are max_gpt2.model.GPT2Model.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class (forward_cached is for generation with a key/value cache; the tutorial does not need it).
Run this file to read it: python solutions/solution_07.py
"""

from max_gpt2.model import GPT2Model

__all__ = ["GPT2Model"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("stacking_transformer_blocks")
