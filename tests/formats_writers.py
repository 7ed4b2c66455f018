"""Checkpoints in the other formats, each written by that format's own code where we can run it.

- OpenAI's TensorFlow folder: tests/fixtures/openai_tf/, written once by TensorFlow's own Saver
  (tests/fixtures/make_openai_tf.py says how); `openai_variables()` rebuilds its values.
- LLMs-from-scratch: its PyPI package's own GPTModel and load_weights_into_gpt.
- nanoGPT: its code is not ours to ship. tests/fixtures/nanogpt/ holds three small ckpt.pt files
  its own model.py and train.py's save dict wrote, with its own logits beside them
  (tests/fixtures/make_nanogpt.py says how). For the padded 50304 vocabulary, too large to
  commit, `write_nanogpt` builds the state dict its model.py has (names, Linear orientation,
  bias or none, wte and lm_head one tensor) with plain torch, and saves it in train.py's save
  dict with a real AdamW's state.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from max_gpt2.config import GPT2Config

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI_TF = FIXTURES / "openai_tf"


def _maker():
    spec = importlib.util.spec_from_file_location("make_openai_tf", FIXTURES / "make_openai_tf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
# The fixture's sizes as GPT-2 configs: shared by the TF and .pth tests (one compiled graph).
SMALL = GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_head=4, n_layer=2, bos_token_id=299, eos_token_id=299)
NANO = GPT2Config(vocab_size=50257, n_positions=32, n_embd=48, n_head=4, n_layer=2, activation_function="gelu")


def openai_variables() -> dict[str, np.ndarray]:
    return MAKER.variables()


def openai_params(variables: dict[str, np.ndarray]) -> dict:
    """The dict LLMs-from-scratch's load_gpt2_params_from_tf_ckpt makes of OpenAI's variables."""
    params = {"blocks": [{} for _ in range(MAKER.HPARAMS["n_layer"])]}
    for name, value in variables.items():
        parts = [p for p in name.split("/")[1:] if p != "ln_f"]  # its final norm is params["g"], params["b"]
        target = params
        if parts[0].startswith("h"):
            target = params["blocks"][int(parts[0][1:])]
            parts = parts[1:]
        for key in parts[:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = np.squeeze(value)
    return params


def hf_model(config: GPT2Config, conv1d_state: dict[str, np.ndarray], zero_biases: bool = False):
    """transformers' GPT2LMHeadModel holding `conv1d_state` (its own names and layout); with
    `zero_biases`, the biases the state lacks are zeros (a model built without them)."""
    import torch
    from transformers import GPT2LMHeadModel

    from max_gpt2.reference import hf_config

    model = GPT2LMHeadModel(hf_config(config)).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in conv1d_state.items()}
    if zero_biases:
        state.update({k: torch.zeros_like(v) for k, v in model.state_dict().items() if k.endswith(".bias") and k not in state})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model


def openai_reference():
    """transformers on the TF fixture's values, rebuilt from the seed: OpenAI's names to HF's by hand."""
    v, state = openai_variables(), {}
    state["transformer.wte.weight"], state["transformer.wpe.weight"] = v["model/wte"], v["model/wpe"]
    for name, value in v.items():
        if name.startswith("model/h"):
            block, *rest = name.split("/")[1:]
            leaf = {"g": "weight", "b": "bias", "w": "weight"}[rest[-1]]
            state[f"transformer.h.{block[1:]}.{'.'.join(rest[:-1])}.{leaf}"] = value[0] if rest[-1] == "w" else value
    state["transformer.ln_f.weight"], state["transformer.ln_f.bias"] = v["model/ln_f/g"], v["model/ln_f/b"]
    return hf_model(SMALL, state)


# --- LLMs-from-scratch ------------------------------------------------------------------------


def book_config(config: GPT2Config, qkv_bias: bool = True) -> dict:
    return {"vocab_size": config.vocab_size, "context_length": config.n_positions, "emb_dim": config.n_embd,
            "n_heads": config.n_head, "n_layers": config.n_layer, "drop_rate": 0.0, "qkv_bias": qkv_bias}


def book_model_from_openai():
    """The book's GPTModel with the TF fixture's weights, put there by the book's own loader."""
    import torch
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import load_weights_into_gpt

    torch.manual_seed(0)
    model = GPTModel(book_config(SMALL)).eval()
    load_weights_into_gpt(model, openai_params(openai_variables()))
    return model


# --- nanoGPT ----------------------------------------------------------------------------------


def nanogpt_state(config: GPT2Config, *, bias: bool, vocab: int, seed: int = 0) -> dict:
    """The state dict of nanoGPT's GPT (model.py) for these sizes, seeded random values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d = config.n_embd

    def normal(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def linear(prefix, n_in, n_out):
        state[prefix + ".weight"] = normal(n_out, n_in)  # nn.Linear: [out, in]
        if bias:
            state[prefix + ".bias"] = normal(n_out, scale=0.1)

    def norm(prefix):
        state[prefix + ".weight"] = 1 + normal(d, scale=0.1)
        if bias:
            state[prefix + ".bias"] = normal(d, scale=0.1)

    wte = normal(vocab, d)
    state = {"transformer.wte.weight": wte, "transformer.wpe.weight": normal(config.n_positions, d)}
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        norm(h + "ln_1")
        linear(h + "attn.c_attn", d, 3 * d)
        linear(h + "attn.c_proj", d, d)
        norm(h + "ln_2")
        linear(h + "mlp.c_fc", d, 4 * d)
        linear(h + "mlp.c_proj", 4 * d, d)
    norm("transformer.ln_f")
    state["lm_head.weight"] = wte  # weight tying: one tensor under both names
    return state


def write_nanogpt(path: Path, config: GPT2Config = NANO, *, bias: bool = True, compiled: bool = False,
                  vocab: int = 50304, seed: int = 0) -> dict:
    """ckpt.pt as train.py saves it; returns the model's state dict (without any prefix)."""
    import torch

    state = nanogpt_state(config, bias=bias, vocab=vocab, seed=seed)
    params = [torch.nn.Parameter(t) for t in {id(t): t for t in state.values()}.values()]
    optimizer = torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95))
    sum((p * p).sum() for p in params).backward()
    optimizer.step()  # a real optimizer state to carry (exp_avg, exp_avg_sq, step)
    with torch.no_grad():  # undo the step: the values the test compares stay the seeded ones
        for p, t in zip(params, {id(t): t for t in state.values()}.values()):
            p.copy_(t)
    model_args = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      block_size=config.n_positions, bias=bias, vocab_size=vocab, dropout=0.0)
    prefix = "_orig_mod." if compiled else ""  # torch.compile's wrapper, whose state_dict train.py saves
    checkpoint = {
        "model": {prefix + k: v for k, v in state.items()},
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 2000,
        "best_val_loss": torch.tensor(3.1),
        "config": {"out_dir": "out", "batch_size": 12, "learning_rate": 6e-4, "compile": compiled,
                   "dataset": "openwebtext", "decay_lr": True, "init_from": "scratch"},
    }
    torch.save(checkpoint, path)
    return state


def nanogpt_reference(state: dict, config: GPT2Config = NANO):
    """transformers on nanoGPT's weights: Linear -> Conv1D by hand, the padded rows left out, no bias as zeros."""
    hf = {}
    for name, value in state.items():
        if name == "lm_head.weight":
            continue
        value = value.detach().numpy()
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.T
        if name == "transformer.wte.weight":
            value = value[: config.vocab_size]
        hf[name] = value
    return hf_model(config, hf, zero_biases=True)
