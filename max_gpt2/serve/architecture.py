"""GPT-2 registered with MAX Serve: config, weights, inputs, pipeline model, architecture.

The pieces follow MAX 26.7's own ModuleV3 architectures (max/pipelines/architectures/
llama3_modulev3): the framework owns the batching, the paged cache and its memory, the
tokenizer and the HTTP side; this file says how GPT-2 fits into them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from max import tree
from max.driver import Buffer
from max.dtype import DType
from max.graph import DeviceRef
from max.graph.weights import WeightsFormat
from max.nn.kv_cache import KVCacheInputs, KVCacheParams
from max.pipelines.context import TextContext
from max.pipelines.kv_cache import cache_dtype_for_encoding
from max.pipelines.kv_cache.memory_planner import PagedMemoryPlanner
from max.pipelines.lib import (KVCacheConfig, ModelInputs, ModuleV3PipelineModelWithKVCache, PipelineConfig,
                               SupportedArchitecture, TextTokenizer)
from max.pipelines.lib.config.model_config import _select_quantization_encoding
from max.pipelines.lib.interfaces.arch_config import ArchConfigWithKVCache, ArchConfigWithStoredKVParams
from max.pipelines.lib.interfaces.batch_processor import ModuleV3SingleReplicaBatchProcessor
from max.pipelines.modeling.config_enums import SupportedEncoding, supported_encoding_dtype
from max.pipelines.modeling.types import PipelineTask

from max_gpt2.config import GPT2Config
from max_gpt2.precision import QUANTIZATIONS, Precision, for_max
from max_gpt2.serve.launch import PRECISION_ENV
from max_gpt2.serve.network import GPT2PagedLMHeadModel
from max_gpt2.weights import Stored, adapt, check, to_numpy


def served_precision() -> Precision:
    """The precision PRECISION_ENV names (a bad name is refused by Precision in one line)."""
    name = os.environ.get(PRECISION_ENV, "float32")
    return Precision(quantize=name) if name in QUANTIZATIONS else Precision(dtype=name)


def gpt2_config(huggingface_config) -> GPT2Config:
    """Our config from the transformers config MAX read from config.json (refused as our loader refuses it)."""
    return GPT2Config.from_dict(huggingface_config.to_dict())


# --- the architecture's config ----------------------------------------------------------------


@dataclass(kw_only=True)
class GPT2ArchConfig(ArchConfigWithStoredKVParams, ArchConfigWithKVCache):
    """What the graph is built from: our GPT2Config, and the cache and length MAX planned."""

    DEFAULT_ENCODING: ClassVar[SupportedEncoding] = "float32"
    SUPPORTED_ENCODINGS: ClassVar[set[SupportedEncoding]] = {"float32"}

    gpt2: GPT2Config
    precision: Precision
    dtype: DType
    max_seq_len: int
    kv_params: KVCacheParams
    devices: list[DeviceRef]

    @classmethod
    def construct_kv_params(cls, huggingface_config, pipeline_config: PipelineConfig, devices: list[DeviceRef],
                            kv_cache_config: KVCacheConfig, cache_dtype: DType, **_: Any) -> KVCacheParams:
        config = gpt2_config(huggingface_config)
        # Plain multi-head attention: as many key/value heads as query heads.
        return kv_cache_config.to_params(dtype=cache_dtype, n_kv_heads=config.n_head, head_dim=config.head_dim,
                                         num_layers=config.n_layer, devices=devices,
                                         data_parallel_degree=pipeline_config.model.data_parallel_degree)

    @classmethod
    def initialize(cls, pipeline_config: PipelineConfig, model_config=None, *, max_seq_len: int) -> GPT2ArchConfig:
        model_config = model_config or pipeline_config.model
        encoding = _select_quantization_encoding(model_config, cls.DEFAULT_ENCODING)
        devices = [DeviceRef(spec.device_type, spec.id) for spec in model_config.device_specs]
        cache_dtype = cache_dtype_for_encoding(encoding, model_config.kv_cache.kv_cache_format)
        gpt2 = gpt2_config(model_config.huggingface_config)
        precision = served_precision()
        precision.check(gpt2)
        return cls(gpt2=gpt2, precision=precision, dtype=supported_encoding_dtype(encoding),
                   max_seq_len=max_seq_len, devices=devices,
                   kv_params=cls.construct_kv_params(model_config.huggingface_config, pipeline_config, devices,
                                                     model_config.kv_cache, cache_dtype))


# --- the checkpoint ---------------------------------------------------------------------------


def convert_safetensor_state_dict(state_dict: dict[str, Any], huggingface_config=None, **_: Any) -> dict[str, np.ndarray]:
    """The checkpoint MAX found, through our own adapter and check (max_gpt2/weights.py): the
    Hub's layout and save_pretrained's, the Conv1D transposes, the causal buffers skipped,
    the tied head kept as one tensor, and one clear error for a checkpoint that does not fit."""
    from max_gpt2.engine import expected_shapes

    config = gpt2_config(huggingface_config)
    stored = Stored({name: to_numpy(np.from_dlpack(weights.data())) for name, weights in state_dict.items()},
                    "huggingface")
    state = adapt(stored, config)
    check(state, expected_shapes(config), config, "the checkpoint MAX Serve loaded")
    return state


# --- one batch's inputs -----------------------------------------------------------------------


@dataclass
class GPT2Inputs(ModelInputs):
    """A ragged batch, in the order GPT2PagedLMHeadModel.forward takes it."""

    tokens: Buffer
    """Every request's new tokens, one after another: (N,) int64."""
    input_row_offsets: Buffer
    """Where each request's tokens start, and the total at the end: (B + 1,) uint32."""
    return_n_logits: Buffer
    """How many trailing tokens' logits to return; GPT-2 here returns the last one only."""

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        kv = tree.leaves(self.kv_cache_inputs) if self.kv_cache_inputs is not None else ()
        return (self.tokens, self.return_n_logits, self.input_row_offsets, *kv)


