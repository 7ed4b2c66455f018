"""Step 11 solution: loading is max_gpt2.weights (resolve, adapt, check; the Hugging Face layout's
plan in max_gpt2/checkpoints/huggingface.py), compiling is
max_gpt2.engine.GPT2; the prompt loop uses step 10's loop.

The package is this project's one implementation, so the solution is made of its pieces.
    python solutions/solution_11.py                       prints the package's code for this step
    python solutions/solution_11.py chat [checkpoint]     runs it (checkpoint: a folder or Hub id, default gpt2)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from max_gpt2 import GPT2
from max_gpt2.checkpoints.huggingface import plan
from max_gpt2.checkpoints.mapping import apply
from max_gpt2.weights import resolve

from solution_10 import generate


def load_weights(folder):
    """A Hugging Face checkpoint -> (config, state dict in our names and orientation): the
    package's plan for that format (names, transposes, skipped buffers, tied head), applied.
    (Called by name here, not through weights.adapt, so the tests can plant a mistake in it.)"""
    found = resolve(folder)
    return found.config, apply(plan(found.tensors, found.config), found.tensors, "Hugging Face checkpoint")


def compile_model(config, state):
    """The package's engine compiles GPT2LMHeadModel for ("batch", "seqlen") int64 ids."""
    return GPT2(config, state).logits


def chat(next_logits, tokenizer, *, max_new_tokens=40, temperature=0.8, top_k=40, seed=None, read=input, write=print):
    """Reads prompts until an empty line or the end of input; writes each continuation."""
    rng = np.random.default_rng(seed)
    while True:
        try:
            prompt = read("> ")
        except EOFError:
            return
        if not prompt.strip():
            return
        new = generate(next_logits, tokenizer.encode(prompt), max_new_tokens, temperature=temperature,
                       top_k=top_k, rng=rng, eos_token_id=tokenizer.eos_token_id)
        write(tokenizer.decode(new))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["chat"]:
        from package_source import print_source

        return print_source(plan, GPT2.graph, GPT2._compile)
    parser = argparse.ArgumentParser(prog="solution_11.py chat", description="GPT-2 on MAX, from the package's pieces.")
    parser.add_argument("checkpoint", nargs="?", default="gpt2")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv[1:])
    model = GPT2.from_pretrained(args.checkpoint, progress=print)
    chat(model.logits, model.tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
         top_k=args.top_k, seed=args.seed)


if __name__ == "__main__":
    main()
