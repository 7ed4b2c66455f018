"""GPT-2's configuration, with Hugging Face's field names.

A `GPT2Config` reads any GPT-2 `config.json` (the Hub's, `save_pretrained`'s, a fine-tune's)
and refuses, with one clear sentence, a configuration this implementation cannot run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from max_gpt2.errors import ConfigError

# The activation names transformers' GPT-2 accepts, grouped by the function they compute.
# GPT-2 itself uses "gelu_new": the tanh approximation of GELU.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh")
ACTIVATIONS = (*TANH_GELU, "gelu", "relu", "silu", "swish")



@dataclass
class GPT2Config:
    """GPT-2's hyper-parameters; the defaults are the 124M model's (`gpt2`)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"config {name}={value!r} must be a positive integer")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise ConfigError(f"config n_inner={self.n_inner!r} must be a positive integer or null")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"config n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "every attention head needs the same width"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"config activation_function={self.activation_function!r} is not supported; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"config layer_norm_epsilon={self.layer_norm_epsilon!r} must be > 0")

    @classmethod
    def from_dict(cls, raw: dict) -> GPT2Config:
        """Builds a config from a Hugging Face `config.json` dictionary.

        Fields we do not use (dropout rates, summary heads, ...) are ignored; a file that is not
        a GPT-2 configuration is refused.
        """
        model_type = raw.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(
                f"config model_type={model_type!r} is not GPT-2; max-gpt2 runs only model_type 'gpt2'"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        # Older configs spell the context length n_ctx.
        if "n_positions" not in values and "n_ctx" in raw:
            values["n_positions"] = raw["n_ctx"]
        for key in ("bos_token_id", "eos_token_id"):
            if values.get(key) is None:
                values.pop(key, None)
        if values.get("tie_word_embeddings") is None:
            values.pop("tie_word_embeddings", None)
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} is not a config.json: it holds no JSON object")
        return cls.from_dict(raw)

    @classmethod
    def preset(cls, name: str) -> GPT2Config:
        """One of OpenAI's sizes by its Hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2."""
        key = name.removeprefix("openai-community/").removeprefix("distilbert/")
        if key not in PRESETS:
            raise ConfigError(f"no preset named {name!r}; presets are {', '.join(PRESETS)}")
        return cls(**PRESETS[key])

    def to_dict(self) -> dict:
        return {"model_type": "gpt2", **dataclasses.asdict(self)}


# The published checkpoints differ only in depth and width.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),  # 124M
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),  # 355M
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),  # 774M
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),  # 1.5B
    "distilgpt2": dict(n_layer=6, n_embd=768, n_head=12),  # 82M
}
