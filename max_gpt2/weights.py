"""From a checkpoint, wherever it is and whoever wrote it, to the state dict our modules load.

Three steps, each a plain function:
1. `resolve`: a Hub id, a folder, a file, or an in-memory state dict becomes a `Checkpoint`:
   its format, its config (and where each value came from), its raw tensors under their
   stored names (a safetensors file's mapped, not read), and where its tokenizer is.
2. `adapt`: the raw tensors become our parameter names and orientation (pure: the format's
   `plan`, see max_gpt2/checkpoints/, applied).
3. `check`: every parameter filled with the right shape, every tensor used, or one error that
   says what is wrong.

The formats (max_gpt2/checkpoints/): Hugging Face's (the Hub's model.safetensors,
save_pretrained's folder, pytorch_model.bin), OpenAI's TensorFlow release folder, the
LLMs-from-scratch `.pth`, nanoGPT's `ckpt.pt`. A folder is recognised by its files, a file by
its keys and structure.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from max_gpt2 import precision
from max_gpt2.checkpoints import formats_we_read, huggingface, llms_from_scratch, nanogpt, openai_tf, tensor_bundle
from max_gpt2.checkpoints.huggingface import TOKENIZER_FILES, WEIGHT_FILES
from max_gpt2.checkpoints.mapping import PREFIX, Move, apply, conv1d_weights, names
from max_gpt2.config import GPT2Config
from max_gpt2.errors import AssumedConfigWarning, CheckpointError

FORMATS = {"huggingface": huggingface, "openai_tf": openai_tf, "llms_from_scratch": llms_from_scratch, "nanogpt": nanogpt}
TORCH_FILES = (".bin", ".pt", ".pth", ".ckpt")


class Stored(dict):
    """A checkpoint's tensors under their stored names, and the format those names belong to."""

    def __init__(self, tensors: Mapping, format: str) -> None:
        super().__init__(tensors)
        self.format = format


@dataclass
class Checkpoint:
    config: GPT2Config
    tensors: Stored  # as stored: the format's names and orientation
    source: str  # what the user named, for messages
    path: Path | None = None  # the local folder or file it was read from (None: in memory)
    folder: Path | None = None  # where tokenizer files may be
    origin: dict[str, str] = field(default_factory=dict)  # config field -> where its value came from

    @property
    def format(self) -> str:
        return self.tensors.format


# --- 1. resolve -------------------------------------------------------------------------------


def resolve(source, config: GPT2Config | Mapping | str | os.PathLike | None = None, revision: str | None = None) -> Checkpoint:
    """Finds and reads a checkpoint. `config` (a GPT2Config, a dict, or a config.json path)
    overrides the checkpoint's own config, or supplies one to bare weights."""
    if isinstance(source, Mapping):
        return _from_memory(source, config)
    path = Path(os.fspath(source)).expanduser()
    if not path.exists() and Path(f"{path}.index").is_file():  # a TensorFlow prefix, "…/model.ckpt"
        return _read_tf(path, config, str(source))
    if path.exists():
        return _read_local(path, config)
    text = os.fspath(source)
    if _looks_like_hub_id(text):
        return _read_local(download(text, revision), config, source=text)
    raise CheckpointError(f"no such file or folder: {text}")


def _from_memory(source: Mapping, config) -> Checkpoint:
    # Owned copies: the caller's tensors (a torch model's state_dict() shares its parameters'
    # memory) may change before our graphs are compiled from them.
    fmt, raw = _detect(source, "the state dict")
    tensors = {k: np.array(to_numpy(v), copy=True) for k, v in raw.items()}
    if fmt == "nanogpt":
        found, origin = nanogpt.config(source["model_args"])
    elif fmt == "llms_from_scratch":
        found, origin = llms_from_scratch.config(tensors)
    else:
        if config is None:
            raise CheckpointError("an in-memory state dict needs config=: pass the model's config")
        found, origin = None, {}
    return _finish(Checkpoint(found, Stored(tensors, fmt), "state_dict", origin=origin), config)


