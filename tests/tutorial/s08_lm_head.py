"""Step 08: GPT2LMHeadModel against transformers' GPT2LMHeadModel: the logits."""

from __future__ import annotations

from tests.tutorial.common import CONFIG, add_probe, build, no_grad, torch_inputs
from tests.tutorial.report import Failure, expect_close

STEP, TITLE = 8, "language-model head, tied to wte (GPT2LMHeadModel)"
HINTS = {
    "8.1": "self.transformer = GPT2Model(config), and no other parameter: the head is wte",
    "8.2": "self.transformer(input_ids) @ self.transformer.wte.weight.T",
}
CHECK = "GPT2LMHeadModel(ids) gives transformers' logits, from a head tied to wte"
UNTIED = ("an untied head: GPT-2's output layer is the token embedding wte itself, and the checkpoint has no "
          "weights for a separate one")
EXPECTED = "transformers' logits for the same token ids"


def prepare(code, bench):
    model = build(code, STEP, "GPT2LMHeadModel", CONFIG, check=CHECK, todo="8.1", hints=HINTS, expected=EXPECTED)
    own = [name for name, _ in model.parameters if not name.startswith("transformer.")]
    if own:
        raise Failure(CHECK, todo="8.1", expected="only the transformer.* parameters of the checkpoint",
                      got=f"parameters of its own: {', '.join(own)}", looks_like=UNTIED,
                      hint="drop the extra layer; compute the logits with self.transformer.wte.weight.T")
    probe = add_probe(code, bench, CHECK, model, lambda m, x, ids: m(ids), "", build_todo="8.1",
                      run_todo="8.2", hints=HINTS, expected=EXPECTED)

    def judge():
        (got,) = probe.result()
        yield expect_close(CHECK, got, logits(), todo="8.2", hint=HINTS["8.2"],
                           expected=EXPECTED)

    return judge


def logits():
    from tests.tutorial.common import reference

    _, ids = torch_inputs()
    return no_grad(lambda: reference()(ids).logits)
