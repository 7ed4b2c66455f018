"""Checks tutorial steps against transformers' GPT-2.

    python -m checks 04                # steps/step_04.py  (pixi run s04 / make s04)
    python -m checks all               # every step        (pixi run check-all)
    SOLUTIONS=1 python -m checks 04    # solutions/solution_04.py instead

Exits 0 when every check of the chosen steps passes, 1 otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from checks.learner import Code
from checks.report import FAIL, PASS, Failure, Passed
from max_gpt2.progress import Status

# One checker module per step, imported when its step is checked.
CHECKERS = dict(enumerate((
    "s01_config", "s02_mlp", "s03_mask", "s04_attention", "s05_layer_norm", "s06_block", "s07_model",
    "s08_lm_head", "s09_tokenizer", "s10_generation", "s11_weights",
), start=1))


def checker(step: int):
    return importlib.import_module(f"checks.{CHECKERS[step]}")


@dataclass
class Result:
    code: Code
    step: int
    passed: list[Passed] = field(default_factory=list)
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def __str__(self) -> str:
        mark = PASS if self.ok else FAIL
        head = f"{mark} step {self.step:02d} · {checker(self.step).TITLE}  ({self.code.shown(self.step)})"
        return "\n".join([head, *map(str, self.passed), *([str(self.failure)] if self.failure else [])])


def run(jobs: Iterable[tuple[Code, int]], progress=None) -> list[Result]:
    """Checks each (code, step); the MAX modules of all of them compile together, once."""
    from checks.probe_graph import ProbeGraph
    from checks.common import inputs

    graph = ProbeGraph(*inputs())
    results, judges = [], []
    for code, step in jobs:
        result = Result(code, step)
        results.append(result)
        try:
            judges.append((result, checker(step).prepare(code, graph)))
        except Failure as f:
            result.failure = located(f, code, step)
    if graph.probes:
        start = time.perf_counter()
        try:
            graph.run(progress)
        except Exception as e:  # the graph as a whole did not compile
            for probe in graph.probes:
                probe.error = probe.explain(e)
        if progress and any(p.outputs is not None for p in graph.probes):
            progress(f"compiled and ran in {time.perf_counter() - start:.0f}s")
    for result, judge in judges:
        try:
            for line in judge():
                result.passed.append(line)
        except Failure as f:
            result.failure = located(f, result.code, result.step)
    return results


def located(failure: Failure, code: Code, step: int) -> Failure:
    """Names the step's file after the TODO, unless a line of it is named already."""
    if failure.todo and "(" not in failure.todo:
        failure.todo += f" ({code.shown(step)})"
    return failure


def parse(argv: list[str]) -> list[int]:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    if argv[0] == "all":
        return sorted(CHECKERS)
    try:
        step = int(argv[0])
    except ValueError:
        raise SystemExit(f"not a step: {argv[0]!r}; give 01 … 11 or all") from None
    if step not in CHECKERS:
        raise SystemExit(f"no step {argv[0]}; the steps are 01 … 11")
    return [step]


def main(argv: list[str] | None = None) -> int:
    steps = parse(sys.argv[1:] if argv is None else argv)
    solutions = os.environ.get("SOLUTIONS", "").strip().lower() not in ("", "0", "false", "no")
    code = Code.solutions() if solutions else Code.steps()
    status = Status()  # a compile of new code takes minutes: a ticking clock shows it is not stuck
    try:
        results = run([(code, s) for s in steps], progress=status)
    finally:
        status.close()
    print("\n\n".join(map(str, results)))
    failed = [r for r in results if not r.ok]
    if len(results) > 1:
        print(f"\n{len(results) - len(failed)} of {len(results)} steps pass", end="")
        print(f"; next: step {failed[0].step:02d} (pixi run s{failed[0].step:02d}, or make s{failed[0].step:02d})"
              if failed else ".")
    return 1 if failed else 0
