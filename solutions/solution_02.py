"""Step 02 solution: the feed-forward network is max_gpt2.model.GPT2MLP.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class. Run this file to read it: python solutions/solution_02.py
"""

from max_gpt2.model import GPT2MLP

__all__ = ["GPT2MLP"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("feed_forward_network")
