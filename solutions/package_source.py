"""Prints the package's own code for a tutorial step.

The solutions do not hold a second copy of GPT-2: each one imports its piece from `max_gpt2`,
and when run prints where that piece lives and its source, so the code you compare your step
with is the code that runs.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import max_gpt2

PACKAGE = Path(max_gpt2.__file__).parent


def anchor(name: str, file: str = "model.py") -> tuple[int, str]:
    """The first line number and the text between `# ANCHOR: name` and `# ANCHOR_END: name` in
    max_gpt2/<file>."""
    text = (PACKAGE / file).read_text(encoding="utf-8")
    found = re.search(rf"^# ANCHOR: {re.escape(name)}\n(.*?)^# ANCHOR_END: {re.escape(name)}$", text, re.S | re.M)
    if found is None:
        raise SystemExit(f"no ANCHOR {name!r} in max_gpt2/{file}")
    return text[: found.start(1)].count("\n") + 1, found.group(1).strip("\n") + "\n"


def print_anchor(name: str, file: str = "model.py") -> None:
    start, text = anchor(name, file)
    print(f"# max_gpt2/{file}, from line {start} (ANCHOR: {name})\n")
    print(text)


def print_source(*objects) -> None:
    """The source of functions or classes from max_gpt2, each headed by its file and line."""
    for obj in objects:
        lines, start = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(obj)).resolve().relative_to(PACKAGE.parent)
        print(f"# {path}, line {start}\n")
        print("".join(lines))
