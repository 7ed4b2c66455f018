"""OpenAI's original GPT-2 release, as its download_model.py fetches it, read without TensorFlow.

Files: `hparams.json` (n_vocab, n_ctx, n_embd, n_head, n_layer), `checkpoint` (names the
prefix, "model.ckpt"), the tensor bundle `model.ckpt.index` + `model.ckpt.data-00000-of-00001`
(read by tensor_bundle), and the tokenizer as `encoder.json` + `vocab.bpe` (GPT-2's
vocab.json and merges.txt under their first names).

Variables: `model/wte`, `model/wpe`, `model/h{i}/{ln_1,ln_2}/{g,b}`,
`model/h{i}/{attn/c_attn,attn/c_proj,mlp/c_fc,mlp/c_proj}/{w,b}` (w stored [1, in, out]: a
Conv1D as a 1x1 convolution), `model/ln_f/{g,b}`. The head is wte itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from max_gpt2.checkpoints.mapping import CONV1D, HEAD, PREFIX, SQUEEZED, TIED, Move, block, renamed
from max_gpt2.config import GPT2Config
from max_gpt2.errors import CheckpointError

NAME = "OpenAI TensorFlow checkpoint"
INDEX = "model.ckpt.index"


def matches_folder(folder: Path) -> bool:
    return (folder / "hparams.json").is_file() or any(folder.glob("*.ckpt.index"))


def matches(keys) -> bool:
    return "model/wte" in keys


def prefix_in(folder: Path) -> Path:
    """The bundle's prefix: as the `checkpoint` file names it, else the one *.ckpt.index here."""
    state = folder / "checkpoint"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"(.+)"', state.read_text(errors="replace"), re.M)
        if m and Path(f"{folder / m.group(1)}.index").is_file():
            return folder / m.group(1)
    found = sorted(folder.glob("*.ckpt.index"))
    if len(found) == 1:
        return found[0].with_suffix("")
    raise CheckpointError(
        f"no TensorFlow checkpoint in {folder}: hparams.json is there but "
        + (f"several indexes ({', '.join(p.name for p in found)}): name one" if found else
           f"{INDEX} and model.ckpt.data-00000-of-00001 are not (download_model.py fetches all seven files)")
    )


def config(folder: Path) -> tuple[GPT2Config, dict[str, str]]:
    path = folder / "hparams.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has a TensorFlow checkpoint but no hparams.json beside it, which gives its sizes")
    try:
        h = json.loads(path.read_text())
        fields = dict(vocab_size=h["n_vocab"], n_positions=h["n_ctx"], n_embd=h["n_embd"], n_head=h["n_head"],
                      n_layer=h["n_layer"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer): {e!r}") from None
    # <|endoftext|> is the last token of OpenAI's vocabulary; its tanh GELU and eps are GPT-2's defaults.
    cfg = GPT2Config(**fields, bos_token_id=fields["vocab_size"] - 1, eos_token_id=fields["vocab_size"] - 1)
    origin = {name: "hparams.json" for name in fields}
    origin.update(bos_token_id="the last token (<|endoftext|>)", eos_token_id="the last token (<|endoftext|>)",
                  activation_function="OpenAI's model.py (tanh GELU)", layer_norm_epsilon="OpenAI's model.py",
                  tie_word_embeddings="OpenAI's model.py (the head is wte)")
    return cfg, origin


def plan(tensors, config: GPT2Config) -> list[Move]:
    moves = [renamed(PREFIX + "wte.weight", "model/wte"), renamed(PREFIX + "wpe.weight", "model/wpe")]
    for i in range(config.n_layer):
        h = f"model/h{i}/"
        moves += _norm(f"{PREFIX}h.{i}.ln_1", h + "ln_1")
        for conv in CONV1D:
            if conv == "mlp.c_fc":
                moves += _norm(f"{PREFIX}h.{i}.ln_2", h + "ln_2")
            stored = h + conv.replace(".", "/")
            moves.append(Move(block(i, conv + ".weight"), (stored + "/w",), SQUEEZED, _squeeze_transpose))
            moves.append(renamed(block(i, conv + ".bias"), stored + "/b"))
    moves += _norm(PREFIX + "ln_f", "model/ln_f")
    moves.append(Move(HEAD, (), TIED, loads=False))
    return moves


def _norm(ours: str, stored: str) -> list[Move]:
    return [renamed(ours + ".weight", stored + "/g"), renamed(ours + ".bias", stored + "/b")]


def _squeeze_transpose(w):
    if w.ndim != 3 or w.shape[0] != 1:
        raise ValueError(f"expected [1, in, out], got {list(w.shape)}")
    return w[0].T