def _read_local(path: Path, config, source: str | None = None) -> Checkpoint:
    source = source or str(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        if openai_tf.matches_folder(path) and not any((path / n).is_file() for n in WEIGHT_FILES):
            return _read_tf(openai_tf.prefix_in(path), config, source)
        weights = _weights_in(path)
    elif path.name == "config.json":
        return _read_local(folder, config, source)
    elif path.name.endswith(".index") or path.name == "hparams.json":
        return _read_tf(openai_tf.prefix_in(folder) if path.name == "hparams.json" else path.with_suffix(""), config, source)
    elif path.suffix in (".safetensors", *TORCH_FILES) or path.name.endswith(".safetensors.index.json"):
        weights = path
    else:
        raise CheckpointError(f"{path} is not a checkpoint max-gpt2 reads; it reads: {formats_we_read()}")
    raw = read_tensors(weights) if weights.suffix not in TORCH_FILES else _load_torch(weights)
    fmt, tensors = _detect(raw, str(weights))
    tensors = {k: to_numpy(v) for k, v in tensors.items()}
    found = Checkpoint(None, Stored(tensors, fmt), source, path, folder)
    if fmt == "nanogpt":
        found.config, found.origin = nanogpt.config(raw["model_args"])
    elif fmt == "llms_from_scratch":
        found.config, found.origin = llms_from_scratch.config(tensors)
    elif config is None and (folder / "config.json").is_file():
        found.config = GPT2Config.from_json(folder / "config.json")
        found.origin = {name: "config.json" for name in found.config.to_dict()}
    elif config is None:
        found.config, found.origin = huggingface.infer_config(tensors)
    return _finish(found, config)


def _read_tf(prefix: Path, config, source: str) -> Checkpoint:
    tensors = tensor_bundle.read(prefix)
    found = Checkpoint(None, Stored(tensors, "openai_tf"), source, prefix.parent, prefix.parent)
    found.config, found.origin = openai_tf.config(prefix.parent)
    return _finish(found, config)


def _finish(found: Checkpoint, config) -> Checkpoint:
    """`config=` wins; otherwise a value that was only assumed is said out loud, as a warning."""
    if config is not None:
        found.config = _as_config(config)
        found.origin = {name: "config=" for name in found.config.to_dict()}
    assumed = [name for name, where in found.origin.items() if where.startswith("assumed")]
    if assumed:
        where = found.path.name if found.path else "this state dict"
        warnings.warn(AssumedConfigWarning(
            f"no config.json for {where}: assumed n_head={found.config.n_head} (GPT-2's heads are 64 wide) "
            "and the rest from the tensor shapes; pass config= (or --config) if that is wrong"), stacklevel=3)
    return found


def _detect(raw, where: str) -> tuple[str, dict]:
    """The format of a loaded file or state dict, from its structure and keys."""
    if nanogpt.matches_file(raw):
        return "nanogpt", nanogpt.unwrap(raw)
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where} holds a {type(raw).__name__}, not a state dict of tensors")
    keys = set(raw)
    for fmt in ("llms_from_scratch", "openai_tf", "huggingface"):
        if FORMATS[fmt].matches(keys):
            return fmt, dict(raw)
    shown = names(sorted(map(str, keys)), 4) or "nothing"
    raise CheckpointError(f"{where} is not a GPT-2 checkpoint max-gpt2 reads (it holds {shown}); "
                          f"it reads: {formats_we_read()}")


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", *TORCH_FILES))
    if len(found) == 1:
        return folder / found[0]
    raise CheckpointError(
        f"no weights in {folder}: expected model.safetensors or pytorch_model.bin"
        + (f" (found {', '.join(found)}: name one)" if found else f"; max-gpt2 reads: {formats_we_read()}")
    )


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None and not text.endswith(
        (".safetensors", ".bin", ".json", *TORCH_FILES)
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
    except Exception as e:
        if _unreachable(e):
            raise CheckpointError(
                f"{repo_id!r} is not in the Hugging Face cache and cannot be downloaded "
                f"({'HF_HUB_OFFLINE is set' if _offline() else 'the Hub is unreachable'}); "
                "download it once with network access, or give a local checkpoint path"
            ) from None
        if isinstance(e, OSError):  # the disk, not the network: a full disk, a cache folder we may not write
            where = f" ({e.filename})" if e.filename else ""
            raise CheckpointError(f"could not download {repo_id!r} into the Hugging Face cache: "
                                  f"{e.strerror or _first_line(e)}{where}; check HF_HOME's disk") from None
        raise


def _unreachable(e: BaseException) -> bool:
    """A failure to reach the Hub (no network, offline mode), as huggingface_hub and its HTTP client say it."""
    kind = type(e)
    if kind.__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return True
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return kind.__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3") and any(
        w in kind.__name__ for w in ("Connect", "Timeout", "Network", "Proxy"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Reads every tensor of a .safetensors file (or sharded index) or a pickled state dict."""
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
    return {k: to_numpy(v) for k, v in _detect(_load_torch(path), str(path))[1].items()}


# safetensors' dtypes that numpy reads (bfloat16 by ml_dtypes' dtype); a file with another is
# read by safetensors itself
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    header = _safetensors_header(path)
    dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    try:
        if header and dtypes <= NUMPY_DTYPES.keys():
            with safe_open(str(path), framework="numpy"):  # safetensors checks the header fits the file
                pass
            return _map_safetensors(path, header)
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_first_line(e)}); "
            "it may be truncated: download it again"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def _map_safetensors(path: Path, header: dict) -> dict[str, np.ndarray]:
    """Every tensor as a view of the file mapped copy-on-write: nothing is read before it is
    used, a tensor used as stored (wte, the biases) is never copied, and a write to one stays
    in this process. The mapping lives as long as a view of it does, and stays valid when the
    file is replaced (a new file renamed over it, as huggingface_hub and `convert` write);
    only a file rewritten in place under a running model would change it."""
    import mmap

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + int.from_bytes(mapped[:8], "little")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        code = NUMPY_DTYPES[entry["dtype"]]
        dtype, shape = precision.bfloat16() if code == "bfloat16" else np.dtype(code), tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        view = np.frombuffer(mapped, dtype, (end - begin) // dtype.itemsize, start + begin).reshape(shape)
        # The format does not promise alignment; a misaligned tensor is copied rather than
        # handed to kernels that may load it as aligned.
        tensors[name] = view if (start + begin) % dtype.alignment == 0 else view.copy()
    return tensors


def _give_back(array: np.ndarray) -> None:
    """Lets the kernel drop the pages of a tensor read from a mapped file once it has been
    transformed into another array (transposed): they would otherwise stay resident beside the
    copy until the checkpoint is freed. Reading it again reads the file. Only the pages wholly
    inside the tensor are dropped, so a neighbour is never touched; an array not read from a
    mapped file is left alone."""
    import mmap

    owner = array
    while owner is not None and not isinstance(owner, mmap.mmap):
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    if owner is None or owner.closed or array.nbytes == 0 or not hasattr(owner, "madvise"):
        return
    first = array.ctypes.data - np.frombuffer(owner, np.uint8, 1).ctypes.data
    begin = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (first + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > begin:
        owner.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def _safetensors_header(path: Path) -> dict:
    """A safetensors file's header (8 bytes of length, then JSON); empty if unreadable, so that
    safetensors itself says what is wrong."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100_000_000:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def _load_torch(path: Path):
    torch = _torch(path)
    import pickle

    try:
        # weights_only=True: the unpickler accepts tensors and plain containers and refuses any
        # other object, so a malicious file cannot run code here.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors, which could run "
            f"code ({_first_line(e).removeprefix('Weights only load failed. ')[:160]}); "
            "use a .safetensors checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from None


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
        if value.dtype == torch.bfloat16:  # kept as it is: numpy has it by ml_dtypes, not torch's .numpy()
            return np.ascontiguousarray(value.view(torch.int16).numpy()).view(precision.bfloat16())
        return np.ascontiguousarray(value.numpy())
    return np.ascontiguousarray(np.asarray(value))


def _as_config(config) -> GPT2Config:
    if isinstance(config, GPT2Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return GPT2Config.from_json(config)
    if isinstance(config, Mapping):
        return GPT2Config.from_dict(dict(config))
    if hasattr(config, "to_dict"):  # a transformers GPT2Config
        return GPT2Config.from_dict(config.to_dict())
    raise CheckpointError(f"config= must be a GPT2Config, a dict or a config.json path, not {type(config).__name__}")


def infer_config(tensors: Mapping[str, np.ndarray]) -> GPT2Config:
    """A config from a Hugging Face state dict's shapes alone; heads are assumed 64 wide."""
    return huggingface.infer_config(tensors)[0]


# --- 2. adapt ---------------------------------------------------------------------------------


def plan(tensors: Mapping[str, np.ndarray], config: GPT2Config, format: str | None = None) -> list[Move]:
    """The format's mapping from stored tensors to ours, one `Move` each (for `inspect` and `adapt`)."""
    format = format or getattr(tensors, "format", None) or _detect(tensors, "the state dict")[0]
    return FORMATS[format].plan(tensors, config)


def adapt(tensors: Mapping[str, np.ndarray], config: GPT2Config, format: str | None = None,
          dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Checkpoint tensors -> our parameter names and orientation, float32 and contiguous.

    `dtypes` names the parameters held narrower ("bfloat16", or "int8", which adds each one's
    row scales; see max_gpt2/precision.py), converted one by one as they are made.
    The format is `tensors.format` when `resolve` made them, else told by their keys."""
    format = format or getattr(tensors, "format", None) or _detect(tensors, "the state dict")[0]
    module = FORMATS[format]
    convert = None
    if dtypes:
        convert = lambda name, value: precision.convert(name, value, dtypes.get(name, "float32"))  # noqa: E731
    return apply(module.plan(tensors, config), tensors, module.NAME, copied=_give_back, convert=convert)


# --- 3. check ---------------------------------------------------------------------------------


def check(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], config: GPT2Config, source: str) -> None:
    """Every expected parameter present with its shape, nothing left over; else one clear error."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {names(missing)}")
        if unexpected:
            parts.append(f"unexpected {names(unexpected)}")
        hint = ""
        if "lm_head.weight" in missing:
            hint = " (config says tie_word_embeddings=false, so the checkpoint must carry lm_head.weight)"
        elif any(re.match(r"transformer\.h\.(\d+)\.", k) for k in unexpected + missing):
            hint = f" (config says n_layer={config.n_layer}; does config.json belong to these weights?)"
        raise CheckpointError(f"{source} does not fit GPT-2: {'; '.join(parts)}{hint}")
    for name, shape in expected.items():
        got, want = tuple(state[name].shape), tuple(shape)
        if got != want:
            if name.endswith(conv1d_weights()):  # speak of the checkpoint's own orientation
                got, want = got[::-1], want[::-1]
            raise CheckpointError(
                f"{source}: {name.removeprefix(PREFIX)} is {list(got)} but the model expects "
                f"{list(want)}: {_cause(name, got, want, config)}"
            )


def _cause(name: str, got: tuple, want: tuple, config: GPT2Config) -> str:
    short = name.removeprefix(PREFIX)
    if name.endswith(conv1d_weights()) and got == want[::-1]:
        return "it is stored [out, in], but GPT-2 checkpoints store Conv1D weights [in, out] (was it transposed already?)"
    if short == "wte.weight":
        return f"config says vocab_size={config.vocab_size}, n_embd={config.n_embd} but wte is {list(got)}"
    if short == "wpe.weight":
        return f"config says n_positions={config.n_positions}, n_embd={config.n_embd} but wpe is {list(got)}"
    if "mlp.c_fc" in name:
        return f"config says n_embd={config.n_embd}, n_inner={config.inner_dim}; does config.json belong to these weights?"
    return f"config says n_embd={config.n_embd}; does config.json belong to these weights?"
