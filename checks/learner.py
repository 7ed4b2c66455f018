"""The code under check: the learner's steps/, the solutions/, or any copy of either.

Step files import each other by their plain names (`from step_02 import GPT2MLP`), as Python
does when one runs `python steps/step_11.py`. Several trees can be loaded in one process (the
tests plant mistakes in copies of solutions/): each tree's modules are imported with its own
folder first on sys.path and then taken out of sys.modules, so no tree sees another's.

Running the learner's code goes through `Code.run`, which turns whatever it raises into a
Failure that points at the TODO and the line.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from checks.report import Failure

ROOT = Path(__file__).resolve().parents[1]
TODO = re.compile(r"TODO (\d+\.\d+)")


class Code:
    """One folder of step files: steps/step_NN.py or solutions/solution_NN.py."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder, self.prefix = Path(folder), prefix
        self._modules: dict[str, object] = {}

    @classmethod
    def steps(cls, folder: Path | None = None) -> Code:
        return cls(folder or ROOT / "steps", "step")

    @classmethod
    def solutions(cls, folder: Path | None = None) -> Code:
        return cls(folder or ROOT / "solutions", "solution")

    def file(self, step: int) -> Path:
        return self.folder / f"{self.prefix}_{step:02d}.py"

    def shown(self, step: int) -> str:
        path = self.file(step)
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    # --- importing ------------------------------------------------------------------------

    def module(self, step: int):
        name = f"{self.prefix}_{step:02d}"
        if name not in self._modules:
            self._modules[name] = self._import(name, step)
        return self._modules[name]

    def _import(self, name: str, step: int):
        if not self.file(step).is_file():
            raise Failure(f"{self.shown(step)} exists", expected="the step file", got="no such file",
                          hint="restore it from git: git checkout -- " + self.shown(step))
        mine = re.compile(rf"{self.prefix}_\d\d$")
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if mine.match(k)}
        sys.modules.update(self._modules)  # this tree's steps, already loaded
        sys.path.insert(0, str(self.folder))
        try:
            module = importlib.import_module(name)
            for k in [k for k in sys.modules if mine.match(k)]:
                self._modules.setdefault(k, sys.modules[k])  # the earlier steps it imported
            return module
        except Exception as e:  # a syntax error, a failing import, a TODO at module level
            raise self.failure(e, f"{self.shown(step)} imports", todo="") from None
        finally:
            sys.path.remove(str(self.folder))
            for k in [k for k in sys.modules if mine.match(k)]:
                del sys.modules[k]
            sys.modules.update(saved)

    def get(self, step: int, name: str):
        module = self.module(step)
        if not hasattr(module, name):
            raise Failure(f"{self.shown(step)} defines {name}", expected=f"a top-level {name}",
                          got=f"no {name} in the module",
                          hint="keep the skeleton's names: the checker and later steps use them")
        return getattr(module, name)

    # --- running --------------------------------------------------------------------------

    def run(self, check: str, fn: Callable, *args, todo: str, hint: str = "", expected: str = "",
            hints: dict[str, str] | None = None, **kwargs):
        """fn(*args, **kwargs), with any exception turned into a Failure for `check`."""
        try:
            return fn(*args, **kwargs)
        except Failure:
            raise
        except Exception as e:
            raise self.failure(e, check, todo=todo, hint=hint, expected=expected, hints=hints) from None

    def failure(self, e: BaseException, check: str, *, todo: str, hint: str = "", expected: str = "",
                hints: dict[str, str] | None = None) -> Failure:
        """Explains an exception raised by the learner's code (or by MAX inside it)."""
        message = f"{type(e).__name__}: {summary(e)}"
        named = TODO.search(str(e)) if isinstance(e, NotImplementedError) else None
        if named:
            todo = named.group(1)
            message = f"NotImplementedError ({first_line(e)}): this TODO is not done yet"
        where = self.where(e)
        todo_text = (f"{todo} " if todo else "") + (f"({where})" if where else "")
        return Failure(check, todo=todo_text.strip(), expected=expected, got=message,
                       hint=(hints or {}).get(todo, hint) or hint)

    def where(self, e: BaseException) -> str:
        """The innermost line of this tree's own files in the traceback: file:line."""
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if Path(f.filename).resolve().parent == self.folder.resolve()]
        if not frames:
            return ""
        f = frames[-1]
        path = Path(f.filename).resolve()
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        return f"{shown}:{f.lineno}"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [""])[0][:300]


def summary(e: BaseException) -> str:
    """The first line of an error; for MAX's "Failed to create op" errors also the op's inputs
    and its first diagnostic, which say which shapes did not fit."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    kept, section = [lines[0]], ""
    for line in lines[1:]:
        if line in ("Inputs:", "Diagnostics:"):
            section, taken = line, 0
        elif line.endswith(":") or not section:
            section = ""
        elif section == "Inputs:" or (section == "Diagnostics:" and taken == 0):
            kept.append(re.sub(r"#mosh<ape(\[[^\]]*\])> : !mosh.ape", r"\1", line))
            taken += 1
    return " | ".join(kept)[:600]
