"""`GPT2`: a checkpoint loaded into compiled MAX graphs, with logits and generation.

Two graphs, each compiled once, on first use, with symbolic dimensions so that no batch size or
length ever recompiles:
- logits: input_ids ("batch", "seqlen") -> logits for every position;
- step: new tokens plus a key/value cache ("past") -> the next token's logits and the grown
  cache. Generation runs it once over the prompt (prefill, past = 0) and then once per token
  (decode, seqlen = 1). On a CPU the cache stays where it is between steps, shared with the
  graph; an accelerator is sent it again each step.

A new model size takes a minute or more to compile on a CPU. Each compiled graph is then kept
as a file (`_GraphFiles`), so the next process with a checkpoint of a size compiled before loads
it in milliseconds instead of compiling it again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from max_gpt2 import weights as ckpt
from max_gpt2.config import GPT2Config
from max_gpt2.errors import GenerationError, GPT2Error
from max_gpt2.progress import Waiting
from max_gpt2.model import GPT2Decode, GPT2LMHeadModel, GPT2Step
from max_gpt2.sampling import Sampling
from max_gpt2.tokenizer import GPT2Tokenizer, TokenizerError


PAD_BIAS = -1e9  # exp(-1e9 - max) is exactly 0 in float32; at or below the attention kernel's
# HIDDEN (-1e8, kernels/attention.mojo), so the kernel skips those positions without reading them
CACHE_CHUNK = 32  # cache capacity is a multiple of this (or n_positions)
SPARE_LIMIT = 512 * 2**20  # bytes of keys and values a model keeps between generations, at most



@dataclass
class Generated:
    """One row's result: the new tokens, their text, and why it stopped."""

    tokens: list[int]
    text: str
    finish_reason: str  # "eos", "stop", "length" (max_new_tokens), "context" (n_positions)


@dataclass
class Stats:
    """Figures of one streamed generation, filled in as it runs."""

    tokens: int = 0
    first_token_s: float | None = None  # time to first token: tokenizing, prefill, first sample
    elapsed_s: float = 0.0
    finish_reason: str = ""  # as in Generated

    @property
    def tokens_per_s(self) -> float:
        """The decode rate: tokens after the first, over the time after the first."""
        if self.first_token_s is None or self.tokens < 2:
            return 0.0
        return (self.tokens - 1) / max(self.elapsed_s - self.first_token_s, 1e-9)


