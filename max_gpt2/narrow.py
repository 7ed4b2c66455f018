"""The modules that hold narrow weights (see max_gpt2/precision.py for what is narrowed and why):
`narrow` swaps them into a lazily built model in place of its Linear and Embedding modules,
keeping their names, so a narrowed state dict loads by the same names as a float32 one.
"""

from __future__ import annotations

import max.experimental.functional as F
from max.dtype import DType
from max.experimental.nn import Embedding, Linear, Module
from max.experimental.tensor import Tensor

from max_gpt2.model import times_transposed
from max_gpt2.precision import Precision


def narrow(model: Module, precision: Precision) -> Module:
    """`model` with each Linear, and each Embedding `precision` narrows, replaced in place."""
    if precision.exact:
        return model
    modules = dict(model.descendants)
    for path, module in modules.items():
        parent, _, attr = path.rpartition(".")
        owner = modules[parent] if parent else model
        if isinstance(module, Linear):
            setattr(owner, attr, NarrowLinear(module, precision))
        elif isinstance(module, Embedding) and (attr == "wte" or precision.quantize is None):
            setattr(owner, attr, NarrowEmbedding(module, precision))
    return model


def _declare(module: Module, shape, precision: Precision) -> None:
    """A narrow `weight` of `shape` and, for int8, its `weight_scale`, one per row."""
    module.weight = Tensor.zeros(list(shape), dtype=DType.int8 if precision.quantize else DType.bfloat16)
    if precision.quantize:
        module.weight_scale = Tensor.zeros([shape[0]], dtype=DType.float32)


class NarrowLinear(Module):
    """A Linear whose weight [out, in] is bfloat16, or int8 with `weight_scale` [out]."""

    def __init__(self, linear: Linear, precision: Precision) -> None:
        _declare(self, linear.weight.shape, precision)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return times_transposed(x, self) + self.bias


class NarrowEmbedding(Module):
    """An Embedding whose table is bfloat16, or int8 with `weight_scale`, one per row."""

    def __init__(self, embedding: Embedding, precision: Precision) -> None:
        _declare(self, embedding.weight.shape, precision)

    def forward(self, indices: Tensor) -> Tensor:
        rows = F.gather(self.weight, indices, axis=0).cast(DType.float32)  # (..., C)
        if not hasattr(self, "weight_scale"):
            return rows
        return rows * F.unsqueeze(F.gather(self.weight_scale, indices, axis=0), -1)
