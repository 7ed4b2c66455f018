"""The engines bench compares, each behind the same calls (compile, prefill, generate, logits),
and the workloads every engine runs through them. The peers (CTranslate2, ONNX Runtime) are in
peers.py, loaded only when asked for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from max_gpt2.bench.arguments import DECODE_PROMPT


def timed(tokens: Iterator[np.ndarray]) -> tuple[list[list[int]], list[float]]:
    """Drains a generator of [batch] token arrays: the tokens [batch][n], and when each step's came."""
    steps, stamps = [], []
    for t in tokens:
        stamps.append(time.perf_counter())
        steps.append([int(x) for x in np.asarray(t).reshape(-1)])
    return [list(row) for row in zip(*steps)], stamps


class Engine:
    """The workloads, the same for every engine. Each engine is made from a checkpoint's path and
    a scratch folder, and supplies compile (seconds, or None), prefill, generate, and logits
    (a batch-1 sequence's logits at every position, for the teacher-forced comparison; not
    max-eager, whose single forward takes minutes).
    An eager engine (no compiled graph) gets one try of each and no warm-up: minutes a forward."""

    compiled_graph = True

    def run(self, task: dict) -> dict:
        """One workload task from the bench: its name, token ids, and the task's own arguments."""
        arguments = {k: v for k, v in task.items() if k not in ("task", "ids")}
        return getattr(self, "task_" + task["task"])(np.array(task["ids"]), **arguments)

    def task_logits(self, ids: np.ndarray, out: str) -> dict:
        """The logits of one sequence, written to `out` (.npy): too many for a line of JSON."""
        np.save(out, np.asarray(self.logits(ids), dtype=np.float32))
        return {}

    def task_prefill(self, ids: np.ndarray) -> dict:
        if self.compiled_graph:
            self.prefill(ids)  # warm-up: first-call allocations, torch.compile's per-shape compile
        times = []
        for _ in range(3 if self.compiled_graph else 1):
            start = time.perf_counter()
            self.prefill(ids)
            times.append(time.perf_counter() - start)
        return {"ms": float(np.median(times)) * 1e3}

    def task_decode(self, ids: np.ndarray, n: int) -> dict:
        if self.compiled_graph:
            self.generate(ids, 2)  # warm-up of the decode path
        start = time.perf_counter()
        tokens, stamps = self.generate(ids, n)
        return {"ttft_ms": (stamps[0] - start) * 1e3, "tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                "tokens": tokens}

    def task_batch(self, ids: np.ndarray, n: int) -> dict:
        if self.compiled_graph:
            self.generate(ids, 2)  # warm-up at this batch size
        start = time.perf_counter()
        tokens, stamps = self.generate(ids, n)
        return {"tokens_per_s": len(ids) * len(stamps) / (stamps[-1] - start), "tokens": tokens}


class MaxKV(Engine):
    """Ours: GPT2.generate_tokens, the compiled step graph with a key/value cache."""

    precision: dict = {}  # from_pretrained's dtype= / quantize=; float32 by default

    def __init__(self, path: str, scratch: Path) -> None:
        from max_gpt2.engine import GPT2

        self.model = GPT2.from_pretrained(path, **self.precision)

    def compile(self) -> float:
        start = time.perf_counter()
        self.model.compile(logits=False)  # prefill and decode
        return time.perf_counter() - start

    def prefill(self, ids: np.ndarray) -> None:
        next(iter(self.model.generate_tokens(ids.tolist(), 1)))

    def generate(self, ids: np.ndarray, n: int):
        return timed(self.model.generate_tokens(ids.tolist(), n))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        # Teacher-forced through the generation path itself (prefill, then one decode step per
        # token), which is what the speed figures measure; the logits graph is not this engine.
        row = ids[0].tolist()
        generation = self.model.start([row[:1]], len(row))
        rows = [generation.logits[0]]
        for t in row[1:]:
            rows.append(generation.step(np.array([t]))[0])
        generation.close()
        return np.stack(rows)


class MaxBFloat16(MaxKV):
    """Ours with the weights in bfloat16 (activations and sums in float32)."""

    precision = {"dtype": "bfloat16"}


class MaxInt8(MaxKV):
    """Ours with the weights in int8, a float32 scale per output row."""

    precision = {"quantize": "int8"}


class MaxRecompute(MaxKV):
    """The tutorial's design: the full-sequence logits graph over the whole sequence, every token."""

    def compile(self) -> float:
        start = time.perf_counter()
        self.model.compile(generation=False)
        return time.perf_counter() - start

    def prefill(self, ids: np.ndarray) -> None:
        self.model.logits(ids)

    def generate(self, ids: np.ndarray, n: int):
        return timed(self._tokens(ids, n))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self.model.logits(ids)[0]

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        for _ in range(n):
            nxt = self.model.logits(ids)[:, -1].argmax(axis=-1)
            yield nxt
            ids = np.concatenate([ids, nxt[:, None]], axis=1)


class MaxEager(Engine):
    """The same MAX modules (GPT2Prefill: the KV-cached forward) called directly, without compiling:
    every operation runs on its own as it is reached."""

    compiled_graph = False

    def __init__(self, path: str, scratch: Path) -> None:
        from max_gpt2.engine import GPT2
        from max_gpt2.graphs import building
        from max_gpt2.model import GPT2Prefill

        loaded = GPT2.from_pretrained(path)
        self.config, self.device = loaded.config, loaded.device
        with building(self.device):  # described, not initialised; the checkpoint's weights go in below
            self.module = GPT2Prefill(self.config)
        self.module.load_state_dict(loaded.state)

    def compile(self) -> None:
        return None

    def _tensor(self, a):
        from max.experimental.tensor import Tensor

        return Tensor.from_dlpack(np.ascontiguousarray(a)).to(self.device)

    def _step(self, ids, start, past_k, past_v):
        b, t = ids.shape
        positions = np.broadcast_to(np.arange(start, start + t), (b, t))
        key_mask = np.zeros((b, start + t), np.float32)
        logits, k, v = self.module(self._tensor(ids), self._tensor(positions), self._tensor(key_mask), past_k, past_v)
        return logits.to_numpy(), k, v

    def prefill(self, ids: np.ndarray) -> None:
        self._step(ids, 0, *self._empty(len(ids)))

    def _empty(self, b):
        c = self.config
        empty = np.zeros((c.n_layer, b, c.n_head, 0, c.head_dim), np.float32)
        return self._tensor(empty), self._tensor(empty)

    def generate(self, ids: np.ndarray, n: int):
        return timed(self._tokens(ids, n))

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        logits, k, v = self._step(ids, 0, *self._empty(len(ids)))
        length = ids.shape[1]
        for i in range(n):
            nxt = logits.argmax(axis=-1)
            yield nxt
            if i < n - 1:
                logits, k, v = self._step(nxt[:, None], length, k, v)
                length += 1


class TorchEager(Engine):
    """transformers' GPT2LMHeadModel: generate (greedy) with its key/value cache."""

    def __init__(self, path: str, scratch: Path) -> None:
        import torch

        from max_gpt2.reference import load_reference
        from max_gpt2.weights import resolve

        p = Path(path)
        if p.is_dir():
            self.model = load_reference(p)
        else:
            found = resolve(p)
            self.model = load_reference(None, found.config, found.tensors)
        self.torch = torch

    def compile(self) -> float | None:
        return None

    def prefill(self, ids: np.ndarray) -> None:
        # As generate's first step does: the prompt through the model, logits of the last position.
        with self.torch.inference_mode():
            self.model(self.torch.from_numpy(ids), use_cache=True, logits_to_keep=1)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(ids)).logits[0].numpy()

    def generate(self, ids: np.ndarray, n: int):
        from transformers import GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        steps, stamps = [], []

        class Collect(BaseStreamer):  # generate hands it the prompt, then each step's tokens
            def put(self, value):
                stamps.append(time.perf_counter())
                steps.append(value.reshape(-1).tolist())

            def end(self):
                pass

        x = self.torch.from_numpy(ids)
        settings = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        with self.torch.inference_mode():
            self.model.generate(x, attention_mask=self.torch.ones_like(x), generation_config=settings,
                                streamer=Collect())
        steps, stamps = steps[1:], stamps[1:]  # not the prompt
        return [list(row) for row in zip(*steps)], stamps

    def task_reference(self, ids: np.ndarray, n: list[int]) -> dict:
        """transformers' greedy tokens for each prompt alone (batch 1, as `reference_greedy`), with
        the gap between the two best logits at every step."""
        from max_gpt2.reference import reference_greedy

        tokens, margins = [], []
        for prompt, new in zip(ids, n):
            gaps: list[float] = []
            tokens.append(reference_greedy(self.model, prompt.tolist(), new, gaps))
            margins.append([float(g) for g in gaps])
        return {"tokens": tokens, "margins": margins}


class TorchCompile(TorchEager):
    """transformers' generate with the model's forward compiled by torch.compile (inductor, C++
    on a CPU). Compile time: the first generation, which compiles the prefill and decode shapes."""

    def compile(self) -> float:
        self.model.forward = self.torch.compile(self.model.forward)
        start = time.perf_counter()
        rng = np.random.default_rng(1)
        self.generate(rng.integers(0, self.model.config.vocab_size, (1, DECODE_PROMPT)), 3)
        return time.perf_counter() - start


ENGINE_CLASSES = {
    "max-compiled-kv": MaxKV,
    "max-gpt2-bf16": MaxBFloat16,
    "max-gpt2-int8": MaxInt8,
    "max-compiled-recompute": MaxRecompute,
    "max-eager": MaxEager,
    "torch-eager": TorchEager,
    "torch-compile": TorchCompile,
}


def engine_class(name: str) -> type[Engine]:
    if name in ENGINE_CLASSES:
        return ENGINE_CLASSES[name]
    from max_gpt2.bench.peers import PEER_CLASSES

    return PEER_CLASSES[name]
