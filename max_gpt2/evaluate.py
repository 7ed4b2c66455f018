"""`max-gpt2 eval`: a model's perplexity on a text, and how far its predictions move from float32's.

Perplexity is measured as in transformers' "Perplexity of fixed-length models": windows of at
most `max_length` tokens, one starting every `stride` tokens (default: half a window). Each
window scores only the tokens the previous one did not reach; the tokens before them are
context (label -100 in transformers), so every token is scored once, with at least
`max_length - stride` tokens before it once the text is longer than a window. The negative
log-likelihoods are summed and divided by the number of tokens scored. (The doc's snippet
weights each window's mean loss by its target count minus one, which is right only for the
first window: transformers issue #34138.)

A token is scored only with at least one token before it in its window: the text's first token
never is, nor, when stride equals max_length, the first token of each window.

`reference` (`--against float32`) is a second model on the same weights: on the same windows
and scored positions, the mean KL(reference || model) and how often both rank the same token
first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from max_gpt2.errors import EvaluationError

ROWS_AT_ONCE = 256  # positions turned into float64 log-probabilities together, to bound memory


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) are fed to the model; tokens [scored, end) are scored."""

    begin: int
    end: int
    scored: int


def windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """transformers' windows over `n_tokens` tokens, leaving out one with nothing to score."""
    found, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        scored = max(previous_end, begin + 1)  # a token is predicted from the one before it
        if scored < end:
            found.append(Window(begin, end, scored))
        previous_end = end
        if end == n_tokens:
            break
    return found


@dataclass
class Evaluation:
    """What one pass over a text measured."""

    tokens: int  # in the text (after any cap)
    scored: int  # tokens whose likelihood was counted
    windows: int
    max_length: int
    stride: int
    nll: float  # summed over the scored tokens, in nats
    kl: float | None = None  # mean KL(reference || model) per scored token, in nats
    agreement: float | None = None  # fraction of scored positions where both rank the same token first

    @property
    def mean_nll(self) -> float:
        return self.nll / self.scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def check_window(max_length: int | None, stride: int | None, n_positions: int | None = None) -> None:
    """Raises for a window or stride that cannot work. Without `n_positions` (before the model is
    loaded) only what can be told without it is checked."""
    if max_length is not None and max_length < 2:
        raise EvaluationError(f"--max-length {max_length} is too short: a window needs 2 tokens to score one")
    if stride is not None and stride <= 0:
        raise EvaluationError(f"--stride must be at least 1, not {stride}")
    if n_positions is not None and max_length is not None and max_length > n_positions:
        raise EvaluationError(f"--max-length {max_length} does not fit the model's context of {n_positions} "
                              f"tokens (n_positions): give at most {n_positions}")
    window = n_positions if max_length is None else max_length
    if stride is not None and window is not None and stride > window:
        raise EvaluationError(f"--stride {stride} is longer than the window ({window} tokens): tokens between "
                              "windows would never be scored; give a stride of at most --max-length")


def check_tokens(ids: np.ndarray) -> None:
    if ids.ndim != 1 or len(ids) < 2:
        raise EvaluationError(f"the text is {ids.size} token{'s' * (ids.size != 1)}: perplexity needs at least 2, "
                              "one to predict from and one to score")


def evaluate(
    model,
    ids: Sequence[int],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    reference=None,
    step: Callable[[int, int, float], None] | None = None,
) -> Evaluation:
    """Perplexity of `model` (a GPT2) on token ids by sliding windows; with `reference` (another
    GPT2 on the same vocabulary), also KL(reference || model) and top-1 agreement.

    `step(windows_done, windows_total, perplexity_so_far)` is called after each window.
    """
    ids = np.asarray(ids, dtype=np.int64)
    check_tokens(ids)
    check_window(max_length, stride, model.config.n_positions)
    max_length = model.config.n_positions if max_length is None else max_length
    stride = max_length // 2 if stride is None else stride
    plan = windows(len(ids), max_length, stride)
    result = Evaluation(tokens=len(ids), scored=0, windows=len(plan), max_length=max_length, stride=stride, nll=0.0)
    kl, agreed = 0.0, 0
    for done, w in enumerate(plan, 1):
        rows = np.arange(w.scored - 1, w.end - 1) - w.begin  # the positions predicting tokens [scored, end)
        targets = ids[w.scored:w.end]
        logits = model.logits(ids[w.begin:w.end])[0]
        theirs = None if reference is None else reference.logits(ids[w.begin:w.end])[0]
        for at in range(0, len(rows), ROWS_AT_ONCE):
            chunk = rows[at:at + ROWS_AT_ONCE]
            logq = log_softmax(logits[chunk])
            result.nll -= float(logq[np.arange(len(chunk)), targets[at:at + ROWS_AT_ONCE]].sum())
            if theirs is not None:
                logp = log_softmax(theirs[chunk])
                kl += float((np.exp(logp) * (logp - logq)).sum())
                agreed += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        result.scored += len(rows)
        if step is not None:
            step(done, len(plan), result.perplexity)
    if reference is not None:
        result.kl, result.agreement = kl / result.scored, agreed / result.scored
    return result


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In float64, shifted by each row's maximum, so neither the sum over the vocabulary nor the
    sums over thousands of tokens that follow add rounding error of their own."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# --- the command ------------------------------------------------------------------------------


