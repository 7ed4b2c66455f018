"""The CPU engines people choose GPT-2 with, as bench engines: CTranslate2 and ONNX Runtime.

Each is converted from the same checkpoint by its own tool, at float32, and run through its own
API, as a user would. They need the `bench-peers` extra (`pip install 'max-gpt2[bench-peers]'`);
without it bench skips them and says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from max_gpt2.bench.engines import Engine, TorchEager, timed


class CTranslate2(Engine):
    """CTranslate2's Generator on a model converted by its Transformers converter (float32)."""

    def __init__(self, path: str, scratch: Path) -> None:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        reference = TorchEager(path, scratch).model  # the checkpoint as transformers reads it

        class Converter(TransformersConverter):
            # The converter reads a folder with transformers; the model is already read (a bare
            # file has no folder), and token ids stand for tokens: bench works in ids, and a
            # checkpoint need not have tokenizer files.
            def load_model(self, *_, **__):
                return reference

            def load_tokenizer(self, *_, **__):
                return _IdTokens(reference.config.vocab_size)

        folder = scratch / "ctranslate2-fp32"
        reference.config.save_pretrained(scratch / "ctranslate2-source")  # all the converter reads from disk
        Converter(str(scratch / "ctranslate2-source")).convert(str(folder), force=True)
        self.generator = ctranslate2.Generator(str(folder), device="cpu", compute_type="float32",
                                               intra_threads=os.cpu_count() or 1)

    def compile(self) -> None:
        return None

    def prefill(self, ids: np.ndarray) -> None:
        self._generate(ids, 1)

    def generate(self, ids: np.ndarray, n: int):
        stamps: list[float] = []
        results = self._generate(ids, n, stamps)
        return [r.sequences_ids[0] for r in results], stamps

    def _generate(self, ids: np.ndarray, n: int, stamps: list | None = None):
        def step(s) -> bool:  # called for each row's token at each step
            if stamps is not None and s.batch_id == 0:
                stamps.append(time.perf_counter())
            return False

        # end_token=[]: no token ends a row (transformers' reference does not stop at EOS either).
        return self.generator.generate_batch([[str(t) for t in row] for row in ids.tolist()], max_length=n,
                                             include_prompt_in_result=False, end_token=[], sampling_topk=1,
                                             callback=step)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return np.array(self.generator.forward_batch(ids.tolist()))[0]


class _IdTokens:
    """A vocabulary whose tokens are the ids written out, for the converter."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.bos_token = self.eos_token = self.unk_token = str(size - 1)  # GPT-2's <|endoftext|>

    def get_vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.size)}


class OnnxRuntime(Engine):
    """ONNX Runtime on a decoder-with-past exported by torch.onnx from transformers' model
    (float32): a step takes new tokens and the cache, returns the last position's logits and the
    grown cache; the loop is the same for the prompt and each new token."""

    def __init__(self, path: str, scratch: Path) -> None:
        import onnxruntime

        reference = TorchEager(path, scratch).model
        c = reference.config
        self.layers, self.heads, self.head_dim = c.n_layer, c.n_head, c.n_embd // c.n_head
        self.past_names = [f"past_{kv}.{i}" for i in range(c.n_layer) for kv in ("key", "value")]
        file = scratch / "onnxruntime-fp32" / "decoder_with_past.onnx"
        file.parent.mkdir(exist_ok=True)
        _export(reference, file, self.past_names)
        self.session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])

    def compile(self) -> None:
        return None

    def _run(self, ids: np.ndarray, past: list[np.ndarray]):
        length = ids.shape[1] + past[0].shape[2]
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((len(ids), length), np.int64),
                **dict(zip(self.past_names, past))}
        logits, *present = self.session.run(None, feed)
        return logits, present

    def _empty(self, b: int) -> list[np.ndarray]:
        return [np.zeros((b, self.heads, 0, self.head_dim), np.float32)] * (2 * self.layers)

    def prefill(self, ids: np.ndarray) -> None:
        self._run(ids, self._empty(len(ids)))

    def generate(self, ids: np.ndarray, n: int):
        return timed(self._tokens(ids, n))

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        past = self._empty(len(ids))
        for i in range(n):
            logits, past = self._run(ids, past)
            ids = logits.argmax(axis=-1)[:, None]
            yield ids[:, 0]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Teacher-forced through the decode path: one position at a time, with the cache."""
        past, rows = self._empty(1), []
        for t in range(ids.shape[1]):
            logits, past = self._run(ids[:, t:t + 1], past)
            rows.append(logits[0])
        return np.stack(rows)


def _export(model, file: Path, past_names: list[str]) -> None:
    """transformers' GPT-2 as an ONNX decoder with past: (input_ids, attention_mask, past...) ->
    (the last position's logits, present...)."""
    import warnings

    import torch
    from transformers import DynamicCache

    class DecoderWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache(config=model.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits[:, -1], *present)

    c = model.config
    b, t, p, head_dim = 2, 3, 2, c.n_embd // c.n_head  # sample shapes; every axis below is dynamic
    present_names = [n.replace("past_", "present_") for n in past_names]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch"},
            **{n: {0: "batch", 2: "past"} for n in past_names}, **{n: {0: "batch", 2: "total"} for n in present_names}}
    sample = (torch.zeros(b, t, dtype=torch.long), torch.ones(b, p + t, dtype=torch.long),
              *[torch.zeros(b, c.n_head, p, head_dim) for _ in past_names])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow in transformers
        torch.onnx.export(DecoderWithPast().eval(), sample, str(file), input_names=["input_ids", "attention_mask",
                          *past_names], output_names=["logits", *present_names], dynamic_axes=axes, dynamo=False,
                          opset_version=17)


PEER_CLASSES = {"ctranslate2-fp32": CTranslate2, "onnxruntime-fp32": OnnxRuntime}
