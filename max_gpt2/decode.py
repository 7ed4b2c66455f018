"""The decode graph: one new token per row against a cache the caller keeps, and the wrappers
of our Mojo kernels (max_gpt2/kernels) that run it on a CPU; also the float32 prefill graph
whose projections take the same kernels for a short prompt (`GPT2KernelPrefill`).

A decode step reads all the weights to do two flops per weight, so its speed is the speed at
which the weights stream from memory. MAX's general matmul blocks for compute, which is right
for a prefill's many rows and wrong for one; our `matvec` streams each weight row once and
uses it for every row of x while it is in cache. Each kernel launch also has a fixed cost near
what a small projection takes to read, so the pieces around each projection (a layer norm
before, GELU after, the residual add) go in the same launch, and attention is one launch per
layer (`decode_attention`) instead of some twenty small MAX ops. A decode step goes further: a
whole block is one launch (`decode_block`), whose cores wait for each other between its stages
without going to sleep.

Shapes in comments: B batch, P cached positions, C n_embd, H heads, D head dim, L layers,
V vocabulary.
"""

from __future__ import annotations

import max.experimental.functional as F
from max.dtype import DType
from max.experimental.nn import Linear, Module
from max.experimental.tensor import Tensor, TensorType
from max.graph import Dim

from max_gpt2.config import TANH_GELU, GPT2Config
from max_gpt2.graphs import kernel_library
from max_gpt2.model import GPT2Attention, GPT2Block, GPT2LMHeadModel, GPT2Prefill, LayerNorm, activation
from max_gpt2.narrow import replace


# The most rows (batch x new tokens) that a float32 projection takes through our matvec; more
# take MAX's matmul (kernels/linear.mojo). Where the two cross on GPT-2's projections on a CPU
# with AVX-512; a CPU with other vector widths or caches may cross elsewhere.
FEW_ROWS = 32


def matvec(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    scale: Tensor | None = None,
    norm: LayerNorm | None = None,
    gelu: bool = False,
    residual: Tensor | None = None,
    few_rows: int | None = None,
) -> Tensor:
    """x @ weight.T + bias by our kernels: (..., K) with weight [N, K] -> (..., N). The weight is
    float32 or bfloat16, or int8 with `scale` [N], each row's scale (see max_gpt2/precision.py);
    x and the result are float32.

    With `few_rows`, a bfloat16 weight takes this matvec for up to that many rows and, for more,
    bfloat16 dot products on x rounded to bfloat16 (kernels/bf16.mojo), chosen as the graph runs:
    a prompt's many rows, in a bare product (no norm or residual). Without it (a decode step's
    few rows), matvec at every count.

    In the same launch, one of: `norm` (a LayerNorm) applied to x first, then GELU (tanh form)
    after if `gelu`; or `residual` added to the result. The kernels have no other combination,
    so any other is refused rather than half done.

    Float32 weights take our matrix-vector kernels up to FEW_ROWS rows and MAX's matmul for
    more, chosen as the graph runs (kernels/linear.mojo), so one graph serves a decode step and
    a long prompt. int8 weights always take their matrix-vector kernels, and bfloat16 ones unless
    `few_rows` says otherwise (max_gpt2/narrow.py).
    """
    if gelu and norm is None:
        raise ValueError("matvec: gelu=True needs norm= (the kernel applies GELU only after a layer norm)")
    if residual is not None and norm is not None:
        raise ValueError("matvec: residual= and norm= cannot be combined in one kernel launch")
    n = weight.shape[0]
    bias = bias if bias is not None else zeros(n, x)
    if (scale is not None) != (weight.dtype == DType.int8):
        raise ValueError("matvec: an int8 weight needs scale=, and only an int8 weight takes one")
    # The int8 kernels take the scales right after the weight, and are named for them.
    product, suffix = ([weight, scale], "_scaled") if scale is not None else ([weight], "")
    if weight.dtype == DType.float32:  # the kernels that choose matvec or matmul by the rows
        names, parameters = ("gpt2_norm_linear", "gpt2_linear_add", "gpt2_linear"), {"few_rows": FEW_ROWS}
    else:
        names, parameters = ("gpt2_norm_matvec", "gpt2_matvec_add", "gpt2_matvec"), {}
    if few_rows is not None:
        if weight.dtype != DType.bfloat16:
            raise ValueError("matvec: few_rows= is for a bfloat16 weight (float32 has FEW_ROWS, int8 no many-row path)")
        if norm is not None or residual is not None:
            raise ValueError("matvec: few_rows= is for a bare product (a prompt's projections are not fused)")
        suffix, parameters = "_bf16", {"few_rows": few_rows}
    if norm is not None:
        name, inputs = names[0], [norm.weight, norm.bias, *product, bias]
        parameters |= {"gelu": gelu, "epsilon": float(norm.eps)}
    elif residual is not None:
        name, inputs = names[1], [*product, bias, residual.reshape([-1, n])]
    else:
        name, inputs = names[2], [*product, bias]
    return per_row(name + suffix, x, n, inputs, parameters or None)


