"""Step 09 solution: tokenization is max_gpt2.tokenizer.GPT2Tokenizer (from_files).

The package is this project's one implementation of GPT-2, so the solution is the package's own
class. It also reads a checkpoint's tokenizer.json (from_folder) and streams text without
splitting a multi-byte character (stream). Run this file to read it:
python solutions/solution_09.py
"""

from max_gpt2.tokenizer import GPT2Tokenizer

__all__ = ["GPT2Tokenizer"]

if __name__ == "__main__":
    from package_source import print_source

    print_source(GPT2Tokenizer.__init__, GPT2Tokenizer.from_files, GPT2Tokenizer.encode, GPT2Tokenizer.decode)
