"""Step 01: GPT2Config's defaults against transformers' GPT2Config()."""

from __future__ import annotations

from checks.report import Failure, Passed

STEP, TITLE = 1, "model configuration (GPT2Config)"
FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
          "layer_norm_epsilon")
HINTS = {
    "1.1": "declare each field as `name: type = default` in the dataclass, with Hugging Face's name",
    "1.2": "n_embd // n_head",
    "1.3": "self.n_inner if self.n_inner is not None else 4 * self.n_embd",
}


def prepare(code, graph):
    def judge():
        from transformers import GPT2Config as Theirs

        ours_cls = code.get(STEP, "GPT2Config")
        check = "GPT2Config() has GPT-2 124M's values, under transformers' names"
        ours = code.run(check, ours_cls, todo="1.1", hints=HINTS)
        theirs = Theirs()
        for name in FIELDS:
            want = getattr(theirs, name)
            if not hasattr(ours, name):
                raise Failure(check, todo="1.1", expected=f"a field {name} = {want!r}", got=f"no field {name}",
                              hint=HINTS["1.1"])
            got = getattr(ours, name)
            if got != want or type(got) is not type(want):
                raise Failure(check, todo="1.1", expected=f"{name} = {want!r} (transformers' default)",
                              got=f"{name} = {got!r}", hint=_field_hint(name))
        yield Passed(f"{check}: " + ", ".join(f"{n}={getattr(theirs, n)!r}" for n in FIELDS))

        small = code.run("GPT2Config accepts keyword arguments", ours_cls, n_embd=96, n_head=6, todo="1.1",
                         hints=HINTS)
        wide = code.run("GPT2Config accepts n_inner", ours_cls, n_embd=96, n_head=6, n_inner=200, todo="1.1",
                        hints=HINTS)
        _property(code, "head_dim", "1.2", ((ours, 64, ""), (small, 16, "n_embd=96, n_head=6")))
        yield Passed("head_dim: 64 for GPT-2, 16 for n_embd=96 with 6 heads")
        _property(code, "inner_dim", "1.3", ((ours, 3072, ""), (small, 384, "n_embd=96, n_head=6"),
                                             (wide, 200, "n_embd=96, n_head=6, n_inner=200")))
        yield Passed("inner_dim: 4 * n_embd by default, n_inner when it is set")

    return judge


def _property(code, name: str, todo: str, cases) -> None:
    for config, want, args in cases:
        check = f"GPT2Config({args}).{name} is {want}"
        got = code.run(check, getattr, config, name, todo=todo, hints=HINTS)
        if got != want:
            raise Failure(check, todo=todo, expected=str(want), got=repr(got), hint=HINTS[todo])


def _field_hint(name: str) -> str:
    return {
        "vocab_size": "50,000 merges + 256 byte tokens + 1 <|endoftext|> = 50257",
        "n_positions": "GPT-2 reads at most 1024 tokens",
        "activation_function": '"gelu_new" is transformers\' name for GELU\'s tanh approximation',
        "layer_norm_epsilon": "1e-5, a float",
        "n_inner": "None: the MLP is then 4 * n_embd wide (see inner_dim)",
    }.get(name, "GPT-2 124M: 12 layers, 12 heads, 768 wide")
