"""Step 05 solution: layer normalization is max_gpt2.model.LayerNorm.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class. Run this file to read it: python solutions/solution_05.py
"""

from max_gpt2.model import LayerNorm

__all__ = ["LayerNorm"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("layer_normalization")
