"""The CPU engines people choose GPT-2 with, as bench engines: CTranslate2, ONNX Runtime and
llama.cpp.

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

    compute_type = "float32"

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

        folder = scratch / "ctranslate2"
        reference.config.save_pretrained(scratch / "ctranslate2-source")  # all the converter reads from disk
        Converter(str(scratch / "ctranslate2-source")).convert(str(folder), force=True)
        self.generator = ctranslate2.Generator(str(folder), device="cpu", compute_type=self.compute_type,
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


class CTranslate2Int8(CTranslate2):
    """The same converted model, its weights quantized to int8 as CTranslate2 loads it
    (compute_type "int8": int8 matrix products, the rest float32)."""

    compute_type = "int8"


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


class LlamaCpp(Engine):
    """llama.cpp through llama-cpp-python's bindings of its C API, on a float32 GGUF file written
    as llama.cpp's converter writes GPT-2 (`_write_gguf`). The batch runs as llama.cpp batches
    sequences: one llama_decode over every row's token, each row its own sequence in the cache."""

    q8_0 = False

    def __init__(self, path: str, scratch: Path) -> None:
        import llama_cpp
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's errors only, as Llama(verbose=False) gives
        reference = TorchEager(path, scratch).model
        c = reference.config
        self.vocab, self.n_positions = c.vocab_size, c.n_positions
        file = scratch / "llama.cpp" / ("gpt2-q8_0.gguf" if self.q8_0 else "gpt2-f32.gguf")
        file.parent.mkdir(exist_ok=True)
        _write_gguf(reference, Path(path), file, self.q8_0)
        del reference
        self.lib = lib = llama_cpp
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(file).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {file}")
        self.batch_size = c.n_positions  # entries per llama_decode
        self.batch = lib.llama_batch_init(self.batch_size, 0, 1)
        self.context, self.rows = None, 0
        # Sized as a user sizes llama-server for bench's work: 8 sequences (bench's batch unless
        # told otherwise) sharing one cache of n_positions, which holds all of bench's workloads.
        self._hold(8, c.n_positions)

    def _hold(self, rows: int, positions: int) -> None:
        """A context for `rows` sequences sharing a cache of `positions`."""
        lib = self.lib
        if self.context:
            lib.llama_free(self.context)
        settings = lib.llama_context_default_params()
        settings.n_ctx, settings.n_seq_max = positions, rows
        settings.n_batch = settings.n_ubatch = self.batch_size
        settings.kv_unified = True  # one cache shared by the sequences, as llama-server runs them
        settings.n_threads = settings.n_threads_batch = os.cpu_count() or 1
        self.context = lib.llama_init_from_model(self.model, settings)
        if not self.context:
            raise RuntimeError(f"llama.cpp could not make a context of {rows} sequences, {positions} positions")
        self.rows, self.n_ctx = rows, positions

    def compile(self) -> None:
        return None

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """(token, position, sequence, wants logits) entries through llama_decode, as many per
        call as a llama.cpp batch holds; the logits of the entries that want them, in order."""
        lib, b, out = self.lib, self.batch, []
        for start in range(0, len(entries), self.batch_size):
            chunk = entries[start:start + self.batch_size]
            for i, (token, position, sequence, logits) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, position, 1, logits
                b.seq_id[i][0] = sequence
            b.n_tokens = len(chunk)
            status = lib.llama_decode(self.context, b)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status} (1: its cache of {self.n_ctx} positions is full)")
            for i, entry in enumerate(chunk):
                if entry[3]:
                    pointer = lib.llama_get_logits_ith(self.context, i)
                    out.append(np.ctypeslib.as_array(pointer, shape=(self.vocab,)).copy())
        return np.stack(out)

    def _prompts(self, ids: np.ndarray) -> np.ndarray:
        """Every row's prompt into the cache as a sequence of its own, together as llama-server
        takes its slots' prompts; the next token's logits per row."""
        if len(ids) > self.rows:  # a --batch over 8: room for every row's whole context
            self._hold(len(ids), len(ids) * self.n_positions)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.context), True)
        n = ids.shape[1]
        return self._decode([(t, p, s, p == n - 1) for s, row in enumerate(ids.tolist()) for p, t in enumerate(row)])

    def prefill(self, ids: np.ndarray) -> None:
        self._prompts(ids)

    def generate(self, ids: np.ndarray, n: int):
        return timed(self._tokens(ids, n))

    def _tokens(self, ids: np.ndarray, n: int) -> Iterator[np.ndarray]:
        logits = self._prompts(ids)
        length = ids.shape[1]
        for i in range(n):
            nxt = logits.argmax(axis=-1)
            yield nxt
            if i < n - 1:
                logits = self._decode([(int(t), length, s, True) for s, t in enumerate(nxt)])
                length += 1

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Teacher-forced: every position of one sequence, from the prompt's pass."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.context), True)
        return self._decode([(t, p, 0, True) for p, t in enumerate(ids[0].tolist())])


