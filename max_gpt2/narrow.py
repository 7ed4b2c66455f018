"""The modules that hold narrow weights (see max_gpt2/precision.py for what is narrowed and why):
`narrow` swaps them into a lazily built model in place of its Linear and Embedding modules,
keeping their names, so a narrowed state dict loads by the same names as a float32 one.
"""

from __future__ import annotations

import max.experimental.functional as F
from max.dtype import DType
from max.experimental.nn import Embedding, Linear, Module
from max.experimental.tensor import Tensor

from max_gpt2.precision import Precision


def narrow(model: Module, precision: Precision) -> Module:
    """`model` with each Linear, and each Embedding `precision` narrows, replaced in place."""
    if precision.exact:
        return model

    def narrower(name: str, module: Module) -> Module | None:
        if isinstance(module, Linear):
            return NarrowLinear(module, precision)
        if isinstance(module, Embedding) and (name == "wte" or precision.quantize is None):
            return NarrowEmbedding(module, precision)
        return None

    return replace(model, narrower)


def replace(model: Module, swap) -> Module:
    """`model` with each module for which `swap(name, module)` returns another replaced in
    place by that one, under the same name (so the same state dict loads)."""
    modules = dict(model.descendants)
    for path, module in modules.items():
        parent, _, name = path.rpartition(".")
        if (new := swap(name, module)) is not None:
            setattr(modules[parent] if parent else model, name, new)
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
        return narrow_product(x, self, self.bias)


class NarrowEmbedding(Module):
    """An Embedding whose table is bfloat16, or int8 with `weight_scale`, one per row."""

    def __init__(self, embedding: Embedding, precision: Precision) -> None:
        _declare(self, embedding.weight.shape, precision)

    def forward(self, indices: Tensor) -> Tensor:
        rows = F.gather(self.weight, indices, axis=0).cast(DType.float32)  # (..., C)
        if not hasattr(self, "weight_scale"):
            return rows
        return rows * F.unsqueeze(F.gather(self.weight_scale, indices, axis=0), -1)


def narrow_product(x: Tensor, module: Module, bias=0) -> Tensor:
    """x @ module.weight.T + bias for a narrow weight (an int8 row's sum times its scale).

    On a CPU by our kernels (max_gpt2/decode.py), which read the narrow rows as they are, for
    any number of rows (a prompt's many rows against bfloat16 weights in bfloat16 dot products).
    Widened in the graph instead (a cast, then MAX's matmul), the weights are cast once by MAX as
    the graph loads, and the float32 copies stay beside the narrow ones: the memory narrowing is
    meant to save. An accelerator, which our kernels are not written for, gets the cast.
    """
    scale = getattr(module, "weight_scale", None)
    if x.device.is_host:
        from max_gpt2.decode import BF16_FEW_ROWS, matvec  # on use: decode.py imports model.py, which imports this

        few_rows = BF16_FEW_ROWS if module.weight.dtype == DType.bfloat16 else None
        return matvec(x, module.weight, bias if isinstance(bias, Tensor) else None, scale=scale, few_rows=few_rows)
    y = x @ module.weight.cast(x.dtype).T
    return (y if scale is None else y * scale) + bias