# The same for bfloat16 weights: up to this many rows our matvec (x in float32), more the
# bfloat16 dot products of kernels/bf16.mojo. About where the two cross on GPT-2's projections on
# a CPU with AVX-512 BF16; the crossing was not sharp enough on a shared machine to move it from
# float32's earlier 24.
BF16_FEW_ROWS = 24


def per_row(name: str, x: Tensor, n, inputs: list, parameters: dict | None = None) -> Tensor:
    """Our kernel `name` on the rows of x (..., K), then `inputs`: (..., N)."""
    *lead, k = x.shape
    rows = x.reshape([-1, k])  # (R, K)
    out_type = TensorType(x.dtype, [rows.shape[0], n], device=x.device)
    out = F.custom(name, x.device, [rows, *inputs], [out_type], parameters=parameters,
                   custom_extensions=kernel_library())[0]
    return out.reshape([*lead, n])


def zeros(n, like: Tensor) -> Tensor:
    """A bias of n zeros, for a product that has none."""
    return F.broadcast_to(Tensor(0.0, dtype=like.dtype, device=like.device), [n])


class KernelLinear(Module):
    """A float32 Linear whose product is `matvec`: our kernels for few rows, MAX's matmul for many."""

    def __init__(self, module: Linear) -> None:
        self.weight = module.weight
        self.bias = module.bias

    def forward(self, x: Tensor) -> Tensor:
        return matvec(x, self.weight, self.bias if isinstance(self.bias, Tensor) else None)


