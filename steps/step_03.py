"""Step 03 · The causal mask

What you build: `causal_mask(T, P)`, an additive mask of shape [T, P + T] for attention scores:
0.0 where query i may look at key j, -inf where it may not. Query i (the i-th of the T new
tokens) sees the P earlier, cached keys and the new keys up to and including itself.

Why: GPT-2 predicts each next token from the tokens before it, all positions at once. Without
the mask, position i would read position i + 1, the very token it must predict. Adding -inf to
a score makes its softmax weight exactly 0.

In this tutorial P is always 0 (the whole sequence is computed at once). The package's
generation keeps earlier keys in a cache (max_gpt2/cache.py) and computes only the new token,
so P > 0 there; it costs two lines here, so you write them too.

When finished, it lives in: max_gpt2/model.py, function causal_mask (ANCHOR: causal_mask).

Check:   pixi run s03   (or: make s03; the checker is checks/s03_mask.py)
Compare: python solutions/solution_03.py
"""

from __future__ import annotations

import max.experimental.functional as F
from max.driver import Device
from max.dtype import DType
from max.experimental.tensor import Tensor  # noqa: F401
from max.graph import DimLike


@F.functional  # as in the package: lets the function run inside a traced graph or eagerly
def causal_mask(sequence_length: DimLike, num_past: DimLike, *, dtype: DType, device: Device) -> Tensor:
    """An additive mask [T, P + T]: 0 where query i may see key j (j <= P + i), -inf elsewhere."""
    # TODO 3.1: a [T, T] tensor with 0 on and below the diagonal and -inf above it.
    # Hint: start from a [T, T] tensor full of -inf:
    #     F.broadcast_to(Tensor(float("-inf"), dtype=dtype, device=device), (T, T))
    # then F.band_part(x, num_lower=None, num_upper=0, exclude=True) sets the band "everything
    # below, nothing above the diagonal" to 0 (exclude=True keeps what is outside the band).
    # T may be symbolic (a Dim, not an int): use it as a shape, do not loop over it.
    #
    # TODO 3.2: the P cached keys are visible to every query: put a [T, P] block of zeros on the
    # left (F.concat([...], axis=1)). When num_past is the int 0, return the [T, T] mask alone.
    raise NotImplementedError("TODO 3.1: the [T, T] causal mask")
