"""GPT-2's parameter names as our modules have them, and a checkpoint's mapping onto them as data.

A format's `plan` lists one `Move` per parameter it fills and per stored tensor it leaves out, so
the same list loads a checkpoint (`apply`) and explains it (`max-gpt2 inspect`).

The facts every format is measured against live here, once:
- Our names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`); `save_pretrained`
  prefixes keys with `transformer.`, the Hub's own openai-community/gpt2 files do not.
- OpenAI's projections are Conv1D layers, stored [in, out]. MAX's Linear computes x @ W.T and
  wants [out, in], so exactly the c_attn, c_proj and c_fc weights of OpenAI's layouts are
  transposed. Two of them (attn.c_proj, and c_fc/c_proj when n_inner == n_embd) are square, so
  a forgotten transpose still loads; only numbers show it (tests/test_parity.py).
- `attn.bias` and `attn.masked_bias` are the causal mask stored as buffers, not weights.
- The LM head is tied to wte: one matrix, kept once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from max_gpt2.errors import CheckpointError

PREFIX = "transformer."
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # OpenAI's Conv1D layers, in block order
BUFFERS = (".attn.bias", ".attn.masked_bias")  # not "c_attn.bias", a real weight
HEAD = "lm_head.weight"

# What happens to a stored tensor, in the words `inspect` shows.
COPIED = "copied"
RENAMED = "renamed"
TRANSPOSED = "transposed"
SQUEEZED = "squeezed, transposed"
FUSED = "fused (q, k, v)"
TIED = "tied to wte"
BUFFER = "skipped: a buffer"
ZEROS = "zeros: stored without bias"
TRIMMED = "padded rows dropped"


def conv1d_weights() -> tuple[str, ...]:
    """Name endings of the Conv1D weights (read at call time, so a test can plant a mistake)."""
    return tuple(f".{name}.weight" for name in CONV1D)


def block(i: int, name: str) -> str:
    return f"{PREFIX}h.{i}.{name}"


@dataclass(frozen=True)
class Move:
    """One of our parameters and the stored tensors it is made from, or one stored tensor left out."""

    ours: str | None  # our parameter name; None: a stored tensor we do not use
    stored: tuple[str, ...]  # the checkpoint's names it comes from (none: made here, e.g. zeros)
    action: str  # one of the words above
    make: Callable[..., np.ndarray] | None = None  # stored arrays -> ours; None: the one array as is
    loads: bool = True  # False: shown, but nothing is loaded (a buffer, a tied head)


def renamed(ours: str, stored: str) -> Move:
    same = ours.removeprefix(PREFIX) == stored.removeprefix(PREFIX)
    return Move(ours, (stored,), COPIED if same else RENAMED)


def transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def apply(plan: list[Move], tensors: Mapping[str, np.ndarray], what: str,
          copied: Callable[[np.ndarray], None] | None = None,
          convert: Callable[[str, np.ndarray], dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Our state dict from a plan: every stored tensor used or named as left out, float32, contiguous.

    `convert(name, array)`, if given, makes the entries for one parameter instead of float32
    (max_gpt2/precision.py: bfloat16, or int8 with its scales), as each is made, so that a
    parameter is never held in float32 beside its narrow form.

    A stored tensor that is already all that is kept as ours, not copied; `copied(array)` is
    called with each stored array once ours has been made from it as a new array (so that a
    mapped file's pages can go at once, not after the whole checkpoint). `what` names the format
    in messages. A plan made from a format's known names refuses a checkpoint with a tensor it
    does not know, or without one it needs, naming them.
    """
    needed = {name for move in plan for name in move.stored}
    missing = sorted(needed - set(tensors), key=natural_order)
    unexpected = sorted(set(tensors) - needed, key=natural_order)
    if missing or unexpected:
        parts = ([f"missing {names(missing)}"] if missing else []) + ([f"unexpected {names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"this {what} does not fit GPT-2: {'; '.join(parts)}")
    state: dict[str, np.ndarray] = {}
    for move in plan:
        if not move.loads:
            continue
        arrays = [tensors[name] for name in move.stored]
        try:
            value = move.make(*arrays) if move.make else arrays[0]
        except ValueError as e:  # numpy's words for a shape that cannot be split, squeezed or joined
            shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(move.stored, arrays))
            raise CheckpointError(f"this {what} does not fit GPT-2: {move.ours} cannot be made from {shapes} ({e})") from None
        if convert is None:
            made = {move.ours: contiguous(value)}
        else:
            # A float32 view (a transposed one) is copied on every core, in blocks, before it is
            # narrowed: cast straight from the view, a large one is read a column at a time, on
            # one core. Another dtype (a bfloat16 file) goes to `convert` as it is stored.
            made = convert(move.ours, contiguous(value) if value.dtype == np.float32 else value)
        state.update(made)
        if copied is not None:
            for array in arrays:
                if not any(np.may_share_memory(array, m) for m in made.values()):
                    copied(array)
    return state


# A transposed matrix this large is copied on every core: numpy copies on one, and the
# transposes are most of a large checkpoint's load time (docs/benchmarks.md, "Memory").
PARALLEL_COPY = 1 << 20  # elements
BLOCK = 64  # rows of the copy per step: the strip of the source it reads stays in cache


def contiguous(value: np.ndarray) -> np.ndarray:
    """`value` as a C-contiguous float32 array: itself if it is one already, else a copy."""
    if value.ndim != 2 or value.flags.c_contiguous or value.dtype != np.float32 or value.size < PARALLEL_COPY:
        return np.ascontiguousarray(value, dtype=np.float32)
    out = np.empty(value.shape, np.float32)
    rows = value.shape[0]
    workers = os.cpu_count() or 1
    step = -(-rows // workers // BLOCK) * BLOCK  # each worker's share, whole blocks

    def copy(begin: int) -> None:
        for i in range(begin, min(begin + step, rows), BLOCK):
            out[i:i + BLOCK] = value[i:i + BLOCK]  # numpy releases the GIL for the copy

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(copy, range(0, rows, step)))
    return out


def names(found: list[str], most: int = 6) -> str:
    shown = ", ".join(found[:most])
    return shown + (f" and {len(found) - most} more" if len(found) > most else "")


def component(name: str) -> str:
    """The part of GPT-2 a name belongs to, for grouping: embeddings, block N, final norm, head."""
    if m := re.search(r"(?:^|[./])(?:h|trf_blocks)\.?(\d+)[./]", name):
        return f"block {m.group(1)}"
    if re.search(r"wte|wpe|tok_emb|pos_emb", name):
        return "embeddings"
    if re.search(r"ln_f|final_norm", name):
        return "final norm"
    return "head"


def natural_order(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