def prompt_attention(qkv: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """A prompt's causal attention by our kernel (kernels/prefill_attention.mojo): qkv (B, T, 3C)
    from c_attn, the cache (B, H, P, D), mask (B, 1, T, P + T) as GPT2Model.forward_cached makes
    it. Returns the attention with its heads merged, (B, T, C)."""
    b, t, _ = qkv.shape
    c = past_k.shape[1] * past_k.shape[3]
    return F.custom("gpt2_prefill_attention", qkv.device, [qkv, past_k, past_v, mask],
                    [TensorType(qkv.dtype, [b, t, c], device=qkv.device)],
                    parameters={"scale": float(scale)}, custom_extensions=kernel_library())[0]


def causal_attention(qkv: Tensor, heads: int, scale: float) -> Tensor:
    """`prompt_attention` with no cache and no padding, the causal mask alone (GPT2Attention.forward):
    qkv (B, T, 3C) -> (B, T, C)."""
    b, t, c3 = qkv.shape
    return F.custom("gpt2_causal_attention", qkv.device, [qkv],
                    [TensorType(qkv.dtype, [b, t, int(c3) // 3], device=qkv.device)],
                    parameters={"scale": float(scale), "heads": int(heads)}, custom_extensions=kernel_library())[0]


class KernelAttention(GPT2Attention):
    """GPT2Attention whose attention over many tokens is our kernel (`prompt_attention`,
    `causal_attention`), with the same modules."""

    def __init__(self, attn: GPT2Attention) -> None:
        self.n_head, self.head_dim, self.scale = attn.n_head, attn.head_dim, attn.scale
        self.c_attn, self.c_proj = attn.c_attn, attn.c_proj

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(causal_attention(self.c_attn(x), self.n_head, self.scale))

    def forward_cached(self, x, mask, past_k, past_v):
        qkv = self.c_attn(x)  # (B, T, 3C)
        out = prompt_attention(qkv, past_k, past_v, mask, self.scale)
        c = self.n_head * self.head_dim
        _, k, v = (self.split_heads(part) for part in F.split(qkv, [c, c, c], axis=2))
        return self.c_proj(out), F.concat([past_k, k], axis=2), F.concat([past_v, v], axis=2)


def kernel_attention(model: Module) -> Module:
    """`model` with each GPT2Attention a KernelAttention, in place."""
    return replace(model, lambda name, module: KernelAttention(module) if isinstance(module, GPT2Attention) else None)


class GPT2KernelLogits(GPT2LMHeadModel):
    """GPT2LMHeadModel on a CPU: the sequence's attention by our kernel."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        kernel_attention(self)


class GPT2KernelAttentionPrefill(GPT2Prefill):
    """GPT2Prefill on a CPU, whatever its weights: a prompt's attention by our kernel, which
    scores only the keys each token may see (MAX's two products score them all)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        kernel_attention(self)


class GPT2KernelPrefill(GPT2KernelAttentionPrefill):
    """GPT2KernelAttentionPrefill for float32 weights, its Linear modules and its head by
    `matvec`: a short prompt (the time to a first token) goes through our matvec, which is
    faster than MAX's matmul for few rows, and a long one through MAX's matmul as before. The
    head sees one row per prompt, so a batch of up to FEW_ROWS prompts takes matvec there at
    any length."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        replace(self, lambda name, module: KernelLinear(module) if isinstance(module, Linear) else None)

    def head(self, x: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            return matvec(x, self.transformer.wte.weight)
        return self.lm_head(x)  # a KernelLinear


def decode_attention(qkv: Tensor, past_k: Tensor, past_v: Tensor, key_mask: Tensor, scale: float):
    """One new token per row attending to its cache, by our kernel (kernels/attention.mojo):
    qkv (B, 1, 3C) from c_attn, past_k and past_v (B, H, P, D), key_mask (B, P + 1) added to the
    scaled scores. Returns the attention (B, 1, C) and the new token's key and value (B, H, 1, D).
    """
    b, h, _, d = past_k.shape
    rows = qkv.reshape([b, 3 * h * d])
    types = [TensorType(qkv.dtype, [b, h * d], device=qkv.device)]
    types += [TensorType(qkv.dtype, [b, h, 1, d], device=qkv.device)] * 2
    out, k, v = F.custom("gpt2_decode_attention", qkv.device, [rows, past_k, past_v, key_mask], types,
                         parameters={"scale": float(scale)}, custom_extensions=kernel_library())
    return out.reshape([b, 1, h * d]), k, v


def decode_block(block: GPT2Block, x: Tensor, key_mask: Tensor, past_k: Tensor, past_v: Tensor):
    """A block for one new token per row in one launch (kernels/block.mojo): x (B, 1, C) and the
    block's cache as for `decode_attention`. Returns x after the block (B, 1, C) and the new
    token's key and value (B, H, 1, D)."""
    attn, mlp = block.attn, block.mlp
    if block.ln_1.eps != block.ln_2.eps:
        raise ValueError("decode_block: ln_1 and ln_2 must share one epsilon (one kernel parameter)")
    b, h, _, d = past_k.shape
    int8 = row_scales(attn.c_attn) is not None
    inputs = [x.reshape([b, h * d]), past_k, past_v, key_mask, block.ln_1.weight, block.ln_1.bias]
    for i, linear in enumerate((attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)):
        bias = linear.bias if isinstance(linear.bias, Tensor) else zeros(linear.weight.shape[0], x)
        inputs += [linear.weight, *([row_scales(linear)] if int8 else []), bias]
        if i == 1:
            inputs += [block.ln_2.weight, block.ln_2.bias]
    types = [TensorType(x.dtype, [b, h * d], device=x.device)]
    types += [TensorType(x.dtype, [b, h, 1, d], device=x.device)] * 2
    out, k, v = F.custom("gpt2_decode_block_scaled" if int8 else "gpt2_decode_block", x.device, inputs, types,
                         parameters={"epsilon": float(block.ln_1.eps), "scale": float(attn.scale)}
                         | ({} if int8 else {"few_rows": FEW_ROWS}),
                         custom_extensions=kernel_library())
    return out.reshape([b, 1, h * d]), k, v


class GPT2Decode(GPT2Prefill):
    """One new token per row: the next token's logits and the new token's keys and values
    (L, B, H, 1, D), for the caller to store in its cache in place.

    The cache is read where it is, never copied to grow it, and may be longer than the tokens so
    far: `key_mask` (P + 1 columns, the new token last) hides the unused positions, which the
    attention kernel then does not read. `kernels=False` computes the same in MAX's ops: the
    kernels are for CPUs, so that is what an accelerator runs.
    """

    def __init__(self, config: GPT2Config, *, kernels: bool = True) -> None:
        super().__init__(config)
        self.kernels = kernels

    def forward(self, input_ids, position_ids, key_mask, past_k, past_v):
        t = self.transformer
        x = t.wte(input_ids) + t.wpe(position_ids)  # (B, 1, C)
        key_mask = F.rebind(key_mask, [input_ids.shape[0], Dim(past_k.shape[3]) + 1])  # (B, P + 1)
        ks, vs = [], []
        for i, block in enumerate(t.h):
            x, k, v = self.block(block, x, key_mask, past_k[i], past_v[i])
            ks.append(k)
            vs.append(v)
        return self.final_logits(x[:, -1]), F.stack(ks), F.stack(vs)  # (B, V), (L, B, H, 1, D) twice

    def block(self, block: GPT2Block, x, key_mask, past_k, past_v):
        """GPT2Block.forward_cached for one token: on a CPU one launch of our kernels
        (`decode_block`), or five for an activation other than the tanh GELU, the only one the
        one-launch kernel has."""
        attn, mlp = block.attn, block.mlp
        if self.kernels and mlp.activation_function in TANH_GELU:
            return decode_block(block, x, key_mask, past_k, past_v)
        qkv = self.project(x, attn.c_attn, norm=block.ln_1)  # (B, 1, 3C)
        if self.kernels:
            out, k, v = decode_attention(qkv, past_k, past_v, key_mask, attn.scale)
        else:
            c = attn.n_head * attn.head_dim
            q, k, v = (attn.split_heads(part) for part in F.split(qkv, [c, c, c], axis=2))  # (B, H, 1, D)
            out = attn.merge_heads(attn.attend(q, F.concat([past_k, k], axis=2), F.concat([past_v, v], axis=2),
                                               key_mask[:, None, None, :]))  # (B, 1, C)
        x = self.project(out, attn.c_proj, residual=x)
        h = self.project(x, mlp.c_fc, norm=block.ln_2, act=mlp.activation_function)
        return self.project(h, mlp.c_proj, residual=x), k, v

    def project(self, x, linear: Linear, *, norm=None, act: str | None = None, residual=None,
                kernels: bool | None = None):
        """residual + act(linear(norm(x))), each part optional, in one launch where it can be;
        `kernels` overrides the module's choice for this projection."""
        if not (self.kernels if kernels is None else kernels):
            y = linear(norm(x) if norm is not None else x)
            y = activation(y, act) if act else y
            return y + residual if residual is not None else y
        gelu = norm is not None and act in TANH_GELU
        y = matvec(x, linear.weight, linear.bias, scale=row_scales(linear), norm=norm, gelu=gelu, residual=residual)
        return activation(y, act) if act and not gelu else y

    def final_logits(self, x: Tensor, kernels: bool | None = None) -> Tensor:
        """ln_f, then the LM head: one launch on a CPU."""
        if not (self.kernels if kernels is None else kernels):
            return self.head(self.transformer.ln_f(x))
        table = self.transformer.wte if self.config.tie_word_embeddings else self.lm_head
        return matvec(x, table.weight, scale=row_scales(table), norm=self.transformer.ln_f)


def row_scales(module) -> Tensor | None:
    """An int8 weight's scales, one per row (max_gpt2/narrow.py); None for any other weight."""
    return getattr(module, "weight_scale", None)
