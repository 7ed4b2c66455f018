"""Weights held narrower than float32: bfloat16, or int8 with one float32 scale per output row.

Only the weights are held narrow. Activations, biases and layer norms stay float32 between
operations, and a narrow weight is used as it is held, by our kernels as they stream it:
- a bfloat16 one widened to float32 in registers (kernels/matvec.mojo); for a prompt's many
  rows, in bfloat16 dot products with x rounded to bfloat16 for the product alone
  (kernels/bf16.mojo: at most 2^-8 of each value of x, as the weights' own rounding);
- an int8 one in integer dot products with the rows of x written as int16 digits, a step per
  row, for the length of the product (kernels/int8.mojo says why, and why the digits cost no
  agreement).
That is in every graph on a CPU, prefill and logits as well as decode (see
narrow.narrow_product for why not a cast before MAX's matmul). A decode step is bound by the
bytes of weight it reads, which is what narrowing saves. The modules that hold narrow weights
are in max_gpt2/narrow.py; this module is the choice itself and the arrays (light: the command
line reads its choices).

What is narrowed:
- bfloat16: every matrix (the four projections of each block, wte, which is also the tied head,
  wpe, an untied lm_head), rounded to nearest: a relative error of at most 2^-8 per weight (8 significant bits).
- int8: the four projections and the head, symmetric per output row: scale = max|row| / 127,
  q = round(w / scale), so each weight is off by at most scale / 2. wte is one int8 table for
  both of its uses: as the tied head its rows are the output rows, and a token's embedding is
  that row times its scale, off by the same half step at most. A second wte for lookups alone
  (bfloat16) would add twice the int8 table's bytes, the largest matrix of a small GPT-2. wpe
  stays float32: it is added to every position and is a small part of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from max_gpt2.errors import PrecisionError

DTYPES = ("float32", "bfloat16")
QUANTIZATIONS = ("int8",)
SCALE = "_scale"  # appended to a weight's name to name its row scales: `...c_attn.weight_scale`
# The longest product whose int8 sums kernels/int8.mojo keeps exact in int32 (its comment says why).
INT8_LONGEST = 8192


@dataclass(frozen=True)
class Precision:
    """How the weights are held: `dtype` float32 or bfloat16, or `quantize="int8"` (with dtype
    float32: the weights not quantized stay float32)."""

    dtype: str = "float32"
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise PrecisionError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise PrecisionError(f"unknown quantization {self.quantize!r}; use {' or '.join(QUANTIZATIONS)}, or none")
        if self.quantize is not None and self.dtype != "float32":
            raise PrecisionError(f"quantize={self.quantize!r} keeps its other weights in float32 and cannot be "
                                 f"combined with dtype={self.dtype!r}; choose one of them")

    def check(self, config) -> None:
        """Refuses a model this precision cannot run exactly as documented."""
        longest = max(config.n_embd, config.inner_dim)
        if self.quantize == "int8" and longest > INT8_LONGEST:
            raise PrecisionError(f"int8 sums stay exact for products up to {INT8_LONGEST} long, and this model's "
                                 f"widest is {longest}: load it in float32 or bfloat16 instead")

    @property
    def exact(self) -> bool:
        """Float32 weights: the model computes exactly what transformers computes."""
        return self.dtype == "float32" and self.quantize is None

    def __str__(self) -> str:
        return f"{self.quantize} weights" if self.quantize else f"{self.dtype} weights"


def add_precision_options(p) -> None:
    """--dtype and --quantize on an argparse parser (every command that loads a model)."""
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="hold the weights in this dtype; activations stay float32 (default: float32, "
                        "exactly as transformers computes)")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                   help="hold the projections and the head in int8, a float32 scale per output row")


def precision_from(args) -> Precision:
    """--dtype and --quantize as a Precision; a combination that cannot run raises here, before loading."""
    return Precision(args.dtype, args.quantize)


# --- the arrays (numpy imported on use, as everywhere the command line may import) -----------


def convert(name: str, value, dtype: str) -> dict:
    """One parameter as its module declares it (`dtype`: "float32", "bfloat16" or "int8"),
    contiguous, int8 with its row scales under `name + SCALE`. An array that is already float32
    and contiguous is returned as it is, not copied."""
    import numpy as np

    if dtype == "bfloat16":
        return {name: np.ascontiguousarray(value, dtype=bfloat16())}
    if dtype == "int8":
        return dict(zip((name, name + SCALE), quantize_rows(value)))
    return {name: np.ascontiguousarray(value, dtype=np.float32)}


def quantize_rows(w):
    """Symmetric int8 per row: (q [N, K] int8, scale [N] float32) with w ~ q * scale[:, None].
    A row of zeros gets scale 0 (and q 0), not a division by zero."""
    import numpy as np

    w = np.ascontiguousarray(w, dtype=np.float32)  # a transposed view would make q column-major
    scale = np.abs(w).max(axis=1) / np.float32(127)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def bfloat16():
    """numpy's dtype for bfloat16, from ml_dtypes (numpy has none of its own)."""
    import ml_dtypes
    import numpy as np

    return np.dtype(ml_dtypes.bfloat16)


def for_max(array):
    """An array as MAX takes it: bfloat16, which numpy cannot hand over by DLPack, as a view of
    the same memory with MAX's dtype; any other array as it is."""
    if array.dtype != bfloat16():
        return array
    import numpy as np
    from max.driver import Buffer
    from max.dtype import DType

    return Buffer.from_numpy(array.view(np.uint16)).view(DType.bfloat16)


def is_scale(name: str) -> bool:
    """Whether a state dict entry is an int8 weight's row scales (not one of GPT-2's parameters)."""
    return name.endswith(".weight" + SCALE)
