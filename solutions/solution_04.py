"""Step 04 solution: multi-head attention is max_gpt2.model.GPT2Attention.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class (its forward_cached serves generation with a key/value cache; the tutorial does not need
it). Run this file to read it: python solutions/solution_04.py
"""

from max_gpt2.model import GPT2Attention

__all__ = ["GPT2Attention"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("multi_head_attention")
