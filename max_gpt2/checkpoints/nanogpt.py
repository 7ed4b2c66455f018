"""nanoGPT's `ckpt.pt`, as its train.py saves it.

The file is a dict: `model` (the state dict), `model_args` (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), `optimizer`, `iter_num`, `best_val_loss`, `config`.
Its model differs from OpenAI's in four ways that matter here:
- Linear layers, [out, in]: nothing to transpose. The names are Hugging Face's.
- exact GELU (`nn.GELU()`): activation_function "gelu", not GPT-2's tanh "gelu_new".
- `bias=False` models have no biases at all: they load as zeros, which compute the same.
- trained from scratch, the vocabulary is padded from GPT-2's 50257 to 50304 (a multiple of 64,
  for speed). The padded rows are never a training target; they are dropped here, so the model
  can never produce a token the tokenizer cannot decode.
A model run through torch.compile has every key prefixed `_orig_mod.`. wte and lm_head are one
tensor (weight tying), stored under both names.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from max_gpt2.checkpoints.mapping import (BUFFER, CONV1D, HEAD, PREFIX, TIED, TRIMMED, ZEROS, Move, block,
                                          renamed)
from max_gpt2.config import GPT2Config
from max_gpt2.errors import CheckpointError

NAME = "nanoGPT checkpoint"
COMPILED = "_orig_mod."
GPT2_VOCAB, PADDED_VOCAB = 50257, 50304


def matches_file(raw) -> bool:
    return isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping) and isinstance(raw.get("model_args"), Mapping)


def config(model_args: Mapping) -> tuple[GPT2Config, dict[str, str]]:
    try:
        vocab = int(model_args["vocab_size"])
        fields = dict(n_layer=int(model_args["n_layer"]), n_head=int(model_args["n_head"]),
                      n_embd=int(model_args["n_embd"]), n_positions=int(model_args["block_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"this nanoGPT checkpoint's model_args lack {e}: it was not written by nanoGPT's train.py") from None
    origin = {name: "model_args" for name in fields}
    origin["n_positions"] = "model_args block_size"
    origin["vocab_size"] = "model_args"
    if vocab == PADDED_VOCAB:
        vocab = GPT2_VOCAB
        origin["vocab_size"] = f"model_args ({PADDED_VOCAB}: GPT-2's {GPT2_VOCAB} padded; the padding dropped)"
    cfg = GPT2Config(**fields, vocab_size=vocab, activation_function="gelu")
    origin.update(activation_function="nanoGPT's nn.GELU() (exact)", layer_norm_epsilon="nanoGPT's LayerNorm",
                  tie_word_embeddings="nanoGPT's weight tying (wte is lm_head)")
    return cfg, origin


def unwrap(raw: Mapping) -> dict:
    """The model's state dict, keys as stored (maybe `_orig_mod.`-prefixed)."""
    return dict(raw["model"])


def plan(tensors: Mapping[str, np.ndarray], config: GPT2Config) -> list[Move]:
    p = COMPILED if any(k.startswith(COMPILED) for k in tensors) else ""
    bias = f"{p}{PREFIX}h.0.ln_1.bias" in tensors

    def take(ours: str, stored: str | None = None) -> Move:
        return renamed(ours, p + (stored or ours))

    def with_bias(ours: str, size: int) -> list[Move]:
        zeros = Move(ours + ".bias", (), ZEROS, lambda: np.zeros(size, np.float32))
        return [take(ours + ".weight"), take(ours + ".bias") if bias else zeros]

    moves = [_vocab(PREFIX + "wte.weight", p, tensors, config), take(PREFIX + "wpe.weight")]
    widths = {"attn.c_attn": 3 * config.n_embd, "attn.c_proj": config.n_embd, "mlp.c_fc": config.inner_dim,
              "mlp.c_proj": config.n_embd}
    for i in range(config.n_layer):
        moves += with_bias(f"{PREFIX}h.{i}.ln_1", config.n_embd)
        for conv in CONV1D:
            if conv == "mlp.c_fc":
                moves += with_bias(f"{PREFIX}h.{i}.ln_2", config.n_embd)
            moves += with_bias(block(i, conv), widths[conv])
        if f"{p}{PREFIX}h.{i}.attn.bias" in tensors:  # the causal mask, when torch lacks flash attention
            moves.append(Move(None, (f"{p}{PREFIX}h.{i}.attn.bias",), BUFFER, loads=False))
    moves += with_bias(PREFIX + "ln_f", config.n_embd)
    head, wte = tensors.get(p + HEAD), tensors.get(f"{p}{PREFIX}wte.weight")
    if head is not None and wte is not None and head is not wte and not np.array_equal(head, wte):
        moves.append(_vocab(HEAD, p, tensors, config))
    else:
        moves.append(Move(HEAD, (p + HEAD,), TIED, loads=False))
    return moves


def _vocab(ours: str, p: str, tensors: Mapping, config: GPT2Config) -> Move:
    move = renamed(ours, p + ours)
    stored = tensors.get(p + ours)
    if stored is None or stored.shape[0] != PADDED_VOCAB or config.vocab_size != GPT2_VOCAB:
        return move
    return Move(ours, move.stored, TRIMMED, lambda w: w[:GPT2_VOCAB])
