"""The `.pth` of "Build a Large Language Model (From Scratch)": the state dict of its `GPTModel`.

`gpt2-small-124M.pth` … `gpt2-xl-1558M.pth`, and any model trained with the book's code:
`tok_emb`, `pos_emb`, `trf_blocks.N.att.{W_query,W_key,W_value,out_proj}` (separate query, key
and value Linear layers, [out, in]; biases when qkv_bias), `trf_blocks.N.ff.layers.{0,2}`,
`norm1`/`norm2`/`final_norm` `.{scale,shift}`, `out_head.weight` (its own tensor, equal to
tok_emb when the weights came from OpenAI's), and `att.mask` buffers.

Nothing in the file says how many heads the model has: they are assumed 64 wide, as in every
GPT-2; `config=` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from max_gpt2.checkpoints.mapping import BUFFER, FUSED, HEAD, PREFIX, TIED, ZEROS, Move, block, renamed
from max_gpt2.config import GPT2Config
from max_gpt2.errors import CheckpointError

NAME = "LLMs-from-scratch GPTModel state dict"
QKV = ("W_query", "W_key", "W_value")


def matches(keys) -> bool:
    return "tok_emb.weight" in keys


def config(tensors: Mapping[str, np.ndarray]) -> tuple[GPT2Config, dict[str, str]]:
    try:
        vocab_size, n_embd = tensors["tok_emb.weight"].shape
        n_positions = tensors["pos_emb.weight"].shape[0]
        n_layer = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"trf_blocks\.(\d+)\.", k)))
        n_inner = tensors["trf_blocks.0.ff.layers.0.weight"].shape[0]
        head = tensors["out_head.weight"]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot tell the model's size from this GPTModel state dict (no {e})") from None
    if head.shape[0] != vocab_size:
        raise CheckpointError(
            f"out_head.weight has {head.shape[0]} rows but tok_emb.weight has {vocab_size}: this is a classifier "
            "(a GPTModel with a new output head), not a language model; max-gpt2 runs language models"
        )
    config = GPT2Config(
        vocab_size=int(vocab_size), n_positions=int(n_positions), n_embd=int(n_embd), n_layer=n_layer,
        n_head=max(1, int(n_embd) // 64), n_inner=None if n_inner == 4 * n_embd else int(n_inner),
        tie_word_embeddings=bool(np.array_equal(head, tensors["tok_emb.weight"])),
    )
    origin = {
        "vocab_size": "tok_emb.weight's shape", "n_embd": "tok_emb.weight's shape",
        "n_positions": "pos_emb.weight's shape", "n_layer": "the trf_blocks.N blocks",
        "n_inner": "ff.layers.0.weight's shape", "n_head": "assumed: GPT-2's heads are 64 wide",
        "activation_function": "the book's GELU (tanh)", "layer_norm_epsilon": "the book's LayerNorm",
        "tie_word_embeddings": "out_head.weight " + ("equals" if config.tie_word_embeddings else "differs from") + " tok_emb.weight",
    }
    return config, origin


def plan(tensors: Mapping[str, np.ndarray], config: GPT2Config) -> list[Move]:
    moves = [renamed(PREFIX + "wte.weight", "tok_emb.weight"), renamed(PREFIX + "wpe.weight", "pos_emb.weight")]
    qkv_bias = "trf_blocks.0.att.W_query.bias" in tensors
    for i in range(config.n_layer):
        b = f"trf_blocks.{i}."
        moves += _norm(f"{PREFIX}h.{i}.ln_1", b + "norm1")
        moves.append(Move(block(i, "attn.c_attn.weight"), tuple(f"{b}att.{w}.weight" for w in QKV), FUSED, _stack))
        if qkv_bias:
            moves.append(Move(block(i, "attn.c_attn.bias"), tuple(f"{b}att.{w}.bias" for w in QKV), FUSED, _stack))
        else:
            moves.append(Move(block(i, "attn.c_attn.bias"), (), ZEROS, lambda n=3 * config.n_embd: np.zeros(n, np.float32)))
        moves += _linear(block(i, "attn.c_proj"), b + "att.out_proj")
        if b + "att.mask" in tensors:
            moves.append(Move(None, (b + "att.mask",), BUFFER, loads=False))
        moves += _norm(f"{PREFIX}h.{i}.ln_2", b + "norm2")
        moves += _linear(block(i, "mlp.c_fc"), b + "ff.layers.0")
        moves += _linear(block(i, "mlp.c_proj"), b + "ff.layers.2")
    moves += _norm(PREFIX + "ln_f", "final_norm")
    tied = np.array_equal(tensors.get("out_head.weight"), tensors.get("tok_emb.weight"))
    moves.append(Move(HEAD, ("out_head.weight",), TIED, loads=False) if tied else renamed(HEAD, "out_head.weight"))
    return moves


def _norm(ours: str, stored: str) -> list[Move]:
    return [renamed(ours + ".weight", stored + ".scale"), renamed(ours + ".bias", stored + ".shift")]


def _linear(ours: str, stored: str) -> list[Move]:
    """A Linear layer: [out, in] already, as MAX wants it."""
    return [renamed(ours + ".weight", stored + ".weight"), renamed(ours + ".bias", stored + ".bias")]


def _stack(q, k, v):
    """c_attn's output is [q | k | v]; as Linear weights [out, in] they stack along the rows."""
    return np.concatenate([q, k, v], axis=0)
