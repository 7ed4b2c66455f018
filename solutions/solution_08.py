"""Step 08 solution: the language-model head is max_gpt2.model.GPT2LMHeadModel.

The package is this project's one implementation of GPT-2, so the solution is the package's own
class. It also accepts checkpoints whose config says tie_word_embeddings: false (they carry
their own lm_head.weight); GPT-2's own never do. Run this file to read it:
python solutions/solution_08.py
"""

from max_gpt2.model import GPT2LMHeadModel

__all__ = ["GPT2LMHeadModel"]

if __name__ == "__main__":
    from package_source import print_anchor

    print_anchor("language_model_head")
