"""GPT-2 as MAX modules, with Hugging Face's parameter names.

The tree of modules mirrors transformers' GPT2LMHeadModel, so a checkpoint's keys name our
parameters directly (`transformer.h.0.attn.c_attn.weight`, ...). Only the orientation of the
Conv1D weights differs; `max_gpt2.weights` fixes that before loading.

Each layer has two ways in:
- `forward`: the whole sequence at once, causal. This is what `GPT2.logits` compiles with a
  symbolic ("batch", "seqlen") input, and what the tutorial builds step by step.
- `forward_cached`: new tokens attending to a cache of past keys and values, for generation.
  It also takes each token's position and which cached positions are real (not padding), so
  prompts of different lengths share one batch.

`GPT2Prefill` runs `forward_cached` over a prompt; `max_gpt2.decode.GPT2Decode` is the same model
for one token per row, with our own kernels.

Shapes in comments: B batch, T new tokens, P past tokens, S = P + T, C n_embd, H heads, D head dim,
L layers, V vocabulary.
"""

from __future__ import annotations

import math

import max.experimental.functional as F
from max.driver import Device
from max.dtype import DType
from max.experimental.nn import Embedding, Linear, Module, ModuleList
from max.experimental.tensor import Tensor
from max.graph import Dim, DimLike, StaticDim

from max_gpt2.config import TANH_GELU, GPT2Config


def one(dim: DimLike) -> bool:
    """Whether a dimension is known, when the graph is built, to be 1 (a decode step)."""
    return isinstance(dim, int | StaticDim) and int(dim) == 1


# ANCHOR: feed_forward_network
class GPT2MLP(Module):
    """Widen to n_inner, apply GELU (GPT-2's tanh approximation), project back to n_embd."""

    def __init__(self, config: GPT2Config) -> None:
        self.c_fc = Linear(config.n_embd, config.inner_dim, bias=True)
        self.c_proj = Linear(config.inner_dim, config.n_embd, bias=True)
        self.activation_function = config.activation_function

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(activation(self.c_fc(x), self.activation_function))


def activation(x: Tensor, name: str) -> Tensor:
    if name in TANH_GELU:
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    return F.silu(x)  # "silu" / "swish"; GPT2Config.validate admits nothing else


# ANCHOR_END: feed_forward_network


# ANCHOR: causal_mask
@F.functional
def causal_mask(
    sequence_length: DimLike, num_past: DimLike, *, dtype: DType, device: Device
) -> Tensor:
    """An additive mask [T, P + T]: 0 where query i may see key j (j <= P + i), -inf elsewhere.

    The P cached keys are all visible; among the T new tokens, each sees itself and earlier ones.
    """
    blocked = F.broadcast_to(Tensor(float("-inf"), dtype=dtype, device=device), (sequence_length, sequence_length))
    future = F.band_part(blocked, num_lower=None, num_upper=0, exclude=True)  # -inf above the diagonal
    if isinstance(num_past, int) and num_past == 0:
        return future
    past = F.broadcast_to(Tensor(0.0, dtype=dtype, device=device), (sequence_length, num_past))
    return F.concat([past, future], axis=1)


# ANCHOR_END: causal_mask


# ANCHOR: multi_head_attention
class GPT2Attention(Module):
    """Causal multi-head self-attention with GPT-2's fused query/key/value projection."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=True)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=True)
        self.scale = 1.0
        if config.scale_attn_weights:
            self.scale /= math.sqrt(self.head_dim)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split_qkv(x)
        mask = causal_mask(x.shape[1], 0, dtype=x.dtype, device=x.device)
        return self.c_proj(self.merge_heads(self.attend(q, k, v, mask)))

    def forward_cached(
        self, x: Tensor, mask: Tensor, past_k: Tensor, past_v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attends the new tokens to the cache and to each other; returns the grown cache."""
        q, k, v = self.split_qkv(x)
        k = F.concat([past_k, k], axis=2)  # (B, H, S, D)
        v = F.concat([past_v, v], axis=2)
        return self.c_proj(self.merge_heads(self.attend(q, k, v, mask))), k, v

    def split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> three (B, H, T, D): query, key, value."""
        c = self.n_head * self.head_dim
        q, k, v = F.split(self.c_attn(x), [c, c, c], axis=2)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        if one(t):  # decoding: no data to move, and no transpose kernel to run
            return x.reshape([b, self.n_head, 1, self.head_dim])
        return x.reshape([b, t, self.n_head, self.head_dim]).transpose(1, 2)  # (B, H, T, D)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        if one(t):
            return x.reshape([b, 1, self.n_head * self.head_dim])
        return x.transpose(1, 2).reshape([b, t, self.n_head * self.head_dim])  # (B, T, C)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        scores = (q @ k.transpose(-1, -2)) * self.scale + mask  # (B, H, T, S)
        return F.softmax(scores) @ v  # (B, H, T, D)


# ANCHOR_END: multi_head_attention


# ANCHOR: layer_normalization
class LayerNorm(Module):
    """Normalize each position's features to zero mean and unit variance, then scale and shift."""

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        self.weight = Tensor.ones([dim])
        self.bias = Tensor.zeros([dim])
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, gamma=self.weight, beta=self.bias, epsilon=self.eps)


