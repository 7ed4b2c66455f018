"""The interactive prompt loop: type a prompt, watch GPT-2 continue it.

In a terminal it streams tokens as they come and ends each answer with one dim line of figures;
Ctrl+C stops a generation (the session goes on), Ctrl+C or Ctrl+D at the prompt leaves. With
stdin from a pipe or file it reads one prompt per line, prints each continuation, and exits 0
at the end of input, so it can be scripted.
"""

from __future__ import annotations

import dataclasses
import sys

from max_gpt2.errors import GPT2Error
from max_gpt2.sampling import Sampling, check_max_new_tokens

HELP = """\
commands (settings last for the session):
  /temp T     sampling temperature, T >= 0 (0 is greedy)
  /topk K     sample among the K likeliest tokens (0: off)
  /topp P     sample among the likeliest tokens holding mass P, 0 < P <= 1 (1: off)
  /max N      new tokens per answer, N >= 1
  /seed S     make sampling reproducible, S >= 0 (/seed off: random)
  /greedy     always take the likeliest token (/sample to sample again)
  /settings   show the settings
  /help       this list
  quit, exit, q or Ctrl+D leave; Ctrl+C stops a generation"""

QUIT = ("quit", "exit", "q", "/quit", "/exit")


@dataclasses.dataclass
class Session:
    sampling: Sampling
    max_new_tokens: int
    sliding_window: bool = False

    def __post_init__(self) -> None:
        check_max_new_tokens(self.max_new_tokens)

    def describe(self) -> str:
        s = self.sampling
        mode = "greedy" if s.greedy else f"sampling: temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}"
        seed = f", seed {s.seed}" if s.seed is not None else ""
        return f"{mode}{seed}, up to {self.max_new_tokens} new tokens"

    def command(self, line: str) -> str:
        """Applies one /command; returns what to tell the user. Raises GPT2Error on a bad value."""
        name, _, value = line[1:].partition(" ")
        value = value.strip()
        s = self.sampling
        if name == "help":
            return HELP
        if name == "settings":
            return self.describe()
        if name == "greedy":
            self.sampling = dataclasses.replace(s, do_sample=False)
            return "greedy: always the likeliest token"
        if name == "sample":
            self.sampling = dataclasses.replace(s, do_sample=True, temperature=s.temperature or 1.0)
            return self.describe()
        setters = {
            "temp": ("temperature", float), "temperature": ("temperature", float),
            "topk": ("top_k", int), "top_k": ("top_k", int),
            "topp": ("top_p", float), "top_p": ("top_p", float),
            "seed": ("seed", int),
            "max": ("max_new_tokens", int),
        }
        if name not in setters:
            raise GPT2Error(f"unknown command /{name}; /help lists them")
        field, kind = setters[name]
        if not value:
            raise GPT2Error(f"/{name} needs a value, e.g. /{name} {_example(field)}")
        if field == "seed" and value == "off":
            parsed = None
        else:
            try:
                parsed = kind(value)
            except ValueError:
                raise GPT2Error(f"/{name} takes {'a whole number' if kind is int else 'a number'}, not {value!r}") from None
        if field == "max_new_tokens":
            check_max_new_tokens(parsed)
            self.max_new_tokens = parsed
        else:
            changes = {field: parsed}
            if field in ("temperature", "top_k", "top_p") and not (field == "temperature" and parsed == 0):
                changes["do_sample"] = True  # asking for a sampling setting means sampling
            self.sampling = dataclasses.replace(s, **changes)  # validates; a bad value raises
        return self.describe()


def _example(field: str) -> str:
    return {"temperature": "0.7", "top_k": "40", "top_p": "0.9", "seed": "1", "max_new_tokens": "100"}[field]


def chat(model, sampling: Sampling, max_new_tokens: int, *, sliding_window: bool = False,
         stdin=None, stdout=None, stderr=None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    model.require_tokenizer()
    model.compile(logits=False)  # now, with progress, not inside the first answer
    session = Session(sampling, max_new_tokens, sliding_window)
    interactive = stdin.isatty()
    if interactive:
        _enable_line_editing()
        print(f"{model.describe()} from {model.source}; {session.describe()}.", file=stderr)
        print("Type a prompt and press Enter. /help for settings, quit or Ctrl+D to leave.", file=stderr)
    while True:
        try:
            line = _read(stdin, interactive)
        except KeyboardInterrupt:
            print(file=stderr)
            return 0
        except UnicodeDecodeError as e:
            print(f"error: that line is not UTF-8 text ({e.reason} at byte {e.start}); type it again", file=stderr)
            continue
        if line is None:  # end of input
            if interactive:
                print(file=stderr)
            return 0
        prompt = line.rstrip("\r\n")
        if not prompt.strip():
            continue
        if prompt.strip() in QUIT:
            return 0
        if prompt.startswith("/"):
            try:
                print(session.command(prompt.strip()), file=stderr)
            except GPT2Error as e:
                print(f"error: {e}", file=stderr)
            continue
        _answer(model, session, prompt, stdout, stderr, interactive)


def _read(stdin, interactive: bool) -> str | None:
    if interactive and stdin is sys.stdin:
        try:
            return input("› ")
        except EOFError:
            return None
    raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
    if not raw:
        return None
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _answer(model, session: Session, prompt: str, stdout, stderr, interactive: bool) -> None:
    from max_gpt2.text import Stats

    stats = Stats()
    try:  # a prompt the model cannot take is refused here, before anything is printed
        pieces = model.stream(prompt, session.max_new_tokens, session.sampling,
                              sliding_window=session.sliding_window, stats=stats)
    except GPT2Error as e:
        print(f"error: {e}", file=stderr)
        return
    stopped = False
    try:
        if interactive:
            stdout.write(prompt)
        for piece in pieces:
            stdout.write(piece)
            stdout.flush()
    except KeyboardInterrupt:
        stopped = True
    except GPT2Error as e:
        print(f"error: {e}", file=stderr)
        return
    finally:
        pieces.close()
    stdout.write("\n")
    stdout.flush()
    if stopped:
        print(_dim("[stopped]"), file=stderr)
    elif stats.finish_reason == "context":
        print(_dim(f"[the context is full ({model.config.n_positions} tokens); start with --sliding-window "
                   "to keep going]"), file=stderr)
    if interactive and stats.first_token_s is not None:
        print(_dim(f"{stats.tokens} tokens · {stats.tokens_per_s:.1f} tokens/s · "
                   f"first token {stats.first_token_s * 1000:.0f} ms"), file=stderr)


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stderr.isatty() else text


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  arrow keys and history for input()
    except ImportError:
        pass
