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
FLOAT32_SPREAD = 4  # where float32's rounding alone exceeds TOLERANCE: see _against_float64
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
    batches = [rng.integers(0, vocab, (batch, length))
               for batch, length in ((1, 1), (2, 7), (3, min(33, model.config.n_positions)))]
    ours_logits = [model.logits(ids) for ids in batches]
    theirs_logits = [reference.reference_logits(ref, ids) for ids in batches]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours_logits, theirs_logits))
    if worst <= TOLERANCE:
        rows.append(("max |Δlogit|", f"{worst:.2e} over batches 1x1, 2x7, 3x33 (tolerance {TOLERANCE:g})", True))
    else:  # the float32 rounding of these weights, or a bug: float64 tells which
        rows.append(_against_float64(ref, batches, ours_logits, theirs_logits, worst))

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


def _against_float64(ref, batches, ours_logits, theirs_logits, worst: float) -> tuple[str, str, bool]:
    """The logits row when MAX and transformers differ by more than TOLERANCE.

    Weights far from a trained model's scale (random ones at std 0.2, say) make logits that
    spread over tens, whose float32 rounding shows at the second decimal in every float32
    engine, transformers included. So both are measured against transformers in float64, the
    exact result for this purpose, and MAX passes when its distance from it is at most
    FLOAT32_SPREAD times transformers' own float32 distance. Our kernels sum in another order
    than transformers' BLAS (long runs of partial sums where a blocked matmul keeps shorter
    ones), so their rounding may be a few times larger: 2.2 times on 124M at std 0.2, 0.8 times
    on a 3-layer model at std 1.0. A bug moves the logits by orders of magnitude more: a skipped
    transpose of attn.c_proj by tens.
    """
    from max_gpt2 import reference

    ref.double()  # in place, for the memory: a float64 copy of gpt2-xl beside it would not fit
    try:
        exact = [reference.reference_logits(ref, ids, dtype=np.float64) for ids in batches]
    finally:
        ref.float()
    ours = max(float(np.abs(a - e).max()) for a, e in zip(ours_logits, exact))
    theirs = max(float(np.abs(t - e).max()) for t, e in zip(theirs_logits, exact))
    bound = max(TOLERANCE, FLOAT32_SPREAD * theirs)
    return ("max |Δlogit|", f"{worst:.2e} over batches 1x1, 2x7, 3x33; against float64: ours {ours:.2e}, "
                            f"transformers' float32 {theirs:.2e} (tolerance {FLOAT32_SPREAD}x theirs)", ours <= bound)


def require_float32(precision) -> None:
    """Verify's tolerance is float32's: narrower weights would fail it by design, not by a bug."""
    if not precision.exact:
        raise PrecisionError(f"verify proves float32 weights compute exactly what transformers computes; "
                             f"{precision} differ from it by their rounding: run verify without --dtype/--quantize")


def _loss(logits: np.ndarray, ids: np.ndarray) -> float:
    from max_gpt2.evaluate import log_softmax

    logp = log_softmax(logits[:-1])
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())
