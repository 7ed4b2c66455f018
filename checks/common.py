"""What every checker compares against: one seeded random GPT-2 in transformers, its weights in
our names and orientation, and the inputs.

CONFIG is the package's tests' model (max_gpt2.reference.ODD): deliberately not GPT-2's shape
(head size 16, n_inner 200 rather than 4 * n_embd, eps 1e-6), so code that hard-codes 64, 3072
or 1e-5 shows up; and, being the tests' shape too, the whole-model graph of step 11 is one MAX
has usually compiled already.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from max_gpt2.reference import ODD as CONFIG

BATCH, SEQLEN = 2, 7
SEED = 0


@cache
def reference():
    """transformers' GPT2LMHeadModel with seeded random weights (biases and norms moved off
    their defaults, so a forgotten one shows)."""
    from max_gpt2.reference import random_model

    return random_model(CONFIG, seed=SEED)


@cache
def state() -> dict[str, np.ndarray]:
    """The reference's weights as our modules name and hold them (max_gpt2.weights.adapt)."""
    from max_gpt2.weights import adapt, to_numpy

    return adapt({k: to_numpy(v) for k, v in reference().state_dict().items()}, CONFIG)


def weights(prefix: str) -> dict[str, np.ndarray]:
    """The part of the state under `prefix` ("transformer.h.0.mlp."), names relative to it."""
    return {k[len(prefix):]: v for k, v in state().items() if k.startswith(prefix)}


@cache
def inputs() -> tuple[np.ndarray, np.ndarray]:
    """x [2, 7, 96] hidden states and ids [2, 7] tokens. One row of x is tiny (variance ~1e-6,
    like eps), so that layer norm's epsilon matters there."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(BATCH, SEQLEN, CONFIG.n_embd)).astype(np.float32)
    x[1, 0] *= 1e-3
    ids = rng.integers(0, CONFIG.vocab_size, (BATCH, SEQLEN)).astype(np.int64)
    return x, ids


def torch_inputs():
    import torch

    x, ids = inputs()
    return torch.from_numpy(x.copy()), torch.from_numpy(ids.copy())


def causal_additive(t: int, past: int = 0) -> np.ndarray:
    """The mask transformers applies: 0 where query i may see key j (j <= past + i), -inf elsewhere."""
    keys = np.arange(past + t)[None, :]
    queries = np.arange(t)[:, None] + past
    return np.where(keys <= queries, 0.0, -np.inf).astype(np.float32)


def torch_mask(t: int):
    """The same mask as transformers' attention layers take it: [1, 1, T, T]."""
    import torch

    return torch.from_numpy(causal_additive(t))[None, None]


def build(code, step: int, name: str, *args, check: str, todo: str, hints: dict[str, str], expected: str = "",
          **kwargs):
    """The learner's `name` from step `step`, constructed as the package makes its modules for
    compiling (max_gpt2.graphs.building: lazily, on the CPU, in float32)."""
    from max_gpt2.graphs import building

    cls = code.get(step, name)
    with building():
        return code.run(check, cls, *args, todo=todo, hints=hints, hint=hints.get(todo, ""), expected=expected,
                        **kwargs)


def no_grad(fn):
    """Runs a torch computation without autograd and returns numpy."""
    import torch

    with torch.no_grad():
        out = fn()
    return out.detach().numpy() if hasattr(out, "detach") else out


def add_probe(code, graph, check: str, module, fn, prefix: str, *, build_todo: str, run_todo: str,
              hints: dict[str, str], expected: str = ""):
    """Adds the learner's `module` to the graph, with the reference's weights under `prefix`.

    A wrong parameter name or shape fails now (the TODO that builds the module); an error while
    tracing `fn(module, x, ids)` fails after the graph ran (the TODO that computes)."""
    from checks.probe_graph import Probe

    def explain(e: BaseException):
        return code.failure(e, check, todo=run_todo, hints=hints, hint=hints.get(run_todo, ""), expected=expected)

    return graph.add(Probe(check, module, fn, explain), weights(prefix), todo=build_todo,
                     hint=hints.get(build_todo, ""))


@dataclass
class ModuleCheck:
    """A step checked in one comparison: build the learner's `cls(*args)`, run `call(module, x, ids)`
    in the graph with the reference's weights under `weights`, compare with `want()`."""

    step: int
    cls: str
    args: tuple
    weights: str
    call: Callable
    check: str
    expected: str
    todos: tuple[str, str]  # the TODO that builds the module, the TODO that computes
    hints: dict[str, str]
    want: Callable[[], np.ndarray]
    mistakes: Callable[[], dict] = dict
    kwargs: dict = field(default_factory=dict)
    inspect: Callable | None = None  # a look at the built module before it compiles

    def prepare(self, code, graph):
        from checks.report import expect_close

        build_todo, run_todo = self.todos
        module = build(code, self.step, self.cls, *self.args, check=self.check, todo=build_todo, hints=self.hints,
                       expected=self.expected, **self.kwargs)
        if self.inspect is not None:
            self.inspect(module)
        probe = add_probe(code, graph, self.check, module, self.call, self.weights, build_todo=build_todo,
                          run_todo=run_todo, hints=self.hints, expected=self.expected)

        def judge():
            (got,) = probe.result()
            yield expect_close(self.check, got, self.want(), todo=run_todo, hint=self.hints[run_todo],
                               hints=self.hints, expected=self.expected, mistakes=self.mistakes())

        return judge