class GPT2BatchProcessor(ModuleV3SingleReplicaBatchProcessor[TextContext, GPT2Inputs]):
    def _make_inputs(self, *, tokens: Buffer, input_row_offsets: Buffer, return_n_logits: Buffer,
                     kv_cache_inputs: KVCacheInputs[Buffer, Buffer]) -> GPT2Inputs:
        return GPT2Inputs(tokens=tokens, input_row_offsets=input_row_offsets, return_n_logits=return_n_logits,
                          kv_cache_inputs=kv_cache_inputs)


# --- the pipeline model -----------------------------------------------------------------------


class GPT2PipelineModel(ModuleV3PipelineModelWithKVCache[TextContext]):
    """MAX's pipeline model base loads the weights (through our adapter), builds the module
    lazily, compiles it, and runs it on each batch; we say which module and which config."""

    model_config_cls: ClassVar[type[Any]] = GPT2ArchConfig
    batch_processor_cls: ClassVar[type[GPT2BatchProcessor]] = GPT2BatchProcessor

    def _create_model_config(self, state_dict: dict[str, Any]) -> GPT2ArchConfig:
        return self.arch_config

    def _prepare_state_dict(self, state_dict: dict[str, Any], model_config: GPT2ArchConfig) -> dict[str, Any]:
        """The weights in the served precision, narrowed as our engine narrows them (one copy:
        the float32 arrays are dropped as the narrow ones replace them)."""
        from max_gpt2.engine import narrow_state

        state = narrow_state(state_dict, model_config.gpt2, model_config.precision)
        return {name: for_max(array) for name, array in state.items()}

    def _instantiate_module(self, model_config: GPT2ArchConfig) -> GPT2PagedLMHeadModel:
        from max_gpt2.narrow import narrow

        # Narrow weights swap in our modules that hold them, under the same names; the
        # projections and the head then take our narrow kernels through `project`.
        module = narrow(GPT2PagedLMHeadModel(model_config.gpt2, self.kv_params), model_config.precision)
        module.to(self.devices[0])
        return module


gpt2_arch = SupportedArchitecture(
    name="GPT2LMHeadModel",  # config.json's "architectures"
    task=PipelineTask.TEXT_GENERATION,
    example_repo_ids=["openai-community/gpt2", "openai-community/gpt2-medium", "distilbert/distilgpt2"],
    default_encoding=GPT2ArchConfig.DEFAULT_ENCODING,
    supported_encodings=GPT2ArchConfig.SUPPORTED_ENCODINGS,
    default_weights_format=WeightsFormat.safetensors,
    weight_adapters={WeightsFormat.safetensors: convert_safetensor_state_dict},
    pipeline_model=GPT2PipelineModel,
    config=GPT2ArchConfig,
    tokenizer=TextTokenizer,
    context_type=TextContext,
    batching=GPT2BatchProcessor,
    memory_planner=PagedMemoryPlanner,
    multi_gpu_supported=False,
    supports_overlap_scheduler=False,
    supports_device_graph_capture=False,
)
