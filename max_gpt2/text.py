"""Text in, text out: `generate`, `complete` and `stream` over a model's token loop.

`TextAPI` is what `GPT2` inherits for text; it needs only `generate_tokens`, `tokenizer` and
`source` from the class it is mixed into, so the token loop and the text around it change
apart. Stop strings are found by one scanner, `StopScanner`, for every way of generating.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from max_gpt2.errors import GenerationError, TokenizerError
from max_gpt2.sampling import Sampling
from max_gpt2.tokenizer import GPT2Tokenizer


@dataclass
class Generated:
    """One row's result: the new tokens, their text, and why it stopped."""

    tokens: list[int]
    text: str
    finish_reason: str  # "eos", "stop", "length" (max_new_tokens), "context" (n_positions)


@dataclass
class Stats:
    """Figures of one streamed generation, filled in as it runs."""

    tokens: int = 0
    first_token_s: float | None = None  # time to first token: tokenizing, prefill, first sample
    elapsed_s: float = 0.0
    finish_reason: str = ""  # as in Generated

    @property
    def tokens_per_s(self) -> float:
        """The decode rate: tokens after the first, over the time after the first."""
        if self.first_token_s is None or self.tokens < 2:
            return 0.0
        return (self.tokens - 1) / max(self.elapsed_s - self.first_token_s, 1e-9)


class StopScanner:
    """Finds the first stop string in text that grows, and says how much of it is safe to show:
    text that may still turn out to begin a stop string is held back."""

    def __init__(self, stop: str | Sequence[str] | None) -> None:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise GenerationError(f"stop must be a string or a list of strings, got {stop!r}")
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def cut(self, text: str) -> int | None:
        """Where the first stop string in `text` begins, or None."""
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        return min(hits) if hits else None

    def safe(self, text: str) -> int:
        """How much of `text` (with no stop string in it) can be shown now."""
        return max(len(text) - self.hold, 0)


class TextAPI:
    """Text generation for a class with `generate_tokens(rows, n, sampling, sliding_window=)`,
    `tokenizer` and `source`."""

    tokenizer: GPT2Tokenizer | None
    source: str

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 50,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
    ) -> str | list[str]:
        """Continues a prompt (or each of a list of prompts, as one batch) and returns the new text.

        Greedy by default, as in transformers; `do_sample=True` samples with `temperature`,
        `top_k` and `top_p`, reproducibly when `seed` is set. Stops at <|endoftext|>, at any of
        the `stop` strings (which are cut off), or after `max_new_tokens`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        results = self.complete(prompts, max_new_tokens, sampling, stop=stop, sliding_window=sliding_window)
        texts = [r.text for r in results]
        return texts[0] if isinstance(prompt, str) else texts

    def complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
    ) -> list[Generated]:
        """Like `generate`, with the tokens and the reason each row stopped."""
        tok = self.require_tokenizer()
        scanner = StopScanner(stop)
        tokens = self.generate_tokens([self._encode(p) for p in prompts], max_new_tokens, sampling,
                                      sliding_window=sliding_window)
        rows = [Generated([], "", "") for _ in prompts]
        for nxt in tokens:
            for row, t in zip(rows, nxt):
                if row.finish_reason:
                    continue
                if int(t) == tok.eos_token_id:
                    row.finish_reason = "eos"
                    continue
                row.tokens.append(int(t))
                if scanner.stops:
                    text = tok.decode(row.tokens)
                    if (cut := scanner.cut(text)) is not None:
                        row.finish_reason, row.text = "stop", text[:cut]
            if all(r.finish_reason for r in rows):
                tokens.close()
                break
        for row in rows:
            if row.finish_reason != "stop":
                row.text = tok.decode(row.tokens)
            if not row.finish_reason:
                row.finish_reason = "length" if len(row.tokens) == max_new_tokens else "context"
        return rows

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
        stats: Stats | None = None,
    ) -> Iterator[str]:
        """Yields the continuation of one prompt as text pieces, as the tokens arrive.

        A piece never ends inside a multi-byte character. Stop strings are not yielded. Pass a
        `Stats` to have it filled with the token count and timings. Bad arguments raise here,
        not at the first piece.
        """
        stats = stats if stats is not None else Stats()
        start = time.perf_counter()
        tok = self.require_tokenizer()
        scanner = StopScanner(stop)
        tokens = self.generate_tokens([self._encode(prompt)], max_new_tokens, sampling, sliding_window=sliding_window)
        return self._pieces(tokens, tok, scanner, stats, start, max_new_tokens)

    @staticmethod
    def _pieces(tokens, tok: GPT2Tokenizer, scanner: StopScanner, stats: Stats, start: float,
                max_new_tokens: int) -> Iterator[str]:
        text_stream, text, sent = tok.stream(), "", 0
        try:
            for nxt in tokens:
                t = int(nxt[0])
                stats.elapsed_s = time.perf_counter() - start
                if stats.first_token_s is None:
                    stats.first_token_s = stats.elapsed_s
                if t == tok.eos_token_id:
                    stats.finish_reason = "eos"
                    break
                stats.tokens += 1
                text += text_stream.push(t)
                if (cut := scanner.cut(text)) is not None:
                    stats.finish_reason = "stop"
                    if cut > sent:
                        yield text[sent:cut]
                    return
                if scanner.safe(text) > sent:
                    yield text[sent:scanner.safe(text)]
                    sent = scanner.safe(text)
        finally:
            tokens.close()  # the cache goes back to the pool now, not when garbage is collected
        if not stats.finish_reason:
            stats.finish_reason = "length" if stats.tokens == max_new_tokens else "context"
        text += text_stream.flush()
        cut = scanner.cut(text)
        if (cut if cut is not None else len(text)) > sent:
            yield text[sent:cut]

    def require_tokenizer(self) -> GPT2Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.source or 'this checkpoint'} has no tokenizer files (tokenizer.json, or vocab.json "
                "and merges.txt): pass tokenizer= / --tokenizer with a folder that has them"
            )
        return self.tokenizer

    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise GenerationError(f"a prompt must be text, not {type(prompt).__name__}")
        if not prompt:
            raise GenerationError("empty prompt: type some text to continue")
        return self.require_tokenizer().encode(prompt)