def read_text(path: str | None) -> tuple[str, str]:
    """The text to score and a phrase saying what it is. Without a path: English that ships with
    Python itself (the documentation topics `help()` shows), so the command runs anywhere."""
    if path is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise EvaluationError("this Python has no pydoc_data (its documentation topics) to score by default: "
                                  "give a text FILE") from None
        return "\n\n".join(topics.values()), "Python's documentation topics (pydoc_data/topics.py, the text only)"
    from pathlib import Path

    file = Path(path)
    if not file.exists():
        raise EvaluationError(f"no such file: {path}")
    if file.is_dir():
        raise EvaluationError(f"{path} is a folder: give a text file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{path} is not UTF-8 text (byte {e.start} is not): give a UTF-8 text file") from None
    except OSError as e:
        raise EvaluationError(f"cannot read {path}: {e.strerror}") from None
    if not text:
        raise EvaluationError(f"{path} is empty: give a file with some text to score")
    return text, path


def run(args, load: Callable, load_reference: Callable) -> int:
    """`max-gpt2 eval`. `load(args)` gives the model under test, `load_reference(args)` the
    float32 model `--against float32` compares it with; the command line decides how either is
    loaded (its precision options included)."""
    import json
    import sys

    from max_gpt2.progress import Bar

    check_window(args.max_length, args.stride)
    if args.max_tokens is not None and args.max_tokens < 2:
        raise EvaluationError(f"--max-tokens must be at least 2 (one to predict from, one to score), not {args.max_tokens}")
    text, what = read_text(args.file)
    model = load(args)
    check_window(args.max_length, args.stride, model.config.n_positions)
    ids = model.require_tokenizer().encode(text)
    if args.max_tokens is not None and len(ids) > args.max_tokens:
        ids, what = ids[:args.max_tokens], f"the first {args.max_tokens:,} tokens of {what}"
    check_tokens(np.asarray(ids))
    reference = load_reference(args) if args.against else None
    model.compile(generation=False)  # before the bar, which would otherwise stand still while it compiles
    if reference is not None:
        reference.compile(generation=False)
    with Bar("windows") as bar:
        result = evaluate(model, ids, max_length=args.max_length, stride=args.stride, reference=reference,
                          step=lambda done, total, ppl: bar(done, total, f"perplexity so far {ppl:,.2f}"))
    report = {
        "model": model.source, "text": what, "tokens": result.tokens, "scored": result.scored,
        "windows": result.windows, "max_length": result.max_length, "stride": result.stride,
        "nll": result.nll, "mean_nll": result.mean_nll, "perplexity": result.perplexity,
        "against": None if reference is None else
        {"dtype": args.against, "kl": result.kl, "top1_agreement": result.agreement},
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"eval {model.source}: {model.describe()}")
    print(f"  text        {what}")
    print(f"  windows     {result.windows:,} of at most {result.max_length:,} tokens, a new one every "
          f"{result.stride:,}")
    print(f"  scored      {result.scored:,} of {result.tokens:,} tokens")
    print(f"  perplexity  {result.perplexity:,.4f} ({result.mean_nll:.4f} nats/token)")
    if reference is not None:
        print(f"  against {args.against}: KL {result.kl:.3g} nats/token, "
              f"top-1 agreement {100 * result.agreement:.2f}%")
    return 0
