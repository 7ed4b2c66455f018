"""Step 10 · Text generation: temperature, top-k, and the sampling loop

What you build: how GPT-2's logits become text, one token at a time.
- probabilities(): logits -> the distribution to draw the next token from, shaped by
  temperature (divide the logits by it: below 1 sharpens, above 1 flattens) and top-k (only the
  k most likely tokens may be drawn);
- sample_next_token(): one token per row: the most likely one when temperature is 0 (greedy),
  else a random draw from probabilities();
- generate(): the loop. Run the model on the sequence so far, take the logits of the *last*
  position (they score the token that comes next), pick a token, append it, repeat.

Why: the model only scores; decoding decides. Greedy decoding repeats itself; pure sampling
wanders off; temperature and top-k trade one for the other. The meanings (and the order:
temperature, then top-k) are Hugging Face's, so settings carry over from transformers.

Everything here runs on the host in numpy: one [batch, vocab] row per step. This loop runs the
whole sequence through the model at every step. The package keeps each layer's keys and values
from earlier steps (a KV cache) and feeds only the new token: same tokens, much less work.

When finished, it lives in: max_gpt2/sampling.py (function probabilities, class Sampler). The
package's token loop is GPT2.generate_tokens in max_gpt2/engine.py; its KV cache is
max_gpt2/cache.py; generate(), which turns a prompt into text, is max_gpt2/text.py.

Check:   pixi run s10   (or: make s10; the checker is checks/s10_generation.py)
Compare: python solutions/solution_10.py
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def probabilities(logits: np.ndarray, temperature: float, top_k: int, top_p: float = 1.0) -> np.ndarray:
    """[batch, vocab] logits -> the sampling distribution: float64 rows that sum to 1.

    temperature > 0; top_k = 0 means no limit. (top_p, nucleus sampling, is a bonus: the package
    has it.)
    """
    if top_p < 1.0:
        raise NotImplementedError("top-p is not part of this step: see max_gpt2/sampling.py")
    x = logits.astype(np.float64)
    # TODO 10.1: temperature: divide the logits by it.
    # TODO 10.2: top-k: when 0 < top_k < vocab, set every logit below the row's k-th largest to
    # -inf (softmax gives those 0). Keep ties with the k-th, as transformers does.
    # Hint: np.partition(x, -top_k, axis=-1)[:, -top_k, None] is each row's k-th largest value.
    # Write both in place of the `raise` line below; the `return softmax(x)` after it stays.
    raise NotImplementedError("TODO 10.1: temperature (then 10.2: top-k)")
    return softmax(x)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sample_next_token(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """[batch, vocab] logits -> [batch] token ids."""
    # TODO 10.3: temperature 0 means greedy: each row's argmax. Otherwise draw one token per row
    # from probabilities(logits, temperature, top_k), with `rng` (so that a seed reproduces a
    # generation).
    # Hint: rng.choice(vocab_size, p=row) draws one index from a row of probabilities.
    raise NotImplementedError("TODO 10.3: greedy or a draw")


def generate(
    next_logits: Callable[[np.ndarray], np.ndarray],
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    rng: np.random.Generator | None = None,
    eos_token_id: int | None = None,
) -> list[int]:
    """Continues `prompt_ids` by up to max_new_tokens tokens; returns the new tokens only.

    next_logits maps token ids [1, T] to logits [1, T, vocab] (your compiled model in step 11).
    Stops early after eos_token_id, which is not returned.
    """
    rng = rng if rng is not None else np.random.default_rng()
    # TODO 10.4: the loop. Each turn: the logits of the whole sequence so far; the last
    # position's row ([:, -1], shape [1, vocab]); sample_next_token; append. Stop after
    # max_new_tokens, or at eos_token_id.
    raise NotImplementedError("TODO 10.4: the generation loop")
