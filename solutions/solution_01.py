"""Step 01 solution: the configuration is max_gpt2.config.GPT2Config.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class. Run this file to read it: python solutions/solution_01.py
"""

from max_gpt2.config import GPT2Config

__all__ = ["GPT2Config"]

if __name__ == "__main__":
    from package_source import print_source

    print_source(GPT2Config)
