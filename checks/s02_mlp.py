"""Step 02: GPT2MLP against transformers' GPT2MLP (layer 0 of the reference)."""

from __future__ import annotations

from checks.common import CONFIG, ModuleCheck, no_grad, torch_inputs

STEP, TITLE = 2, "feed-forward network (GPT2MLP)"
HINTS = {
    "2.1": "two Linear layers with bias, named as in the checkpoint: c_fc (n_embd -> config.inner_dim) "
    "and c_proj (config.inner_dim -> n_embd)",
    "2.2": 'c_fc, then F.gelu(h, approximate="tanh") (GPT-2\'s "gelu_new"), then c_proj',
}
CHECKER = ModuleCheck(
    step=STEP, cls="GPT2MLP", args=(CONFIG,), weights="transformer.h.0.mlp.", call=lambda m, x, ids: m(x),
    check="GPT2MLP(x) equals transformers' GPT2MLP(x)", expected="transformers' GPT2MLP on the same x and weights",
    todos=("2.1", "2.2"), hints=HINTS, want=lambda: reference(), mistakes=lambda: mistakes(),
)
prepare = CHECKER.prepare


def reference():
    mlp = _hf_mlp()
    x, _ = torch_inputs()
    return no_grad(lambda: mlp(x))


def mistakes():
    """What common wrong activations give, computed with transformers' own c_fc and c_proj."""
    import torch

    mlp = _hf_mlp()
    x, _ = torch_inputs()
    h = lambda: mlp.c_fc(x)  # noqa: E731
    return {
        "ReLU instead of GPT-2's tanh-approximated GELU": no_grad(lambda: mlp.c_proj(torch.relu(h()))),
        "exact (erf) GELU instead of GPT-2's tanh approximation (gelu_new)":
            no_grad(lambda: mlp.c_proj(torch.nn.functional.gelu(h()))),
        "no activation between c_fc and c_proj": no_grad(lambda: mlp.c_proj(h())),
    }


def _hf_mlp():
    from checks.common import reference as model

    return model().transformer.h[0].mlp
