"""Hugging Face's GPT-2 layouts: the Hub's model.safetensors, save_pretrained's, pytorch_model.bin.

Our parameter names are these files' names, so the plan is short: add the `transformer.`
prefix where the Hub's file has none, transpose the Conv1D weights, skip the causal-mask
buffers, and keep a tied head once. `to_hf` is its inverse, for `convert` and the reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from max_gpt2.checkpoints.mapping import (BUFFER, BUFFERS, HEAD, PREFIX, TIED, TRANSPOSED, Move, conv1d_weights, renamed,
                                          transpose)
from max_gpt2.config import GPT2Config
from max_gpt2.errors import CheckpointError

NAME = "Hugging Face checkpoint"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def matches(keys) -> bool:
    return any(k.removeprefix(PREFIX) == "wte.weight" for k in keys)


def plan(tensors: Mapping[str, np.ndarray], config: GPT2Config) -> list[Move]:
    """Every stored tensor's move. A name we do not know is kept under its own name, so that
    `check` reports it beside the missing ones."""
    moves = []
    for key, value in tensors.items():
        name = key if key.startswith(PREFIX) or key.startswith("lm_head.") else PREFIX + key
        if name.endswith(BUFFERS):
            moves.append(Move(None, (key,), BUFFER, loads=False))
        elif name == HEAD and config.tie_word_embeddings:
            moves.append(Move(HEAD, (key,), TIED, loads=False))
        elif name.endswith(conv1d_weights()) and value.ndim == 2:
            moves.append(Move(name, (key,), TRANSPOSED, transpose))
        else:
            moves.append(renamed(name, key))
    if config.tie_word_embeddings and not any(m.ours == HEAD for m in moves):
        moves.append(Move(HEAD, (), TIED, loads=False))  # shown, so a reader sees where the head went
    return moves


def to_hf(state: Mapping[str, np.ndarray], config: GPT2Config) -> dict[str, np.ndarray]:
    """Our state dict as save_pretrained writes it: Conv1D weights back to [in, out], a tied head omitted."""
    out = {}
    for name, value in state.items():
        if name.endswith(conv1d_weights()):
            value = value.T
        out[name] = np.ascontiguousarray(value)
    if config.tie_word_embeddings:
        out.pop(HEAD, None)
    return out


def infer_config(tensors: Mapping[str, np.ndarray]) -> tuple[GPT2Config, dict[str, str]]:
    """A config from the tensor shapes alone, for bare weight files; heads are assumed 64 wide."""
    names = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    try:
        vocab_size, n_embd = names["wte.weight"].shape
        n_positions = names["wpe.weight"].shape[0]
        n_layer = 1 + max(int(m.group(1)) for k in names if (m := re.match(r"h\.(\d+)\.", k)))
        n_inner = names["h.0.mlp.c_fc.weight"].shape[1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"cannot tell the model's size from these weights (no {e}); put its config.json beside them"
        ) from None
    config = GPT2Config(
        vocab_size=int(vocab_size),
        n_positions=int(n_positions),
        n_embd=int(n_embd),
        n_layer=n_layer,
        n_head=max(1, int(n_embd) // 64),
        n_inner=None if n_inner == 4 * n_embd else int(n_inner),
        tie_word_embeddings="lm_head.weight" not in names,
    )
    origin = {
        "vocab_size": "wte.weight's shape", "n_embd": "wte.weight's shape", "n_positions": "wpe.weight's shape",
        "n_layer": "the h.N blocks", "n_inner": "h.0.mlp.c_fc.weight's shape",
        "n_head": "assumed: GPT-2's heads are 64 wide", "tie_word_embeddings": "no lm_head.weight stored",
    }
    return config, origin
