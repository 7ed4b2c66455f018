"""`max-gpt2 verify`: proof that a checkpoint runs in MAX exactly as in transformers.

Loads the same weights into transformers' GPT2LMHeadModel (by transformers' own loading code for
a Hugging Face folder; for any other format, as `max-gpt2 convert` writes them) and compares:
parameter count, max |logit difference| over a batch of several lengths, greedy continuations
token for token, and the loss on a fixed English sentence (3-4 nats per token for trained
GPT-2; about ln(vocab) ~ 10.8 for random weights).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from max_gpt2.errors import GPT2Error, PrecisionError

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
    "and the clocks were striking thirteen."
)
TOLERANCE = 1e-4  # max |Δlogit| in float32
GREEDY_TOKENS = 32


def verify(model, out=None) -> int:
    """Prints a report; returns 0 when MAX and transformers agree, 1 when they do not."""
    out = out or sys.stdout
    require_float32(model.precision)
    try:
        from max_gpt2 import reference
        from max_gpt2.weights import resolve
    except ImportError:
        raise GPT2Error("verify compares against transformers: pip install 'max-gpt2[reference]'") from None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise GPT2Error("verify compares against transformers: pip install torch transformers") from None

    if model.path is None:
        raise GPT2Error("verify needs a checkpoint on disk; this model was loaded from memory")
    found = resolve(model.path, model.config)
    if found.format == "huggingface" and model.path.is_dir():  # transformers reads the folder its own way
        ref = reference.load_reference(model.path)
    else:  # transformers reads no other format: it gets the weights in its layout, as `convert` writes them
        ref = reference.load_reference(None, found.config, found.tensors)
    source = model.source

    rows: list[tuple[str, str, bool]] = []
    ours_count = model.num_parameters
    theirs_count = sum(p.numel() for p in ref.parameters())
    rows.append(("parameters", f"{ours_count:,} (transformers: {theirs_count:,})", ours_count == theirs_count))

    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    worst = 0.0
    for batch, length in ((1, 1), (2, 7), (3, min(33, model.config.n_positions))):
        ids = rng.integers(0, vocab, (batch, length))
        worst = max(worst, float(np.abs(model.logits(ids) - reference.reference_logits(ref, ids)).max()))
    rows.append(("max |Δlogit|", f"{worst:.2e} over batches 1x1, 2x7, 3x33 (tolerance {TOLERANCE:g})", worst <= TOLERANCE))

    if model.tokenizer is not None:
        prompt = model.tokenizer.encode("The meaning of life is")
    else:
        prompt = rng.integers(0, vocab, 5).tolist()
    n = min(GREEDY_TOKENS, model.config.n_positions - len(prompt) - 1)
    theirs = reference.reference_greedy(ref, prompt, n)
    ours = [int(t[0]) for t in model.generate_tokens([prompt], n)]
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    rows.append(("greedy tokens", f"{n} of {n} equal" if same is None else f"differ from token {same}", same is None))

    if model.tokenizer is not None:
        ids = np.array([model.tokenizer.encode(SENTENCE)[: model.config.n_positions]])
        loss = _loss(model.logits(ids)[0], ids[0])
        hint = "random weights" if loss > 0.8 * math.log(vocab) else "trained weights"
        rows.append(("loss on an English sentence", f"{loss:.2f} nats/token (ln(vocab) = {math.log(vocab):.2f}: {hint})", None))

    print(f"verify {source}: {model.describe()}", file=out)
    for name, value, ok in rows:
        mark = " " if ok is None else ("✓" if ok else "✗")
        print(f"  {mark} {name:<28} {value}", file=out)
    failed = [name for name, _, ok in rows if ok is False]
    print("FAILED: " + ", ".join(failed) if failed else "OK: MAX and transformers agree", file=out)
    return 1 if failed else 0


def require_float32(precision) -> None:
    """Verify's tolerance is float32's: narrower weights would fail it by design, not by a bug."""
    if not precision.exact:
        raise PrecisionError(f"verify proves float32 weights compute exactly what transformers computes; "
                             f"{precision} differ from it by their rounding: run verify without --dtype/--quantize")


def _loss(logits: np.ndarray, ids: np.ndarray) -> float:
    from max_gpt2.evaluate import log_softmax

    logp = log_softmax(logits[:-1])
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())