class GPT2:
    def __init__(
        self,
        config: GPT2Config,
        state: dict[str, np.ndarray],
        *,
        tokenizer: GPT2Tokenizer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        source: str = "",
        path=None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.path = path  # the checkpoint's local folder or file, None for an in-memory one
        self.state = state
        self.tokenizer = tokenizer
        self.source = source
        self.progress = progress
        self._device = _device(device)
        if dtype != "float32":
            raise GPT2Error(f"dtype {dtype!r} is not supported yet; use float32")
        self._logits_graph = None
        self._step_graph = None
        self._decode_graph = None
        self._spare: _Cache | None = None  # a finished generation's cache memory, on a CPU
        self._spare_lock = threading.Lock()  # generations in other threads never take the same

    # --- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        source,
        *,
        config: GPT2Config | dict | None = None,
        tokenizer: str | GPT2Tokenizer | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        revision: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GPT2:
        """Loads a GPT-2 checkpoint: a Hub id ("gpt2", "openai-community/gpt2-medium"), a folder,
        a .safetensors or pytorch_model.bin file, or a transformers state dict (with config=).

        The tokenizer comes from the checkpoint's folder when it has one; `tokenizer=` names
        another folder (or passes a GPT2Tokenizer).
        """
        found = ckpt.resolve(source, config, revision)
        for note in found.notes:
            if progress:
                progress(note)
        state = ckpt.adapt(found.tensors, found.config)
        ckpt.check(state, expected_shapes(found.config), found.config, found.source)
        if isinstance(tokenizer, (str,)) or hasattr(tokenizer, "__fspath__"):
            tokenizer = GPT2Tokenizer.from_folder(tokenizer)
        elif tokenizer is None and found.folder is not None:
            try:
                tokenizer = GPT2Tokenizer.from_folder(found.folder)
            except TokenizerError:
                tokenizer = None  # logits need none; text generation says so when asked
        return cls(found.config, state, tokenizer=tokenizer, device=device, dtype=dtype,
                   source=found.source, path=found.path, progress=progress)

    @property
    def num_parameters(self) -> int:
        """Distinct parameters; a tied head shares wte's and is counted once, as transformers does."""
        return sum(int(np.prod(a.shape)) for a in self.state.values())

    # --- compiled graphs ----------------------------------------------------------------------

    def _compile(self, module_cls, *input_types, **options):
        import max.experimental.functional as F
        from max.dtype import DType
        from max.experimental.tensor import default_device, default_dtype

        label = {GPT2LMHeadModel: "logits", GPT2Step: "prefill", GPT2Decode: "decode"}[module_cls]
        self._say(Waiting(f"compiling the {label} graph (a new model size takes a minute or more)"))
        start = time.perf_counter()
        with F.lazy(), default_device(self._device), default_dtype(DType.float32):
            module = module_cls(self.config, **options)
        compiled = module.compile(*input_types, weights=self.state, session=_graph_files())
        self._say(f"compiled the {label} graph in {time.perf_counter() - start:.1f}s")
        return compiled

    def _types(self):
        from max.dtype import DType
        from max.experimental.tensor import TensorType

        return DType, TensorType

    @property
    def logits_graph(self):
        if self._logits_graph is None:
            DType, TensorType = self._types()
            self._logits_graph = self._compile(
                GPT2LMHeadModel, TensorType(DType.int64, ("batch", "seqlen"), device=self._device)
            )
        return self._logits_graph

    @property
    def step_graph(self):
        """Prefill: a prompt (any number of new tokens per row) into the cache."""
        if self._step_graph is None:
            self._step_graph = self._compile(GPT2Step, *self._step_types("seqlen"))
        return self._step_graph

    @property
    def decode_graph(self):
        """Decode: one new token per row, with matrix-vector kernels (see GPT2Decode)."""
        if self._decode_graph is None:
            # Our matrix-vector kernel is for CPUs; an accelerator keeps MAX's matmul.
            self._decode_graph = self._compile(GPT2Decode, *self._step_types(1), matvec=self._on_cpu)
        return self._decode_graph

    def _step_types(self, seqlen):
        DType, TensorType = self._types()
        c, dev = self.config, self._device
        cache = (c.n_layer, "batch", c.n_head, "past", c.head_dim)
        return (
            TensorType(DType.int64, ("batch", seqlen), device=dev),  # new tokens
            TensorType(DType.int64, ("batch", seqlen), device=dev),  # their positions
            TensorType(DType.float32, ("batch", "total"), device=dev),  # key mask, past + new
            TensorType(DType.float32, cache, device=dev),  # past keys
            TensorType(DType.float32, cache, device=dev),  # past values
        )

    def compile(self) -> GPT2:
        """Compiles every graph now rather than on first use."""
        self.logits_graph, self.step_graph, self.decode_graph  # noqa: B018
        return self

    # --- inference ----------------------------------------------------------------------------

    def logits(self, input_ids) -> np.ndarray:
        """Token ids [batch, seq] (or [seq]) -> float32 logits [batch, seq, vocab]."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        self._check_ids(ids)
        return self.logits_graph(self._tensor(ids)).to_numpy()

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
            raise GenerationError(f"input_ids must be [batch, seq] with seq >= 1, got shape {list(ids.shape)}")
        if ids.shape[1] > self.config.n_positions:
            raise GenerationError(
                f"{ids.shape[1]} tokens do not fit the model's context of {self.config.n_positions} (n_positions)"
            )
        self._check_vocab(ids)

    def _check_vocab(self, ids: np.ndarray) -> None:
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {ids.min()}..{ids.max()}")

    def _tensor(self, array: np.ndarray):
        from max.experimental.tensor import Tensor

        return Tensor.from_dlpack(np.ascontiguousarray(array)).to(self._device)

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        sliding_window: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yields the next token of every prompt, one [batch] array per step.

        Prompts of different lengths share one batch: they are left-padded, the padding is
        masked out of attention, and positions count from each prompt's own start, so each row
        gets the tokens it would get alone. The caller decides when a row is finished.

        At the context limit (n_positions) it stops, unless `sliding_window`: then it keeps the
        last half of the context, recomputes its cache, and goes on.

        On a CPU the model keeps the cache memory of a finished generation for the next one of
        the same batch size (see `_reserve`): one cache, as large as the largest generation at
        the latest batch size, and never more than SPARE_LIMIT bytes (512 MiB).
        """
        sampling = sampling or Sampling()
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        rows = [list(map(int, p)) for p in prompts]
        if not rows or any(not r for r in rows):
            raise GenerationError("empty prompt: give at least one token")
        n_ctx = self.config.n_positions
        if sliding_window:
            rows = [r[-(n_ctx - 1):] for r in rows]
        elif (longest := max(map(len, rows))) >= n_ctx:
            raise GenerationError(
                f"the prompt is {longest} tokens; GPT-2 reads at most {n_ctx} and needs room for "
                "new ones: shorten it (or use a sliding window)"
            )
        self._check_vocab(np.array([t for r in rows for t in r]))
        sample = sampling.sampler()
        history = [list(r) for r in rows]  # every row's tokens so far, for re-prefill
        logits, cache = self._prefill(rows, max_new_tokens)
        try:
            for step in range(max_new_tokens):
                nxt = sample(logits)  # the token at position cache.length, always < n_ctx
                yield nxt
                for h, t in zip(history, nxt):
                    h.append(int(t))
                if step == max_new_tokens - 1:
                    return
                if cache.length + 1 >= n_ctx:  # the token after this one would have no position
                    if not sliding_window:
                        return
                    self._lend(cache)  # the new prefill needs only the tokens: it may reuse this
                    logits, cache = self._prefill([h[-(n_ctx // 2):] for h in history], max_new_tokens - step - 1)
                else:
                    logits, cache = self._decode(nxt, cache)
        finally:  # also when the caller stops early
            self._lend(cache)

    def _prefill(self, rows: list[list[int]], new_tokens: int = 1):
        """Runs the prompts through the prefill graph and keeps their keys and values in a cache.

        On a CPU the cache has room for the keys of every one of the `new_tokens` still to come
        but the last (never stored), so it is never copied to grow. An accelerator is sent the
        whole cache each step, so there it starts with room for one and grows as it fills."""
        self.decode_graph  # noqa: B018  generation needs both graphs: compile both before the first token
        b, width = len(rows), max(map(len, rows))
        ids = np.zeros((b, width), np.int64)
        real = np.zeros((b, width), bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            real[i, width - len(r):] = True
        positions = np.maximum(real.cumsum(axis=1) - 1, 0)
        c = self.config
        empty = self._tensor(np.zeros((c.n_layer, b, c.n_head, 0, c.head_dim), np.float32))
        # Finite, unlike the causal mask: a padding query must still see something, or its row
        # of softmax is NaN and, through 0 * NaN in later layers' values, poisons the real rows.
        key_mask = np.where(real, 0.0, PAD_BIAS).astype(np.float32)
        logits, k, v = self.step_graph(self._tensor(ids), self._tensor(positions), self._tensor(key_mask), empty, empty)
        cache = _Cache(key_mask=key_mask, next_position=real.sum(axis=1))
        room = max(new_tokens - 1, 1) if self._on_cpu else 1
        self._reserve(cache, min(width + room, self.config.n_positions))
        cache.k[:, :, :, :width] = k.to_numpy()
        cache.v[:, :, :, :width] = v.to_numpy()
        return logits.to_numpy(), cache

    def _decode(self, tokens: np.ndarray, cache: _Cache):
        b, p = cache.key_mask.shape
        self._reserve(cache, p + 1)  # room to store this token's keys and values
        capacity = cache.k.shape[3]
        # The cache's unused positions are hidden like padding; the new token is the last column.
        key_mask = np.full((b, capacity + 1), PAD_BIAS, np.float32)
        key_mask[:, :p] = cache.key_mask
        key_mask[:, capacity] = 0.0
        ids = np.asarray(tokens, np.int64)[:, None]
        positions = cache.next_position[:, None].astype(np.int64)
        if not self._on_cpu:  # an accelerator's tensors are copies: send the cache again
            cache.k_tensor, cache.v_tensor = self._tensor(cache.k), self._tensor(cache.v)
        args = (self._tensor(ids), self._tensor(positions), self._tensor(key_mask), cache.k_tensor, cache.v_tensor)
        # execute_raw skips the per-call argument checks: the shapes are ours, made just above.
        logits, k, v = self.decode_graph.execute_raw(*(a.driver_tensor for a in args))
        cache.k[:, :, :, p] = k.to_numpy()[:, :, :, 0]  # stored in place: the graph reads it next step
        cache.v[:, :, :, p] = v.to_numpy()[:, :, :, 0]
        cache.key_mask = np.concatenate([cache.key_mask, np.zeros((b, 1), np.float32)], axis=1)
        cache.next_position = cache.next_position + 1
        return logits.to_numpy(), cache

    def _reserve(self, cache: _Cache, length: int) -> None:
        """Makes room for `length` positions. Generation reserves all it will need once, at
        prefill: growing copies the whole cache into new memory, which took 140 ms at batch 8
        and 33 positions on a 2-core CPU. Unused positions cost nothing to a CPU decode step: they
        are masked, and our attention kernel does not read masked positions (MAX's ops, on an
        accelerator, do)."""
        if cache.k is not None and cache.k.shape[3] >= length:
            return
        c = self.config
        capacity = min(-(-length // CACHE_CHUNK) * CACHE_CHUNK, max(length, c.n_positions))
        shape = (c.n_layer, cache.key_mask.shape[0], c.n_head, capacity, c.head_dim)
        # A new cache on a CPU takes the memory kept from a finished generation (`_lend`) when
        # it is for the same batch size and has room enough. New memory is mapped in as it is
        # first written (in huge pages, which numpy asks for): at batch 8, storing the prefill's
        # 16 positions in a new 47 MB cache took 15 to 160 ms beside the prefill graph's 150 to
        # 230, and with this a 64-token generation took 6% less (median of 6 interleaved pairs).
        # Whatever the old cache left in its memory is masked, and our attention kernel does not
        # read masked positions.
        if cache.k is None and self._on_cpu:
            with self._spare_lock:
                spare = self._spare
                if spare is not None and spare.k.shape[:3] == shape[:3] and spare.k.shape[3] >= capacity:
                    self._spare = None
                    cache.k, cache.v, cache.k_tensor, cache.v_tensor = spare.k, spare.v, spare.k_tensor, spare.v_tensor
                    return
        k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        if cache.k is not None:
            k[:, :, :, :cache.k.shape[3]] = cache.k
            v[:, :, :, :cache.v.shape[3]] = cache.v
        cache.k, cache.v = k, v
        # On a CPU these share the arrays' memory: what is stored in the arrays, the graph reads.
        cache.k_tensor, cache.v_tensor = self._tensor(k), self._tensor(v)

    def _lend(self, cache: _Cache) -> None:
        """Keeps a finished generation's cache memory for the next generation (on a CPU): the
        larger of it and the one kept, for the same batch size; else the latest; none larger
        than SPARE_LIMIT."""
        if not self._on_cpu or cache.k.nbytes + cache.v.nbytes > SPARE_LIMIT:
            return
        with self._spare_lock:
            spare = self._spare
            if spare is None or spare.k.shape[:3] != cache.k.shape[:3] or spare.k.shape[3] <= cache.k.shape[3]:
                self._spare = cache

    @property
    def _on_cpu(self) -> bool:
        from max.driver import CPU

        return isinstance(self._device, CPU)

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 50,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
    ) -> str | list[str]:
        """Continues a prompt (or each of a list of prompts, as one batch) and returns the new text.

        Greedy by default, as in transformers; `do_sample=True` samples with `temperature`,
        `top_k` and `top_p`, reproducibly when `seed` is set. Stops at <|endoftext|>, at any of
        the `stop` strings (which are cut off), or after `max_new_tokens`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        results = self.complete(prompts, max_new_tokens, sampling, stop=stop, sliding_window=sliding_window)
        texts = [r.text for r in results]
        return texts[0] if isinstance(prompt, str) else texts

    def complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
    ) -> list[Generated]:
        """Like `generate`, with the tokens and the reason each row stopped."""
        tok = self._need_tokenizer()
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        encoded = [self._encode(p) for p in prompts]
        rows = [Generated([], "", "length") for _ in prompts]
        done = [False] * len(prompts)
        for nxt in self.generate_tokens(encoded, max_new_tokens, sampling, sliding_window=sliding_window):
            for i, t in enumerate(nxt):
                if done[i]:
                    continue
                if int(t) == tok.eos_token_id:
                    done[i], rows[i].finish_reason = True, "eos"
                    continue
                rows[i].tokens.append(int(t))
                if stops:
                    text = tok.decode(rows[i].tokens)
                    if (cut := _first_stop(text, stops)) is not None:
                        rows[i].text, done[i], rows[i].finish_reason = text[:cut], True, "stop"
            if all(done):
                break
        for i, r in enumerate(rows):
            if r.finish_reason != "stop":
                r.text = tok.decode(r.tokens)
            if not done[i] and len(r.tokens) < max_new_tokens:
                r.finish_reason = "context"
        return rows

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 50,
        sampling: Sampling | None = None,
        *,
        stop: str | Sequence[str] | None = None,
        sliding_window: bool = False,
        stats: Stats | None = None,
    ) -> Iterator[str]:
        """Yields the continuation of one prompt as text pieces, as the tokens arrive.

        A piece never ends inside a multi-byte character. Stop strings are not yielded. Pass a
        `Stats` to have it filled with the token count and timings.
        """
        stats = stats if stats is not None else Stats()
        start = time.perf_counter()
        tok = self._need_tokenizer()
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        hold = max((len(s) for s in stops), default=1) - 1  # text that may still begin a stop string
        text_stream, text, sent = tok.stream(), "", 0
        for nxt in self.generate_tokens([self._encode(prompt)], max_new_tokens, sampling, sliding_window=sliding_window):
            t = int(nxt[0])
            stats.elapsed_s = time.perf_counter() - start
            if stats.first_token_s is None:
                stats.first_token_s = stats.elapsed_s
            if t == tok.eos_token_id:
                stats.finish_reason = "eos"
                break
            stats.tokens += 1
            text += text_stream.push(t)
            if (cut := _first_stop(text, stops)) is not None:
                stats.finish_reason = "stop"
                if cut > sent:
                    yield text[sent:cut]
                return
            if len(text) - hold > sent:
                yield text[sent:len(text) - hold]
                sent = len(text) - hold
        if not stats.finish_reason:
            stats.finish_reason = "length" if stats.tokens == max_new_tokens else "context"
        text += text_stream.flush()
        cut = _first_stop(text, stops)
        if (cut if cut is not None else len(text)) > sent:
            yield text[sent:cut]

    def _need_tokenizer(self) -> GPT2Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.source or 'this checkpoint'} has no tokenizer files (tokenizer.json, or vocab.json "
                "and merges.txt): pass tokenizer= / --tokenizer with a folder that has them"
            )
        return self.tokenizer

    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise GenerationError(f"a prompt must be text, not {type(prompt).__name__}")
        if not prompt:
            raise GenerationError("empty prompt: type some text to continue")
        return self._need_tokenizer().encode(prompt)

    # --- misc ---------------------------------------------------------------------------------

    def describe(self) -> str:
        c = self.config
        return f"{self.num_parameters / 1e6:.0f}M GPT-2 ({c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads)"

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


@dataclass
class _Cache:
    key_mask: np.ndarray  # [batch, cached length]: 0 real, PAD_BIAS padding
    next_position: np.ndarray  # [batch] the position of each row's next token
    k: np.ndarray | None = None  # [layers, batch, heads, capacity >= length, head_dim]
    v: np.ndarray | None = None
    k_tensor: object = None  # the same memory as MAX tensors (copies on an accelerator)
    v_tensor: object = None

    @property
    def length(self) -> int:
        return self.key_mask.shape[1]


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, read off the module tree (built lazily: no memory)."""
    import max.experimental.functional as F

    with F.lazy():
        model = GPT2LMHeadModel(config)
    return {name: tuple(int(d) for d in t.shape) for name, t in model.parameters}


def _device(name: str):
    from max.driver import CPU, Accelerator, accelerator_count

    if name == "cpu":
        return CPU()
    if name in ("gpu", "accelerator"):
        if accelerator_count() == 0:
            raise GPT2Error("device 'gpu' asked for, but MAX finds no accelerator here; use device='cpu'")
        return Accelerator()
    raise GPT2Error(f"unknown device {name!r}; use 'cpu' or 'gpu'")


@functools.cache
def _graph_files():
    from max import driver
    from max.engine import InferenceSession

    class _GraphFiles(InferenceSession):
        """MAX's session, keeping every graph it compiles as a file (a MEF) named by a digest of
        everything the compiled code depends on.

        MAX's own compile cache makes a graph it has seen quicker to compile, not quick: it runs
        the front of the graph compiler before it can look the graph up, 2-4 s a graph for
        GPT-2 on a CPU. A MEF file loads in milliseconds. The digest covers the graph's full
        text (every operation, shape and parameter, and our kernel library's path, which holds
        a digest of the kernels' source), the compile options and MAX's debug settings, MAX's
        version, the CPU and the devices; a graph that differs in any of them names another
        file. Weights are not in the file: they are bound when it loads.
        """

        def compile_reusing_mefs(self, model, **options):
            text = repr(model)
            if "mo.call" in text:  # a subgraph's body is not in the text, so it could not be told apart
                return super().compile_reusing_mefs(model, **options)
            path = _graph_file(model.name, text, self._setting(options))
            if path is not None and path.is_file():
                try:
                    return self.compile(path)
                except Exception:  # noqa: BLE001  unreadable (a MAX upgrade mid-run?): compile anew
                    pass
            compiled = super().compile_reusing_mefs(model, **options)
            if path is not None:
                _keep(compiled, path)
            return compiled

        def _setting(self, options) -> str:
            debug = {k: str(getattr(self.debug, k)) for k in dir(self.debug) if not k.startswith("_")
                     and not callable(getattr(self.debug, k))}
            env = {k: v for k, v in os.environ.items() if k.startswith(("MODULAR_", "MAX_"))
                   and k != "MODULAR_DERIVED_PATH"}  # that one is the folder the file is in
            devices = [f"{d} {'' if d.is_host else d.architecture_name}" for d in self.devices]
            return repr((sorted(options.items()), sorted(debug.items()), sorted(env.items()), devices))

    # The devices of MAX's own session (max.experimental): every one found, and the host CPU.
    specs = driver.scan_available_devices()
    if driver.DeviceSpec.cpu() not in specs:
        specs.append(driver.DeviceSpec.cpu())
    return _GraphFiles(devices=driver.load_devices(specs))


def _graph_file(name: str, text: str, setting: str) -> Path | None:
    """Where a compiled graph is kept; None if MAX has no cache folder."""
    from max import _core

    cache = _core.engine.max_cache_dir()
    if not cache:
        return None
    digest = hashlib.sha256()
    for part in (_core.__version__, _cpu(), setting, text):
        digest.update(part.encode() + b"\0")
    folder = Path(cache).parent / "max-gpt2" / "graphs"
    return folder / f"{''.join(c if c.isalnum() else '_' for c in name)}-{digest.hexdigest()[:32]}.mef"


def _keep(compiled, path: Path) -> None:
    """Writes a compiled graph to its file; a file that cannot be written is only not kept."""
    import tempfile

    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        compiled.export_mef(partial)
        os.replace(partial, path)  # at once: a concurrent process never reads half a file
    except Exception:  # noqa: BLE001  a full or read-only disk: the compiled graph still runs
        if partial is not None:
            Path(partial).unlink(missing_ok=True)


@functools.cache
def _cpu() -> str:
    """The CPU the compiled code is for: its model and instruction-set features from
    /proc/cpuinfo (x86 and Arm name them differently), else what platform says."""
    import platform

    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part", "CPU architecture")
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    found = "\n".join(dict.fromkeys(x for x in lines if x.startswith(keys)))
    return found or f"{platform.machine()} {platform.processor()} {platform.platform()}"
