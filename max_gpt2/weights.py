"""From a checkpoint, wherever it is, to the state dict our modules load.

Three steps, each a plain function:
1. `resolve`: a Hub id, a folder, a `.safetensors` / `pytorch_model.bin` file, or an in-memory
   state dict becomes a `Checkpoint`: its config, its raw tensors, and where its tokenizer is.
2. `adapt`: the raw tensors become our parameter names and orientation (pure; see below).
3. `check`: every parameter filled with the right shape, every tensor used, or one error that
   says what is wrong.

The facts about GPT-2's checkpoints live here, once:
- OpenAI's projections are Conv1D layers, stored [in, out]. MAX's Linear computes x @ W.T and
  wants [out, in], so exactly the c_attn, c_proj and c_fc weights are transposed. Two of them
  (attn.c_proj, and c_fc/c_proj when n_inner == n_embd) are square, so a forgotten transpose
  still loads; only numbers show it (tests/test_parity.py).
- `save_pretrained` prefixes keys with `transformer.`; the Hub's own openai-community/gpt2
  files do not.
- `h.N.attn.bias` and `h.N.attn.masked_bias` are the causal mask stored as buffers, not weights:
  skipped.
- The LM head is tied to wte; checkpoints usually omit lm_head.weight. An untied checkpoint
  (`tie_word_embeddings: false`) must carry its own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from max_gpt2.config import GPT2Config
from max_gpt2.errors import CheckpointError

CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")  # not "c_attn.bias", a real weight
PREFIX = "transformer."
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")



@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: dict[str, np.ndarray]  # as stored: checkpoint names, Conv1D orientation
    source: str  # what the user named, for messages
    path: Path | None = None  # the local folder or file it was read from (None: in memory)
    folder: Path | None = None  # where tokenizer files may be
    notes: list[str] = field(default_factory=list)  # things worth telling the user


# --- 1. resolve -------------------------------------------------------------------------------


def resolve(source, config: GPT2Config | Mapping | None = None, revision: str | None = None) -> Checkpoint:
    """Finds and reads a checkpoint. `config` overrides (or, for bare weights, supplies) config.json."""
    if isinstance(source, Mapping):
        if config is None:
            raise CheckpointError("an in-memory state dict needs config=: pass the model's config")
        return Checkpoint(_as_config(config), {k: to_numpy(v) for k, v in source.items()}, "state_dict")
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return _read_local(path, config)
    text = os.fspath(source)
    if _looks_like_hub_id(text):
        return _read_local(download(text, revision), config, source=text)
    raise CheckpointError(f"no such file or folder: {text}")


def _read_local(path: Path, config, source: str | None = None) -> Checkpoint:
    source = source or str(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        weights = _weights_in(path)
    elif path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
        weights = path
    elif path.suffix in (".bin", ".pt", ".pth"):
        weights = path
    elif path.name == "config.json":
        return _read_local(folder, config, source)
    else:
        raise CheckpointError(
            f"{path} is not a checkpoint: give a folder, a .safetensors file or a pytorch_model.bin"
        )
    tensors = read_tensors(weights)
    notes = []
    if config is not None:
        config = _as_config(config)
    elif (folder / "config.json").is_file():
        config = GPT2Config.from_json(folder / "config.json")
    else:
        config = infer_config(tensors)
        notes.append(
            f"no config.json beside {weights.name}: assumed n_head={config.n_head} (head size 64) "
            "and the rest from the tensor shapes"
        )
    return Checkpoint(config, tensors, source, path, folder, notes)


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
    if len(found) == 1:
        return folder / found[0]
    raise CheckpointError(
        f"no weights in {folder}: expected model.safetensors or pytorch_model.bin"
        + (f" (found {', '.join(found)})" if found else "")
    )


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None and not text.endswith(
        (".safetensors", ".bin", ".json")
    )


def download(repo_id: str, revision: str | None = None) -> Path:
    """The Hub snapshot's folder, from huggingface_hub's cache or downloaded (with progress bars).

    Honours HF_HUB_OFFLINE=1 and HF_HOME like every Hugging Face tool.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "*.safetensors", *TOKENIZER_FILES]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not any((folder / n).exists() for n in WEIGHT_FILES) and not list(folder.glob("*.safetensors")):
            # Older repositories have only pickled PyTorch weights; torch reads them safely.
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["pytorch_model.bin"]))
        return folder
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403, 404):
            raise CheckpointError(
                f"{repo_id!r} is not a model on the Hugging Face Hub (or it is private); "
                "check the name, or give a local path"
            ) from None
        raise CheckpointError(f"could not download {repo_id!r}: {_first_line(e)}") from None
    except Exception as e:  # offline, no network, a cache miss: all say the same to the user
        if type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or isinstance(e, OSError):
            raise CheckpointError(
                f"{repo_id!r} is not in the Hugging Face cache and cannot be downloaded "
                f"({'HF_HUB_OFFLINE is set' if _offline() else 'the Hub is unreachable'}); "
                "download it once with network access, or give a local checkpoint path"
            ) from None
        raise


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Reads every tensor of a .safetensors file (or sharded index) or a pytorch_model.bin."""
    if path.name.endswith(".safetensors.index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a safetensors index: {_first_line(e)}") from None
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(read_tensors(path.parent / shard))
        return tensors
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_first_line(e)}); "
            "it may be truncated: download it again"
        ) from None
    except TypeError:  # bfloat16 has no numpy dtype; torch reads it
        return _read_safetensors_torch(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def _read_safetensors_torch(path: Path) -> dict[str, np.ndarray]:
    torch = _torch(path)
    from safetensors.torch import load_file

    return {k: to_numpy(v) for k, v in load_file(str(path)).items()}


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    torch = _torch(path)
    import pickle

    try:
        # weights_only=True: the unpickler accepts tensors and plain containers and refuses any
        # other object, so a malicious file cannot run code here.
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors, which could run "
            f"code ({_first_line(e).removeprefix('Weights only load failed. ')[:160]}); "
            "use a .safetensors checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict of tensors")
    return {k: to_numpy(v) for k, v in raw.items()}


def _torch(path: Path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path.name} needs PyTorch (pip install torch); safetensors checkpoints do not"
        ) from None
    return torch


def to_numpy(value) -> np.ndarray:
    """A contiguous numpy array from a numpy array, a torch tensor (any dtype) or a DLPack array."""
    if type(value).__module__.startswith("torch"):
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return np.ascontiguousarray(value.numpy())
    return np.ascontiguousarray(np.asarray(value))


def _as_config(config) -> GPT2Config:
    if isinstance(config, GPT2Config):
        return config
    if isinstance(config, Mapping):
        return GPT2Config.from_dict(dict(config))
    if hasattr(config, "to_dict"):  # a transformers GPT2Config
        return GPT2Config.from_dict(config.to_dict())
    raise CheckpointError(f"config= must be a GPT2Config or a dict, not {type(config).__name__}")


def infer_config(tensors: Mapping[str, np.ndarray]) -> GPT2Config:
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
    return GPT2Config(
        vocab_size=int(vocab_size),
        n_positions=int(n_positions),
        n_embd=int(n_embd),
        n_layer=n_layer,
        n_head=max(1, int(n_embd) // 64),
        n_inner=None if n_inner == 4 * n_embd else int(n_inner),
        tie_word_embeddings="lm_head.weight" not in names,
    )


# --- 2. adapt ---------------------------------------------------------------------------------


def adapt(tensors: Mapping[str, np.ndarray], config: GPT2Config) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> our parameter names and orientation, float32 and contiguous."""
    state: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = key if key.startswith(PREFIX) or key.startswith("lm_head.") else PREFIX + key
        if name.endswith(BUFFERS):
            continue  # the causal mask, stored as a buffer
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the same matrix as wte
        if name.endswith(CONV1D) and value.ndim == 2:
            value = value.T  # Conv1D [in, out] -> Linear [out, in]
        state[name] = np.ascontiguousarray(value, dtype=np.float32)
    return state


