"""Step 10 solution: sampling is max_gpt2.sampling (probabilities, Sampler); the loop below is the
one thing of the tutorial's own, because the package's loop (max_gpt2/engine.py,
GPT2.generate_tokens) keeps a KV cache (max_gpt2/cache.py) and feeds only each new token, where
this one recomputes the whole sequence at every step. Run this file to read the package's code:
python solutions/solution_10.py
"""

from __future__ import annotations

import numpy as np

from max_gpt2.sampling import Sampler, Sampling, probabilities

__all__ = ["probabilities", "sample_next_token", "generate"]


def sample_next_token(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """[batch, vocab] logits -> [batch] token ids, drawn with `rng` by the package's Sampler."""
    sampler = Sampler(Sampling(do_sample=temperature > 0, temperature=temperature, top_k=top_k))
    sampler.rng = rng
    return sampler(logits)


def generate(next_logits, prompt_ids, max_new_tokens, *, temperature=0.0, top_k=0, rng=None, eos_token_id=None):
    """Continues `prompt_ids` by up to max_new_tokens tokens; returns the new tokens only."""
    rng = rng if rng is not None else np.random.default_rng()
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        last = next_logits(np.array([ids], dtype=np.int64))[:, -1]  # [1, vocab]: scores for the next token
        token = int(sample_next_token(last, temperature, top_k, rng)[0])
        if token == eos_token_id:
            break
        ids.append(token)
    return ids[len(prompt_ids):]


if __name__ == "__main__":
    from package_source import print_source

    print_source(probabilities, Sampler)
