"""Checkpoints the tests make with transformers, in the Hub's file layouts, shared per session.

Compiling is the slow part (a minute or more per new graph shape on a CPU, seconds once MAX has
cached it), so the suite uses few shapes: ODD for almost everything (head size 16, n_inner set,
eps 1e-6: nothing at GPT-2's defaults), UNTIED for an extended vocabulary with its own head,
and the real 124M shape once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from max_gpt2.config import GPT2Config
from max_gpt2.reference import ODD, UNTIED

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hub


class Made:
    """A checkpoint on disk and the transformers model whose weights it holds."""

    def __init__(self, path: Path, reference, config: GPT2Config) -> None:
        self.path, self.reference, self.config = path, reference, config
        self._model = None

    @property
    def model(self):
        """Our GPT2 for this checkpoint, loaded once per session (its graphs compile on first use)."""
        if self._model is None:
            from max_gpt2 import GPT2

            self._model = GPT2.from_pretrained(self.path)
        return self._model


def _make(tmp_path_factory, name: str, config: GPT2Config, layout: str, seed: int) -> Made:
    from max_gpt2.reference import make_checkpoint

    path = tmp_path_factory.mktemp(name)
    return Made(path, make_checkpoint(path, config, layout, seed=seed), config)


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> Made:
    """openai-community/gpt2's layout: no `transformer.` prefix, attn.bias buffers, no lm_head."""
    return _make(tmp_path_factory, "hub", ODD, "hub", seed=0)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Made:
    """What save_pretrained writes: `transformer.`-prefixed safetensors."""
    return _make(tmp_path_factory, "pretrained", ODD, "save_pretrained", seed=1)


@pytest.fixture(scope="session")
def pickled(tmp_path_factory) -> Made:
    """A pytorch_model.bin state dict."""
    return _make(tmp_path_factory, "bin", ODD, "bin", seed=2)


@pytest.fixture(scope="session")
def untied(tmp_path_factory) -> Made:
    """An extended vocabulary (50260) with its own lm_head."""
    return _make(tmp_path_factory, "untied", UNTIED, "save_pretrained", seed=3)


@pytest.fixture
def edited_hub(hub, tmp_path):
    """A copy of the hub checkpoint with its tensors changed by `edit(dict)`."""

    def make(edit, name="edited"):
        import shutil

        from safetensors.numpy import load_file, save_file

        folder = tmp_path / name
        folder.mkdir()
        raw = dict(load_file(str(hub.path / "model.safetensors")))
        edit(raw)
        for f in ("config.json", "vocab.json", "merges.txt"):
            shutil.copy(hub.path / f, folder / f)
        save_file(raw, str(folder / "model.safetensors"))
        return folder

    return make
