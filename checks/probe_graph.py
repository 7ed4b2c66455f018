"""Runs the learner's MAX modules, compiled, all in one graph.

Compiling is the slow part of checking: a minute or more on a CPU for every graph MAX has not
seen before, and seconds once it has (its cache keys graphs by structure, not by weights). So
the checkers do not compile one graph each: each one adds its modules to a ProbeGraph as probes,
and the ProbeGraph compiles them all together, once, with symbolic ("batch", "seqlen") inputs:
- x:   float32 [batch, seqlen, n_embd], hidden states for the layers;
- ids: int64 [batch, seqlen], token ids for the whole model.
`check 04` compiles one attention layer; `check all` compiles every step's modules in one go.

A probe whose code raises while the graph is traced (a TODO not done, a shape error) is left
out and reports its error; the others still run. A probe's weights are checked against its
parameters before anything compiles, so a wrong name or shape is reported in a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from max.driver import CPU
from max.dtype import DType
from max.experimental.nn import Module
from max.experimental.tensor import Tensor, TensorType

from checks.report import Failure
from max_gpt2.graphs import building
from max_gpt2.progress import Waiting


@dataclass
class Probe:
    """One module under check and what to compute with it: fn(module, x, ids) -> tensor(s)."""

    check: str  # the check it serves, as the learner reads it
    module: object
    fn: Callable
    explain: Callable[[BaseException], Failure]  # turns a tracing error into a Failure
    outputs: tuple[np.ndarray, ...] | None = None
    error: Failure | None = None

    def result(self) -> tuple[np.ndarray, ...]:
        if self.error is not None:
            raise self.error
        assert self.outputs is not None, "the probe graph has not run"
        return self.outputs


@dataclass
class ProbeGraph:
    x: np.ndarray  # [batch, seqlen, n_embd] float32
    ids: np.ndarray  # [batch, seqlen] int64
    probes: list[Probe] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, probe: Probe, weights: Mapping[str, np.ndarray], *, todo: str, hint: str) -> Probe:
        """Adds a probe, after checking that `weights` fill its parameters exactly."""
        check_parameters(probe.check, probe.module, weights, todo=todo, hint=hint)
        prefix = f"p{len(self.probes)}."
        self.weights.update({prefix + k: v for k, v in weights.items()})
        self.probes.append(probe)
        return probe

    def run(self, progress: Callable[[str], None] | None = None) -> None:
        """Compiles every probe into one graph and runs it on x and ids."""
        if not self.probes:
            return
        traced: list[Probe] = []
        with building():
            module = Probes([p.module for p in self.probes], [p.fn for p in self.probes], self._record(traced),
                            progress or (lambda text: None))
        n_embd = self.x.shape[-1]
        try:
            compiled = module.compile(
                TensorType(DType.float32, ("batch", "seqlen", n_embd), device=CPU()),
                TensorType(DType.int64, ("batch", "seqlen"), device=CPU()),
                weights=self.weights,
            )
        except _NothingTraced:
            return
        outputs = compiled(Tensor.from_dlpack(np.ascontiguousarray(self.x, np.float32)),
                           Tensor.from_dlpack(np.ascontiguousarray(self.ids, np.int64)))
        arrays = iter([o.to_numpy() for o in outputs])
        for probe, count in traced:
            probe.outputs = tuple(next(arrays) for _ in range(count))

    def _record(self, traced: list):
        probes = self.probes

        def record(index: int, result):
            """Called while tracing: a probe's tensors, or the exception it raised."""
            probe = probes[index]
            if isinstance(result, BaseException):
                probe.error = probe.explain(result)
                return ()
            results = result if isinstance(result, tuple) else (result,)
            traced.append((probe, len(results)))
            return results

        return record


class _NothingTraced(Exception):
    pass


class Probes(Module):
    """Every probe's module as p0, p1, ...; forward returns all their outputs, flattened."""

    def __init__(self, modules, fns, record, progress) -> None:
        for i, m in enumerate(modules):
            setattr(self, f"p{i}", m)
        self.count, self.fns, self.record, self.progress = len(modules), tuple(fns), record, progress

    def forward(self, x, ids):
        outputs = []
        for i in range(self.count):
            try:
                result = self.fns[i](getattr(self, f"p{i}"), x, ids)
            except Exception as e:  # the learner's code, while tracing
                result = e
            outputs.extend(self.record(i, result))
        if not outputs:
            raise _NothingTraced  # nothing to compile: skip the compiler altogether
        self.progress(Waiting("compiling your modules with MAX: a minute or more for new code, seconds for a graph "
                              "MAX has compiled before"))
        return tuple(outputs)


def check_parameters(check: str, module, weights: Mapping[str, np.ndarray], *, todo: str, hint: str) -> None:
    """The module's parameters must be exactly the checkpoint's names, with its shapes."""
    have = {name: tuple(int(d) for d in t.shape) for name, t in module.parameters}
    want = {name: tuple(a.shape) for name, a in weights.items()}
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing or extra:
        got = "; ".join(part for part in (
            f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "") if missing else "",
            f"unexpected {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "") if extra else "",
        ) if part)
        names = ", ".join(list(want)[:4]) + (" ..." if len(want) > 4 else "")
        raise Failure(check, todo=todo, expected=f"parameters named as in GPT-2's checkpoint: {names}", got=got,
                      hint=hint)
    for name, dims in want.items():
        if have[name] != dims:
            raise Failure(check, todo=todo, expected=f"{name} of shape {list(dims)}",
                          got=f"{name} of shape {list(have[name])}",
                          hint="Linear(in_dim, out_dim) stores its weight as [out_dim, in_dim]; " + hint)