# ANCHOR_END: layer_normalization


# ANCHOR: transformer_block
class GPT2Block(Module):
    """Pre-LN: normalize before attention and before the MLP; add each result to the residual."""

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self, x: Tensor, mask: Tensor, past_k: Tensor, past_v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn.forward_cached(self.ln_1(x), mask, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


# ANCHOR_END: transformer_block


# ANCHOR: stacking_transformer_blocks
class GPT2Model(Module):
    """Token and position embeddings, the stack of blocks, and the final layer norm."""

    def __init__(self, config: GPT2Config) -> None:
        self.wte = Embedding(config.vocab_size, dim=config.n_embd)
        self.wpe = Embedding(config.n_positions, dim=config.n_embd)
        self.h = ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = Tensor.arange(input_ids.shape[1], dtype=input_ids.dtype, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def forward_cached(
        self,
        input_ids: Tensor,  # (B, T) new tokens
        position_ids: Tensor,  # (B, T) their positions (a left-padded row starts later)
        key_mask: Tensor,  # (B, S) float: 0 for a real token, a large negative for padding
        past_k: Tensor,  # (L, B, H, P, D)
        past_v: Tensor,  # (L, B, H, P, D)
    ) -> tuple[Tensor, Tensor, Tensor]:
        x = self.wte(input_ids) + self.wpe(position_ids)
        b, t = input_ids.shape
        p = past_k.shape[3]
        key_mask = F.rebind(key_mask, [b, Dim(p) + t])  # the caller passes S = P + T columns
        mask = causal_mask(t, p, dtype=x.dtype, device=x.device) + key_mask[:, None, None, :]  # (B, 1, T, S)
        ks, vs = [], []
        for i, block in enumerate(self.h):
            x, k, v = block.forward_cached(x, mask, past_k[i], past_v[i])
            ks.append(k)
            vs.append(v)
        return self.ln_f(x), F.stack(ks), F.stack(vs)


# ANCHOR_END: stacking_transformer_blocks


# ANCHOR: language_model_head
class GPT2LMHeadModel(Module):
    """GPT-2 with its language-model head: hidden states -> one logit per vocabulary entry.

    GPT-2 ties the head to the token embedding: the same [V, C] matrix reads tokens in and
    scores them out. A checkpoint with `tie_word_embeddings: false` brings its own lm_head.
    """

    def __init__(self, config: GPT2Config) -> None:
        self.config = config
        self.transformer = GPT2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)

    def head(self, x: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            return times_transposed(x, self.transformer.wte)  # x @ wte.weight.T
        return self.lm_head(x)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.head(self.transformer(input_ids))  # (B, T, V)


# ANCHOR_END: language_model_head


def times_transposed(x: Tensor, module: Module) -> Tensor:
    """x @ module.weight.T; a weight held narrower than x goes to max_gpt2/narrow.py."""
    if module.weight.dtype == x.dtype:
        return x @ module.weight.T
    from max_gpt2.narrow import narrow_product  # it builds on this module

    return narrow_product(x, module)


class GPT2Prefill(GPT2LMHeadModel):
    """A prompt into the cache: new tokens in, the next token's logits and the grown cache out.

    The same parameters as GPT2LMHeadModel under the same names, so one state dict serves both
    compiled graphs; only `forward` differs.
    """

    def forward(self, input_ids, position_ids, key_mask, past_k, past_v):
        x, k, v = self.transformer.forward_cached(input_ids, position_ids, key_mask, past_k, past_v)
        return self.head(x[:, -1]), k, v  # (B, V), (L, B, H, S, D) twice
