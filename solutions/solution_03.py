"""Step 03 solution: the causal mask is max_gpt2.model.causal_mask.

The package is this project's one implementation of GPT-2, so the solution is the package's own
function. Run this file to read it: python solutions/solution_03.py
"""

from max_gpt2.model import causal_mask

__all__ = ["causal_mask"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("causal_mask")
