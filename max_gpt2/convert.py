"""`max-gpt2 convert`: any checkpoint we read, written as a Hugging Face folder.

`config.json`, `model.safetensors` in save_pretrained's layout (`transformer.`-prefixed names,
Conv1D weights [in, out], a tied head left out) and the tokenizer files, so that
`transformers.GPT2LMHeadModel.from_pretrained(OUTPUT_DIR)` and every tool of that ecosystem
load it. The folder is written beside its destination and renamed into place: a failure
never leaves half a folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from max_gpt2.checkpoints.huggingface import to_hf
from max_gpt2.errors import CheckpointError
from max_gpt2.weights import adapt, check, resolve

# The tokenizer files a checkpoint's folder may hold, and the names transformers reads them by.
TOKENIZER = (("tokenizer.json", "tokenizer.json"), ("vocab.json", "vocab.json"), ("merges.txt", "merges.txt"),
             ("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt"))


def convert(source, output, *, config=None, tokenizer=None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Path:
    say = progress or (lambda message: None)
    output = Path(output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise CheckpointError(f"{output} exists and is not an empty folder; choose another, or pass --force to replace it")
    found = resolve(source, config)
    state = adapt(found.tensors, found.config, found.format)
    from max_gpt2.engine import expected_shapes  # the model's own parameter list (imports MAX, compiles nothing)

    check(state, expected_shapes(found.config), found.config, found.source)

    from safetensors.numpy import save_file

    temporary = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        config_json = {"architectures": ["GPT2LMHeadModel"], **found.config.to_dict()}
        (temporary / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        save_file(to_hf(state, found.config), str(temporary / "model.safetensors"), metadata={"format": "pt"})
        copied = _tokenizer(Path(tokenizer) if tokenizer else found.folder, temporary)
        _replace(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    say(f"wrote {output}: config.json, model.safetensors" + (f", {', '.join(copied)}" if copied else ""))
    if not copied:
        say("no tokenizer files beside the checkpoint: add vocab.json and merges.txt (or pass --tokenizer)")
    return output


def _tokenizer(folder: Path | None, into: Path) -> list[str]:
    copied = []
    for name, as_name in TOKENIZER:
        if folder is not None and (folder / name).is_file() and not (into / as_name).exists():
            shutil.copyfile(folder / name, into / as_name)
            copied.append(as_name)
    return copied


def _replace(temporary: Path, output: Path) -> None:
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
        temporary.rename(output)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        temporary.rename(output)
