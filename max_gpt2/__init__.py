"""OpenAI's GPT-2 as a compiled Modular MAX graph.

    from max_gpt2 import GPT2
    model = GPT2.from_pretrained("gpt2")            # a Hub id, a folder, a file, or a state dict
    logits = model.logits([[15496, 995]])           # numpy float32 [batch, seq, vocab]
    print(model.generate("Hello, I'm a language model,", max_new_tokens=30))

The names below load on first use, so `import max_gpt2` (and `max-gpt2 --help`) imports no MAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_TEXT_API = "max_gpt2.text"  # where Generated and Stats live

# Each public name and the module that defines it.
_HOMES = {
    "GPT2": "max_gpt2.engine",
    "GPT2Config": "max_gpt2.config",
    "GPT2Error": "max_gpt2.errors",
    "GPT2Tokenizer": "max_gpt2.tokenizer",
    "Generated": _TEXT_API,
    "Sampling": "max_gpt2.sampling",
    "Stats": _TEXT_API,
}

if TYPE_CHECKING:  # for type checkers and editors, which do not run __getattr__
    from max_gpt2.config import GPT2Config
    from max_gpt2.engine import GPT2
    from max_gpt2.errors import GPT2Error
    from max_gpt2.sampling import Sampling
    from max_gpt2.text import Generated, Stats
    from max_gpt2.tokenizer import GPT2Tokenizer

__all__ = ["GPT2", "GPT2Config", "GPT2Error", "GPT2Tokenizer", "Generated", "Sampling", "Stats"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
