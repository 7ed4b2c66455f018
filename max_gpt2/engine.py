"""`GPT2`: a checkpoint loaded into compiled MAX graphs, with logits and the token loop.

Three graphs, each compiled once, on first use (or by `compile()`), with symbolic dimensions so
that no batch size or length ever recompiles:
- logits: input_ids ("batch", "seqlen") -> logits for every position (`GPT2LMHeadModel`);
- prefill: a prompt's tokens plus an empty cache -> the next token's logits and the keys and
  values to cache (`model.GPT2Prefill`; with float32 weights on a CPU `decode.GPT2KernelPrefill`,
  whose projections take our kernels for a short prompt);
- decode: one new token per row against the cache -> the next logits and that token's keys and
  values (`decode.GPT2Decode`; on a CPU it runs our Mojo kernels and reads the cache in place).
The text API (generate, complete, stream) comes from `text.TextAPI`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from max_gpt2 import weights as ckpt
from max_gpt2.cache import CachePool, KVCache, prompt_inputs
from max_gpt2.config import GPT2Config
from max_gpt2.errors import GenerationError, GPT2Error, PrecisionError, TokenizerError
from max_gpt2.precision import Precision, convert, for_max, is_scale
from max_gpt2.progress import Waiting
from max_gpt2.sampling import Sampling, check_max_new_tokens
from max_gpt2.text import TextAPI
from max_gpt2.tokenizer import GPT2Tokenizer

GRAPHS = ("logits", "prefill", "decode")


class GPT2(TextAPI):
    def __init__(
        self,
        config: GPT2Config,
        state: dict[str, np.ndarray],
        *,
        tokenizer: GPT2Tokenizer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        quantize: str | None = None,
        decode_kernels: bool | None = None,
        source: str = "",
        path=None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """`dtype` and `quantize`: how the weights are held (max_gpt2/precision.py); a float32
        `state` is converted. `decode_kernels`: run decode steps, the projections of a float32
        prefill, and the attention of every prompt and sequence, with our Mojo kernels (default:
        on a CPU, where they are faster; an accelerator runs MAX's ops)."""
        self.config = config
        self.path = path  # the checkpoint's local folder or file, None for an in-memory one
        self.precision = Precision(dtype, quantize)
        self.state = narrow_state(state, config, self.precision)
        self.tokenizer = tokenizer
        self.source = source
        self.progress = progress
        self.device = _device(device)
        on_cpu = self.device.is_host
        self.decode_kernels = on_cpu if decode_kernels is None else bool(decode_kernels)
        # A finished generation's cache memory, lent to the next (on a CPU, where the graph reads
        # the cache in place; an accelerator is sent a copy each step anyway).
        self.cache_pool = CachePool() if on_cpu else None
        self._graphs: dict[str, object] = {}
        self._compiling = threading.Lock()  # two threads' first calls compile a graph once

    @classmethod
    def from_pretrained(
        cls,
        source,
        *,
        config: GPT2Config | dict | None = None,
        tokenizer: str | GPT2Tokenizer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        quantize: str | None = None,
        decode_kernels: bool | None = None,
        revision: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GPT2:
        """Loads a GPT-2 checkpoint: a Hub id ("gpt2", "openai-community/gpt2-medium"), a folder
        or file in any format `max_gpt2.weights` reads (Hugging Face safetensors or
        pytorch_model.bin, OpenAI's TensorFlow release, an LLMs-from-scratch .pth, nanoGPT's
        ckpt.pt), or a transformers state dict (with config=). `config=` (a GPT2Config, a dict or
        a config.json path) overrides what the checkpoint says or what would be inferred.

        The tokenizer comes from the checkpoint's folder when it has one; `tokenizer=` names
        another folder (or passes a GPT2Tokenizer).

        `dtype="bfloat16"` holds the weights in bfloat16, `quantize="int8"` the projections and
        the head in int8 with a float32 scale per output row (max_gpt2/precision.py); either is
        converted as the checkpoint loads (a bfloat16 file is read as stored), and activations
        and sums stay float32. The default, float32, computes exactly what transformers does.
        """
        precision = Precision(dtype, quantize)  # a bad choice is refused before anything loads
        found = ckpt.resolve(source, config, revision)
        dtypes = {k: d for k, d in parameter_dtypes(found.config, precision).items() if d != "float32"}
        state = ckpt.adapt(found.tensors, found.config, found.format, dtypes=dtypes)
        ckpt.check(state, expected_shapes(found.config, precision), found.config, found.source)
        if isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
            tokenizer = GPT2Tokenizer.from_folder(tokenizer)
        elif tokenizer is None and found.folder is not None:
            try:
                tokenizer = GPT2Tokenizer.from_folder(found.folder)
            except TokenizerError:
                tokenizer = None  # logits need none; text generation says so when asked
        return cls(found.config, state, tokenizer=tokenizer, device=device, dtype=dtype, quantize=quantize,
                   decode_kernels=decode_kernels, source=found.source, path=found.path, progress=progress)

    @property
    def num_parameters(self) -> int:
        """Distinct parameters (an int8 weight's scales are not counted); a tied head shares wte's and
        is counted once, as transformers does."""
        return sum(int(np.prod(a.shape)) for name, a in self.state.items() if not is_scale(name))

    def describe(self) -> str:
        c = self.config
        text = f"{self.num_parameters / 1e6:.0f}M GPT-2 ({c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads)"
        return text if self.precision.exact else f"{text}, {self.precision}"

    # --- compiled graphs ----------------------------------------------------------------------

    def graph(self, name: str):
        """The compiled graph `name` (one of GRAPHS), compiled on first use."""
        if (compiled := self._graphs.get(name)) is not None:
            return compiled
        with self._compiling:
            if name not in self._graphs:
                self._graphs[name] = self._compile(name)
        return self._graphs[name]

    def compile(self, *, logits: bool = True, generation: bool = True) -> GPT2:
        """Compiles now rather than on first use: the logits graph, and the two graphs generation
        needs (prefill and decode)."""
        for name in (["logits"] if logits else []) + (["prefill", "decode"] if generation else []):
            self.graph(name)
        return self

    def _compile(self, name: str):
        import time

        from max_gpt2.decode import GPT2Decode, GPT2KernelAttentionPrefill, GPT2KernelLogits, GPT2KernelPrefill
        from max_gpt2.graphs import compile_module
        from max_gpt2.model import GPT2LMHeadModel, GPT2Prefill

        if self.progress:
            self.progress(Waiting(f"compiling the {name} graph (minutes the first time for a model size, seconds after)"))
        start = time.perf_counter()
        weights, precision = self._weights(), self.precision
        if name == "logits":
            logits = GPT2KernelLogits if self.decode_kernels else GPT2LMHeadModel
            compiled = compile_module(logits, self.config, [self._type(np.int64, "batch", "seqlen")],
                                      weights, device=self.device, precision=precision)
        elif name == "prefill":
            # Narrow weights reach our kernels through their own modules (max_gpt2/narrow.py).
            prefill = GPT2Prefill
            if self.decode_kernels:
                prefill = GPT2KernelPrefill if precision.exact else GPT2KernelAttentionPrefill
            compiled = compile_module(prefill, self.config, self._step_types("seqlen"), weights,
                                      device=self.device, precision=precision)
        elif name == "decode":
            compiled = compile_module(GPT2Decode, self.config, self._step_types(1), weights,
                                      device=self.device, precision=precision, kernels=self.decode_kernels)
        else:
            raise ValueError(f"no graph named {name!r}; graphs are {', '.join(GRAPHS)}")
        if self.progress:
            self.progress(f"compiled the {name} graph in {time.perf_counter() - start:.1f}s")
        return compiled

    def _weights(self) -> dict:
        """The state as MAX takes it (bfloat16 arrays as views of MAX's dtype); the same memory."""
        return {name: for_max(array) for name, array in self.state.items()}

    def _type(self, dtype, *shape):
        from max.dtype import DType
        from max.experimental.tensor import TensorType

        return TensorType(DType.from_numpy(np.dtype(dtype)), shape, device=self.device)

    def _step_types(self, seqlen):
        c = self.config
        cache = (c.n_layer, "batch", c.n_head, "past", c.head_dim)
        return [
            self._type(np.int64, "batch", seqlen),  # new tokens
            self._type(np.int64, "batch", seqlen),  # their positions
            self._type(np.float32, "batch", "total"),  # key mask, past + new
            self._type(np.float32, *cache),  # past keys
            self._type(np.float32, *cache),  # past values
        ]

    def _tensor(self, array: np.ndarray):
        from max.experimental.tensor import Tensor

        return Tensor.from_dlpack(np.ascontiguousarray(array)).to(self.device)

    # --- inference ----------------------------------------------------------------------------

    def logits(self, input_ids) -> np.ndarray:
        """Token ids [batch, seq] (or [seq]) -> float32 logits [batch, seq, vocab]."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or 0 in ids.shape:
            raise GenerationError(f"input_ids must be [batch, seq] with seq >= 1, got shape {list(ids.shape)}")
        if ids.shape[1] > self.config.n_positions:
            raise GenerationError(
                f"{ids.shape[1]} tokens do not fit the model's context of {self.config.n_positions} (n_positions)"
            )
        self._check_vocab(ids)
        return self.graph("logits")(self._tensor(ids)).to_numpy()

    def _check_vocab(self, ids: np.ndarray) -> None:
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {ids.min()}..{ids.max()}")

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        sliding_window: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yields the next token of every prompt, one [batch] array per step; the caller decides
        when a row is finished. Bad arguments raise here, not at the first `next()`.

        Prompts of different lengths share one batch, and each row gets the tokens it would get
        alone (see `cache.prompt_inputs`). As in transformers, a sequence may grow to
        n_positions + 1 tokens: the last new token is read at the last position. There it
        stops, unless `sliding_window`: then it keeps the last half of the context, recomputes
        its cache, and goes on.
        """
        sampling = sampling or Sampling()
        check_max_new_tokens(max_new_tokens)
        max_new_tokens = int(max_new_tokens)
        rows = [list(map(int, p)) for p in prompts]
        if sliding_window:
            rows = [r[-self.config.n_positions:] for r in rows]
        self._check_prompts(rows)
        return self._token_loop(rows, max_new_tokens, sampling.sampler(), sliding_window)

    def _check_prompts(self, rows: list[list[int]]) -> None:
        """Refuses, in one line, prompts no graph can run. `start` checks them; `generate_tokens`
        checks them too, before its first `next()`, because its loop starts only then."""
        if not rows or any(not r for r in rows):
            raise GenerationError("empty prompt: give at least one token")
        n_ctx = self.config.n_positions
        if (longest := max(map(len, rows))) > n_ctx:
            raise GenerationError(
                f"the prompt is {longest} tokens; GPT-2 reads at most {n_ctx}: shorten it, or keep only its "
                "end with a sliding window (sliding_window=True, --sliding-window)"
            )
        self._check_vocab(np.array([t for r in rows for t in r]))

    def _token_loop(self, rows, max_new_tokens: int, sample, sliding_window: bool) -> Iterator[np.ndarray]:
        n_ctx = self.config.n_positions
        history = [list(r) for r in rows]  # every row's tokens so far, for a sliding window
        generation = self.start(rows, max_new_tokens)
        try:
            for step in range(max_new_tokens):
                nxt = sample(generation.logits)
                yield nxt
                for h, t in zip(history, nxt):
                    h.append(int(t))
                if step == max_new_tokens - 1:
                    return
                if generation.cache.length < n_ctx:
                    generation.step(nxt)
                elif sliding_window:  # the token just made has no position left to be read at
                    generation.close()  # its memory may serve the new prefill
                    generation = self.start([h[-(n_ctx // 2):] for h in history], max_new_tokens - step - 1)
                else:
                    return
        finally:  # also when the caller stops early
            generation.close()

    def start(self, rows: list[list[int]], new_tokens: int = 1) -> Generation:
        """Runs prompts (token ids) through the prefill graph: a `Generation` whose `logits` are
        each row's next-token logits, to be continued with `step`."""
        rows = [list(map(int, r)) for r in rows]
        self._check_prompts(rows)
        return Generation(self, rows, new_tokens)


class Generation:
    """One batch being generated: its cache and the latest logits. `close()` lends the cache's
    memory to the model's next generation."""

    def __init__(self, model: GPT2, rows: list[list[int]], new_tokens: int) -> None:
        model.compile(logits=False)  # both generation graphs, before the first token
        self.model = model
        ids, positions, key_mask = prompt_inputs(rows)
        c = model.config
        empty = model._tensor(np.zeros((c.n_layer, len(rows), c.n_head, 0, c.head_dim), np.float32))
        logits, k, v = model.graph("prefill")(model._tensor(ids), model._tensor(positions), model._tensor(key_mask),
                                             empty, empty)
        self.cache = KVCache((c.n_layer, c.n_head, c.head_dim), c.n_positions, key_mask,
                             next_position=(key_mask == 0).sum(axis=1))
        # On a CPU, room for every token still to come but the last (whose keys are never
        # stored), so the cache is never copied to grow. An accelerator is sent the whole cache
        # each step, so there it starts with room for one and grows as it fills.
        room = max(new_tokens - 1, 1) if model.cache_pool is not None else 1
        self.cache.reserve(min(ids.shape[1] + room, c.n_positions), model.cache_pool)
        self.cache.store_prompt(k.to_numpy(), v.to_numpy())
        self.logits = logits.to_numpy()

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feeds one token per row; returns (and keeps) the next logits [batch, vocab]."""
        model, cache = self.model, self.cache
        n_ctx = model.config.n_positions
        if (full := cache.next_position >= n_ctx).any():  # the new token would have no position
            raise GenerationError(
                f"row {int(np.argmax(full))} has used all {n_ctx} of GPT-2's positions: it cannot read another "
                "token (generate_tokens(..., sliding_window=True) goes on from the last half of the context)"
            )
        cache.reserve(cache.length + 1, model.cache_pool)
        if cache.device is None or model.cache_pool is None:  # an accelerator's tensors are copies
            cache.device = (model._tensor(cache.k), model._tensor(cache.v))
        ids = np.asarray(tokens, np.int64)[:, None]
        positions = cache.next_position[:, None].astype(np.int64)
        args = (model._tensor(ids), model._tensor(positions), model._tensor(cache.decode_mask()), *cache.device)
        # execute_raw skips the per-call argument checks: the shapes are ours, made just above.
        logits, k, v = model.graph("decode").execute_raw(*(a.driver_tensor for a in args))
        cache.append(k.to_numpy()[:, :, :, 0], v.to_numpy()[:, :, :, 0])
        self.logits = logits.to_numpy()
        return self.logits

    def close(self) -> None:
        if self.model.cache_pool is not None:
            self.model.cache_pool.give(self.cache)


def expected_shapes(config: GPT2Config, precision: Precision = Precision()) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, read off the module tree (built lazily: no memory);
    with int8 weights, their row scales too."""
    return {name: tuple(int(d) for d in t.shape) for name, t in _parameters(config, precision)}


def parameter_dtypes(config: GPT2Config, precision: Precision) -> dict[str, str]:
    """Every parameter's name and the dtype it is held in ("float32", "bfloat16", "int8")."""
    precision.check(config)
    return {name: t.dtype.name for name, t in _parameters(config, precision)}


def _parameters(config: GPT2Config, precision: Precision):
    from max_gpt2.graphs import building
    from max_gpt2.model import GPT2LMHeadModel
    from max_gpt2.narrow import narrow

    with building():
        return list(narrow(GPT2LMHeadModel(config), precision).parameters)


def narrow_state(state: dict[str, np.ndarray], config: GPT2Config, precision: Precision) -> dict[str, np.ndarray]:
    """`state` with each parameter in the dtype `precision` holds it in. One already so (as
    `from_pretrained` converts them while loading) is kept as it is, and so are an int8
    weight's scales."""
    narrowed = dict(state)
    for name, dtype in parameter_dtypes(config, precision).items():
        array = state.get(name)
        if array is None or is_scale(name) or array.dtype.name == dtype:
            continue
        if array.dtype == np.int8:  # its scales would be left behind
            raise PrecisionError(f"{name} is int8 but {precision} hold it in {dtype}: pass quantize='int8'")
        narrowed.update(convert(name, array, dtype))
    return narrowed


def _device(name: str):
    from max.driver import CPU, Accelerator, accelerator_count

    if name == "cpu":
        return CPU()
    if name in ("gpu", "accelerator"):
        if accelerator_count() == 0:
            raise GPT2Error("device 'gpu' asked for, but MAX finds no accelerator here; use device='cpu'")
        return Accelerator()
    raise GPT2Error(f"unknown device {name!r}; use 'cpu' or 'gpu'")
