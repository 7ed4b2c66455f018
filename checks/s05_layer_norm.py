"""Step 05: LayerNorm against transformers' GPT-2 layer norm (torch.nn.LayerNorm, h.0.ln_1)."""

from __future__ import annotations

import numpy as np

from checks.common import CONFIG, ModuleCheck, inputs, no_grad, torch_inputs, weights

STEP, TITLE = 5, "layer normalization (LayerNorm)"
EPS = CONFIG.layer_norm_epsilon
HINTS = {
    "5.1": "self.weight = Tensor.ones([dim]), self.bias = Tensor.zeros([dim]), self.eps = eps",
    "5.2": "F.layer_norm(x, gamma=self.weight, beta=self.bias, epsilon=self.eps), or "
    "(x - mean) / sqrt(mean((x - mean)^2) + eps) * weight + bias over the last axis",
}
CHECKER = ModuleCheck(
    step=STEP, cls="LayerNorm", args=(CONFIG.n_embd,), kwargs={"eps": EPS}, weights="transformer.h.0.ln_1.",
    call=lambda m, x, ids: m(x), check=f"LayerNorm({CONFIG.n_embd}, eps={EPS:g})(x) equals transformers' (h.0.ln_1)",
    expected="transformers' layer norm on the same x (one row of x is tiny, so eps matters there)",
    todos=("5.1", "5.2"), hints=HINTS, want=lambda: reference(), mistakes=lambda: mistakes(),
)
prepare = CHECKER.prepare


def reference():
    from checks.common import reference as model

    x, _ = torch_inputs()
    return no_grad(lambda: model().transformer.h[0].ln_1(x))


def _norm(*, eps=EPS, center=True, ddof=0, affine=True) -> np.ndarray:
    x = inputs()[0].astype(np.float64)
    w = weights("transformer.h.0.ln_1.")
    if center:
        x = x - x.mean(-1, keepdims=True)
    var = (x**2).sum(-1, keepdims=True) / (x.shape[-1] - ddof)
    y = x / np.sqrt(var + eps)
    return y * w["weight"] + w["bias"] if affine else y


def mistakes() -> dict[str, tuple[np.ndarray, str]]:
    return {
        f"eps is not the one given: used 1e-5 (GPT-2's default) where the config says {EPS:g}":
            (_norm(eps=1e-5), "5.1"),
        "no eps at all: the tiny row is divided by almost 0": (_norm(eps=0.0), "5.2"),
        "the variance with an n - 1 correction; layer norm divides by n": (_norm(ddof=1), "5.2"),
        "weight and bias not applied (or not named weight/bias)": (_norm(affine=False), "5.2"),
        "the mean not subtracted (that is RMSNorm, not LayerNorm)": (_norm(center=False), "5.2"),
    }