class LlamaCppQ8(LlamaCpp):
    """The same, on the GGUF file in q8_0, llama.cpp's 8-bit format (--outtype q8_0)."""

    q8_0 = True


def _write_gguf(model, source: Path, file: Path, q8_0: bool = False) -> None:
    """transformers' GPT-2 as a GGUF file, float32 or `q8_0`, written with gguf-py (llama.cpp's
    own library) the way llama.cpp's convert_hf_to_gguf.py writes GPT2LMHeadModel with
    --outtype f32 or q8_0: its hyperparameters, its tensor names (gguf's GPT-2 name map), Conv1D
    weights transposed to [out, in], the attention mask buffers left out, the tied head left to
    llama.cpp (which reuses the token embedding); in q8_0 every matrix but the position table
    quantized in blocks of 32 with a float16 scale each, the vectors kept float32.
    The converter itself ships only in llama.cpp's source tree, not in any package, and reads a
    folder with tokenizer files; bench runs bare checkpoints and token ids too."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(file), "gpt2")
    w.add_block_count(c.n_layer)
    w.add_context_length(c.n_positions)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8_0 else gguf.LlamaFileType.ALL_F32)
    if q8_0:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, merges = _vocabulary(source, c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    eos = c.eos_token_id if c.eos_token_id is not None else c.vocab_size - 1
    # <|endoftext|> is the one special token, a CONTROL token as the converter marks added ones.
    w.add_token_types([gguf.TokenType.CONTROL if i == eos else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(c.bos_token_id if c.bos_token_id is not None else eos)
    w.add_eos_token_id(eos)
    if c.pad_token_id is not None:
        w.add_pad_token_id(c.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, c.n_layer)
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        array = tensor.detach().float().numpy()
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            array = array.T
        name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        array = np.ascontiguousarray(array)
        if q8_0 and array.ndim == 2 and name != "position_embd.weight":
            kind = gguf.GGMLQuantizationType.Q8_0
            try:
                data = gguf.quants.quantize(array, kind)
            except gguf.QuantError:  # rows not a whole number of blocks: float16, as the converter falls back
                kind = gguf.GGMLQuantizationType.F16
                data = gguf.quants.quantize(array, kind)
            w.add_tensor(name, data, raw_dtype=kind)
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _vocabulary(source: Path, size: int) -> tuple[list[str], list[str]]:
    """The checkpoint's BPE tokens by id and its merges, as the converter reads them; a checkpoint
    without tokenizer files (bench works in token ids) gets GPT-2's byte alphabet for the first
    256 ids, which llama.cpp's loader needs, placeholders after, and a single merge."""
    import json

    folder = source if source.is_dir() else source.parent
    from max_gpt2.tokenizer import BPE_FILES

    for vocab, merges in BPE_FILES:
        if (folder / vocab).is_file() and (folder / merges).is_file():
            ids = json.loads((folder / vocab).read_text(encoding="utf-8"))
            tokens = [f"[PAD{i}]" for i in range(size)]
            for token, i in ids.items():
                if i < size:
                    tokens[i] = token
            lines = (folder / merges).read_text(encoding="utf-8").splitlines()
            return tokens, [m for m in lines if m and not m.startswith("#version")]
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # llama.cpp refuses a BPE vocabulary without merges; one (of two byte tokens) satisfies it.
    return alphabet + [f"[ID{i}]" for i in range(len(alphabet), size)], [f"{alphabet[0]} {alphabet[1]}"]


PEER_CLASSES = {"ctranslate2-fp32": CTranslate2, "onnxruntime-fp32": OnnxRuntime, "llama.cpp-f32": LlamaCpp,
                "ctranslate2-int8": CTranslate2Int8, "llama.cpp-q8_0": LlamaCppQ8}