# --- 3. check ---------------------------------------------------------------------------------


def check(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], config: GPT2Config, source: str) -> None:
    """Every expected parameter present with its shape, nothing left over; else one clear error."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        hint = ""
        if "lm_head.weight" in missing:
            hint = " (config says tie_word_embeddings=false, so the checkpoint must carry lm_head.weight)"
        elif any(re.match(r"transformer\.h\.(\d+)\.", k) for k in unexpected + missing):
            hint = f" (config says n_layer={config.n_layer}; does config.json belong to these weights?)"
        raise CheckpointError(f"{source} does not fit GPT-2: {'; '.join(parts)}{hint}")
    for name, shape in expected.items():
        got, want = tuple(state[name].shape), tuple(shape)
        if got != want:
            if name.endswith(CONV1D):  # speak of the checkpoint's own orientation
                got, want = got[::-1], want[::-1]
            raise CheckpointError(
                f"{source}: {name.removeprefix(PREFIX)} is {list(got)} but the model expects "
                f"{list(want)}: {_cause(name, got, want, config)}"
            )


def _names(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _cause(name: str, got: tuple, want: tuple, config: GPT2Config) -> str:
    short = name.removeprefix(PREFIX)
    if name.endswith(CONV1D) and got == want[::-1]:
        return "it is stored [out, in], but GPT-2 checkpoints store Conv1D weights [in, out] (was it transposed already?)"
    if short == "wte.weight":
        return f"config says vocab_size={config.vocab_size}, n_embd={config.n_embd} but wte is {list(got)}"
    if short == "wpe.weight":
        return f"config says n_positions={config.n_positions}, n_embd={config.n_embd} but wpe is {list(got)}"
    if "mlp.c_fc" in name:
        return f"config says n_embd={config.n_embd}, n_inner={config.inner_dim}; does config.json belong to these weights?"
    return f"config says n_embd={config.n_embd}; does config.json belong to these weights?"
