"""GPT-2 over MAX's paged key/value cache: our modules, fed a ragged batch.

MAX Serve hands the model one flat row of tokens for the whole batch (`tokens`, N of them)
and `row_offsets` saying where each request's tokens start; a request's earlier tokens are
already in the paged cache. Attention changes: it stores the new keys and values into
the cache pages and attends through MAX's ragged flash attention with a causal mask. The
embeddings, layer norms, MLP, projections and the tied head are max_gpt2.model's, under the
same parameter names, so our weight adapter's state dict loads as it is.

The projections and the head run as in our own engine's decode step (max_gpt2/decode.py's
`matvec`: the layer norm, GELU or residual in the same launch). Its kernels choose by the
batch's rows as it runs: our matrix-vector product for a decode batch, one row per request,
which streams the weights; MAX's matmul for a prefill's hundreds of rows, which are
compute-bound. Narrow weights (bfloat16, int8: max_gpt2/narrow.py, swapped in by the pipeline
model) take our narrow kernels at every row count.

Shapes in comments: N tokens in the batch, B requests, C n_embd, H heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import max.experimental.functional as F
from max import tree
from max.driver import CPU
from max.dtype import DType
from max.experimental.nn import ModuleList
from max.experimental.nn.common_layers.functional_kernels import flash_attention_ragged, store_k_cache_ragged
from max.experimental.tensor import Tensor
from max.nn import kernels
from max.nn.attention import MHAMaskVariant
from max.nn.kv_cache import KVCacheInputsPerDevice, KVCacheParams, PagedCacheValues
from max.pipelines.lib import ModuleV3Outputs

from max_gpt2.config import GPT2Config
from max_gpt2.decode import GPT2Decode
from max_gpt2.model import GPT2Attention, GPT2Block

# MAX 26.7 wraps only the key store for its experimental API; the value store is the same kernel.
store_v_cache_ragged = F.functional(kernels.store_v_cache_ragged)


class GPT2PagedAttention(GPT2Attention):
    """GPT-2's attention over the paged cache: from c_attn's output to the heads' output,
    before c_proj (the block runs both projections, so that each can take its kernel)."""

    def __init__(self, config: GPT2Config, layer_idx: int, kv_params: KVCacheParams) -> None:
        super().__init__(config, layer_idx)
        self.layer_idx = layer_idx
        self.kv_params = kv_params

    def forward(self, qkv: Tensor, kv: PagedCacheValues, row_offsets: Tensor) -> Tensor:
        c = self.n_head * self.head_dim
        q, k, v = F.split(qkv, [c, c, c], axis=1)  # (N, C) each
        heads = (-1, self.n_head, self.head_dim)  # (N, H, D)
        layer = F.constant(self.layer_idx, DType.uint32, device=CPU())
        store_k_cache_ragged(kv, k.reshape(heads), row_offsets, layer)
        store_v_cache_ragged(kv, v.reshape(heads), row_offsets, layer)
        out = flash_attention_ragged(self.kv_params, input=q.reshape(heads), input_row_offsets=row_offsets,
                                     kv_collection=kv, layer_idx=layer, mask_variant=MHAMaskVariant.CAUSAL_MASK,
                                     scale=self.scale)  # (N, H, D)
        return out.reshape((-1, c))  # (N, C)


class GPT2PagedBlock(GPT2Block):
    def __init__(self, config: GPT2Config, layer_idx: int, kv_params: KVCacheParams) -> None:
        super().__init__(config, layer_idx)
        self.attn = GPT2PagedAttention(config, layer_idx, kv_params)

    def forward(self, x: Tensor, kv: PagedCacheValues, row_offsets: Tensor, project) -> Tensor:
        """GPT2Block.forward over the cache; `project` is GPT2PagedLMHeadModel.project."""
        attn, mlp = self.attn, self.mlp
        out = attn(project(x, attn.c_attn, norm=self.ln_1), kv, row_offsets)
        x = project(out, attn.c_proj, residual=x)
        h = project(x, mlp.c_fc, norm=self.ln_2, act=mlp.activation_function)
        return project(h, mlp.c_proj, residual=x)


class GPT2PagedLMHeadModel(GPT2Decode):
    """GPT2LMHeadModel with paged blocks, projecting as GPT2Decode does; its inputs are those
    of MAX's ragged batch processor."""

    def __init__(self, config: GPT2Config, kv_params: KVCacheParams) -> None:
        super().__init__(config)
        self.kv_params = kv_params
        # The same blocks under the same names (transformer.h.N), with paged attention; the
        # ones GPT2Model made are only described (built lazily), so replacing them costs nothing.
        self.transformer.h = ModuleList(GPT2PagedBlock(config, i, kv_params) for i in range(config.n_layer))

    def forward(self, tokens: Tensor, return_n_logits: Tensor, row_offsets: Tensor, *kv_inputs: Tensor) -> ModuleV3Outputs:
        del return_n_logits  # only the last token's logits are returned (ReturnLogits.LAST_TOKEN)
        kv_values = self.kv_params.unflatten_kv_inputs(iter(t._graph_value for t in kv_inputs))
        kv = tree.leaves(kv_values, leaf=KVCacheInputsPerDevice)[0]
        gpt = self.transformer
        cached = Tensor.from_graph_value(kv.cache_lengths)
        x = gpt.wte(tokens) + gpt.wpe(positions(row_offsets, cached, tokens.shape[0]))  # (N, C)
        for block in gpt.h:
            x = block(x, kv, row_offsets, self.project)
        last = F.gather(x, row_offsets[1:] - 1, axis=0)  # (B, C): each request's last token
        return ModuleV3Outputs(next_token_logits=self.final_logits(last))  # (B, V)


def positions(row_offsets: Tensor, cached: Tensor, n) -> Tensor:
    """Each token's position in its own sequence: its request's cached length plus its index
    among the request's new tokens. GPT-2 learns an embedding per position, so the cache's
    lengths (a prefix-cache hit included) must be the ones the embedding reads.

    row_offsets (B + 1) uint32, cached (B) uint32 -> (N) int64.
    """
    index = Tensor.arange(n, dtype=DType.int64, device=row_offsets.device)  # (N)
    starts = F.cast(row_offsets, DType.int64)
    # A token's request: how many requests end at or before it.
    ends = F.unsqueeze(starts[1:], 0)  # (1, B)
    row = F.squeeze(F.sum(F.cast(F.unsqueeze(index, 1) >= ends, DType.int64), axis=-1), -1)  # (N)
    return index - F.gather(starts, row, axis=0) + F.gather(F.cast(cached, DType.int64), row, axis=0)
