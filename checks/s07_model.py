"""Step 07: GPT2Model against transformers' GPT2Model (the reference's `transformer`)."""

from __future__ import annotations

import numpy as np

from checks.common import CONFIG, ModuleCheck, no_grad, torch_inputs

STEP, TITLE = 7, "embeddings and the stack of blocks (GPT2Model)"
HINTS = {
    "7.1": "wte = Embedding(vocab_size, dim=n_embd), wpe = Embedding(n_positions, dim=n_embd), "
    "h = ModuleList(GPT2Block(config, i) for i in range(n_layer)), ln_f = LayerNorm(n_embd, eps=...)",
    "7.2": "positions = Tensor.arange(T, dtype=input_ids.dtype, device=input_ids.device); "
    "x = wte(input_ids) + wpe(positions); for block in self.h: x = block(x); return ln_f(x)",
}
CHECKER = ModuleCheck(
    step=STEP, cls="GPT2Model", args=(CONFIG,), weights="transformer.", call=lambda m, x, ids: m(ids),
    check=f"GPT2Model(ids) equals transformers' GPT2Model(ids): {CONFIG.n_layer} blocks, hidden states",
    expected="transformers' last_hidden_state for the same token ids", todos=("7.1", "7.2"), hints=HINTS,
    want=lambda: hidden(), mistakes=lambda: mistakes(),
)
prepare = CHECKER.prepare


def hidden(*, positions: str = "0..T-1", final_norm: bool = True, by_hand: bool = False) -> np.ndarray:
    """transformers' GPT2Model on the ids, or its parts put together as a known mistake does."""
    import torch

    from checks.common import reference, torch_mask

    body = reference().transformer
    _, ids = torch_inputs()
    if (positions, final_norm, by_hand) == ("0..T-1", True, False):
        return no_grad(lambda: body(ids).last_hidden_state)

    def run():
        t = ids.shape[1]
        pos = {"0..T-1": torch.arange(t), "1..T": torch.arange(1, t + 1), "none": None}[positions]
        x = body.wte(ids) + (body.wpe(pos) if pos is not None else 0)
        for block in body.h:
            x = block(x, attention_mask=torch_mask(t))
        return body.ln_f(x) if final_norm else x

    return no_grad(run)


def mistakes() -> dict[str, np.ndarray]:
    return {
        "no position embedding: wpe(positions) must be added to wte(input_ids)": hidden(positions="none"),
        "positions start at 1; they count from 0": hidden(positions="1..T"),
        "no final layer norm (ln_f) after the last block": hidden(final_norm=False),
    }
