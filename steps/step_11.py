"""Step 11 · Load GPT-2's weights, compile, and talk to it

What you build: the last three pieces that turn your classes into a working GPT-2.
- load_weights(): a checkpoint as published on the Hugging Face Hub (config.json,
  model.safetensors) -> your config and a state dict in your modules' names and orientation;
- compile_model(): your GPT2LMHeadModel (step 08) compiled by MAX into one graph that takes token
  ids of any batch size and length;
- chat(): the prompt loop: read a prompt, tokenize it (step 09), generate (step 10), print.

Run it:  pixi run my-gpt2   (or: make my-gpt2, or: python steps/step_11.py [checkpoint])
The checkpoint defaults to "gpt2" (downloaded once from the Hub into its cache); a local folder
in the same layout works too.

The facts about OpenAI's checkpoint, which is why this step exists:
- Its projections were written as "Conv1D" layers, which store their weight [in, out]. MAX's
  Linear computes x @ W^T with W [out, in]. So exactly four weights per block must be
  transposed: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj. attn.c_proj is square
  (n_embd x n_embd): forget it and everything loads, and GPT-2 talks nonsense.
- The Hub's file names its tensors without the "transformer." prefix our modules have
  ("h.0.attn.c_attn.weight"); files written by transformers' save_pretrained have it.
- "h.N.attn.bias" (and "h.N.attn.masked_bias" in older files) are not weights: they are the
  causal mask, stored as a buffer. Careful: "h.N.attn.c_attn.bias" *is* a weight.
- There is no lm_head.weight: the head is wte (step 08).

When finished, it lives in: max_gpt2/checkpoints/huggingface.py, function plan (what happens to
each stored tensor; max_gpt2/weights.py's adapt applies it). See the mapping for any checkpoint,
read from the real file: `max-gpt2 inspect gpt2` (also OpenAI's TensorFlow folder, an
LLMs-from-scratch .pth, nanoGPT's ckpt.pt: their tensors take other routes to the same
parameters). The package builds its modules for compiling with max_gpt2/graphs.py's
building(), compiles and runs them in max_gpt2/engine.py (class GPT2), and its prompt loop is
max_gpt2/chat.py (function chat).

Check:   pixi run s11   (or: make s11; the checker is checks/s11_weights.py)
Compare: python solutions/solution_11.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import max.experimental.functional as F  # noqa: F401
import numpy as np
from max.driver import CPU  # noqa: F401
from max.dtype import DType  # noqa: F401
from max.experimental.tensor import Tensor, TensorType, default_device, default_dtype  # noqa: F401

from step_01 import GPT2Config
from step_08 import GPT2LMHeadModel  # noqa: F401
from step_09 import GPT2Tokenizer
from step_10 import generate  # noqa: F401


def read_config(folder: Path) -> GPT2Config:
    """config.json -> GPT2Config, keeping the fields GPT2Config has (it has Hugging Face's names)."""
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(GPT2Config)}
    return GPT2Config(**{k: v for k, v in raw.items() if k in names})


def load_weights(folder: Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """A checkpoint folder -> (config, state dict named and shaped as your modules' parameters)."""
    from safetensors.numpy import load_file

    config = read_config(folder)
    tensors = load_file(str(folder / "model.safetensors"))  # name -> numpy array, as stored
    state: dict[str, np.ndarray] = {}
    # For each name, value in tensors.items():
    # TODO 11.1: skip the causal-mask buffers: names ending in ".attn.bias" or ".attn.masked_bias".
    # TODO 11.2: name it as your modules do: "transformer." + name, unless it starts with it
    #   already. Skip "lm_head.weight" if a file carries it: the head is wte.
    # TODO 11.3: transpose (value.T) the Conv1D weights: names ending in ".attn.c_attn.weight",
    #   ".attn.c_proj.weight", ".mlp.c_fc.weight" or ".mlp.c_proj.weight". Not their biases.
    # and store np.ascontiguousarray(value, dtype=np.float32): MAX wants contiguous float32.
    # Write the loop in place of the `raise` line below; the `return config, state` after it stays.
    raise NotImplementedError("TODO 11.1: turn the checkpoint's tensors into your state dict")
    return config, state


def compile_model(config: GPT2Config, state: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Your GPT2LMHeadModel, compiled with `state` as its weights: ids [B, T] -> logits [B, T, V]."""
    # TODO 11.4: three moves.
    # 1. Build the model lazily, on the CPU, in float32:
    #        with F.lazy(), default_device(CPU()), default_dtype(DType.float32):
    #            model = GPT2LMHeadModel(config)
    #    Lazily, a module only describes its tensors. Made eagerly, every weight would first be
    #    filled with random numbers, op by op, only to be replaced by the checkpoint's at compile
    #    time. (The package writes this block once: max_gpt2/graphs.py, building().)
    # 2. Compile it for int64 token ids of symbolic shape ("batch", "seqlen"):
    #        model.compile(TensorType(DType.int64, ("batch", "seqlen"), device=CPU()), weights=state)
    #    Named dimensions are symbolic: one graph serves every batch size and length. (Do not
    #    call the model uncompiled: MAX would run it op by op, over a minute per forward.)
    # 3. Return a function that takes a numpy int64 array, wraps it with
    #    Tensor.from_dlpack(np.ascontiguousarray(ids, dtype=np.int64)), calls the compiled
    #    model, and returns .to_numpy() of the result.
    raise NotImplementedError("TODO 11.4: compile the model")


def chat(
    next_logits: Callable[[np.ndarray], np.ndarray],
    tokenizer: GPT2Tokenizer,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
) -> None:
    """The prompt loop: read a prompt, write GPT-2's continuation; stop at an empty line or at the
    end of input (Ctrl-D: `read` raises EOFError)."""
    # TODO 11.5: rng = np.random.default_rng(seed); then loop: prompt = read("> "); stop on ""
    # or EOFError; the new tokens from generate() (stop at tokenizer.eos_token_id);
    # write(tokenizer.decode(new_tokens)).
    raise NotImplementedError("TODO 11.5: the prompt loop")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Your GPT-2, built step by step, on MAX.")
    parser.add_argument("checkpoint", nargs="?", default="gpt2", help="a Hub id or a local folder (default: gpt2)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 is no limit")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)

    folder = Path(args.checkpoint).expanduser()
    if not folder.is_dir():  # a Hub id: fetch it once into the Hugging Face cache (not this step's subject)
        from max_gpt2.weights import download

        folder = download(args.checkpoint)
    config, state = load_weights(folder)
    print(f"compiling GPT-2 ({config.n_layer} layers, {config.n_embd} wide): a minute or more the first time ...")
    next_logits = compile_model(config, state)
    tokenizer = GPT2Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt")
    print("Type a prompt; an empty line or Ctrl-D ends.")
    chat(next_logits, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
         top_k=args.top_k, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
