"""Step 06: GPT2Block against transformers' GPT2Block (layer 0 of the reference)."""

from __future__ import annotations

import numpy as np

from checks.common import CONFIG, ModuleCheck, no_grad, torch_inputs, torch_mask

STEP, TITLE = 6, "transformer block (GPT2Block)"
HINTS = {
    "6.1": "ln_1 = LayerNorm(n_embd, eps=config.layer_norm_epsilon), attn = GPT2Attention(config, layer_idx), "
    "ln_2 likewise, mlp = GPT2MLP(config)",
    "6.2": "x = x + self.attn(self.ln_1(x)); then x + self.mlp(self.ln_2(x))",
}
CHECKER = ModuleCheck(
    step=STEP, cls="GPT2Block", args=(CONFIG, 0), weights="transformer.h.0.", call=lambda m, x, ids: m(x),
    check="GPT2Block(x) equals transformers' GPT2Block(x) (causal)",
    expected="transformers' GPT2Block on the same x and weights", todos=("6.1", "6.2"), hints=HINTS,
    want=lambda: block_output(), mistakes=lambda: mistakes(),
)
prepare = CHECKER.prepare


def block_output(wiring: str = "pre-LN") -> np.ndarray:
    """transformers' block on x, or its own sublayers wired as a known mistake wires them."""
    from checks.common import reference

    b = reference().transformer.h[0]
    x, _ = torch_inputs()
    mask = torch_mask(x.shape[1])
    attn = lambda h: b.attn(h, attention_mask=mask)[0]  # noqa: E731
    wirings = {
        "pre-LN": lambda: b(x, attention_mask=mask),
        "pre-LN by hand": lambda: (lambda h: h + b.mlp(b.ln_2(h)))(x + attn(b.ln_1(x))),
        "post-LN": lambda: (lambda h: b.ln_2(h + b.mlp(h)))(b.ln_1(x + attn(x))),
        "no attention residual": lambda: (lambda h: h + b.mlp(b.ln_2(h)))(attn(b.ln_1(x))),
        "no MLP residual": lambda: b.mlp(b.ln_2(x + attn(b.ln_1(x)))),
        "ln_1 and ln_2 swapped": lambda: (lambda h: h + b.mlp(b.ln_1(h)))(x + attn(b.ln_2(x))),
        "MLP before attention": lambda: (lambda h: h + attn(b.ln_1(h)))(x + b.mlp(b.ln_2(x))),
    }
    out = no_grad(wirings[wiring])
    return out[0] if isinstance(out, tuple) else out


def mistakes() -> dict[str, np.ndarray]:
    return {
        "post-LN (layer norm after the residual sum, as in the original Transformer); GPT-2 is pre-LN: "
        "x + attn(ln_1(x))": block_output("post-LN"),
        "no residual around attention: x = attn(ln_1(x)) drops x": block_output("no attention residual"),
        "no residual around the MLP": block_output("no MLP residual"),
        "ln_1 and ln_2 swapped: ln_1 goes before attention, ln_2 before the MLP": block_output("ln_1 and ln_2 swapped"),
        "the MLP runs before attention; GPT-2 attends first": block_output("MLP before attention"),
    }
