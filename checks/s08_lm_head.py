"""Step 08: GPT2LMHeadModel against transformers' GPT2LMHeadModel: the logits."""

from __future__ import annotations

from checks.common import CONFIG, ModuleCheck, no_grad, torch_inputs
from checks.report import Failure

STEP, TITLE = 8, "language-model head, tied to wte (GPT2LMHeadModel)"
HINTS = {
    "8.1": "self.transformer = GPT2Model(config), and no other parameter: the head is wte",
    "8.2": "self.transformer(input_ids) @ self.transformer.wte.weight.T",
}
CHECK = "GPT2LMHeadModel(ids) gives transformers' logits, from a head tied to wte"
UNTIED = ("an untied head: GPT-2's output layer is the token embedding wte itself, and the checkpoint has no "
          "weights for a separate one")


def tied(model) -> None:
    """Every parameter is the checkpoint's (transformer.*): a head of its own would start random."""
    own = [name for name, _ in model.parameters if not name.startswith("transformer.")]
    if own:
        raise Failure(CHECK, todo="8.1", expected="only the transformer.* parameters of the checkpoint",
                      got=f"parameters of its own: {', '.join(own)}", looks_like=UNTIED,
                      hint="drop the extra layer; compute the logits with self.transformer.wte.weight.T")


CHECKER = ModuleCheck(
    step=STEP, cls="GPT2LMHeadModel", args=(CONFIG,), weights="", call=lambda m, x, ids: m(ids), check=CHECK,
    expected="transformers' logits for the same token ids", todos=("8.1", "8.2"), hints=HINTS,
    want=lambda: logits(), inspect=tied,
)
prepare = CHECKER.prepare


def logits():
    from checks.common import reference

    _, ids = torch_inputs()
    return no_grad(lambda: reference()(ids).logits)
