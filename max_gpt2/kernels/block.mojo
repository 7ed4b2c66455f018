# A whole GPT-2 block of one int8 decode step in one launch: ln_1 and c_attn, attention over
# the cache, c_proj and the residual, ln_2, c_fc and GELU, the MLP's c_proj and the residual.
#
# The same work as five launches of the other kernels, by the same functions (int8.mojo's
# product, attention.mojo's attend, matvec.mojo's layer_norm); what it saves is four launches
# per block. An int8 step of 124M reads 124 MB of weights in about 6 ms, so its launches weigh
# more than a float32 step's: one launch per block decoded 5–16% faster in five interleaved
# pairs of processes. The same fusion for float32 weights measured no faster (five pairs, within
# the noise) and for bfloat16 4–20% slower (five pairs, cause not found), so those keep five
# launches (docs/benchmarks.md).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.memory import alloc

from .attention import attend
from .int8 import product
from .matvec import F32, layer_norm


@extensibility.register("gpt2_decode_block_scaled")
struct DecodeBlockScaled[epsilon: Float64, scale: Float64]:
    """x (B, C) through one block with int8 weights (each with its rows' scales after it), for
    one new token per row: x_out (B, C), and the token's key and value (B, H, 1, D) for the
    caller to store. The cache (B, H, P, D) and key_mask (B, P + 1) are as for
    gpt2_decode_attention."""

    @staticmethod
    def execute[target: StaticString](
        x_out: OutputTensor[dtype=F32, rank=2, ...],
        new_k: OutputTensor[dtype=F32, rank=4, ...],
        new_v: OutputTensor[dtype=F32, rank=4, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        past_k: InputTensor[dtype=F32, rank=4, ...],
        past_v: InputTensor[dtype=F32, rank=4, ...],
        key_mask: InputTensor[dtype=F32, rank=2, ...],
        ln_1_w: InputTensor[dtype=F32, rank=1, ...],
        ln_1_b: InputTensor[dtype=F32, rank=1, ...],
        c_attn_w: InputTensor[dtype=DType.int8, rank=2, ...],
        c_attn_s: InputTensor[dtype=F32, rank=1, ...],
        c_attn_b: InputTensor[dtype=F32, rank=1, ...],
        attn_proj_w: InputTensor[dtype=DType.int8, rank=2, ...],
        attn_proj_s: InputTensor[dtype=F32, rank=1, ...],
        attn_proj_b: InputTensor[dtype=F32, rank=1, ...],
        ln_2_w: InputTensor[dtype=F32, rank=1, ...],
        ln_2_b: InputTensor[dtype=F32, rank=1, ...],
        c_fc_w: InputTensor[dtype=DType.int8, rank=2, ...],
        c_fc_s: InputTensor[dtype=F32, rank=1, ...],
        c_fc_b: InputTensor[dtype=F32, rank=1, ...],
        mlp_proj_w: InputTensor[dtype=DType.int8, rank=2, ...],
        mlp_proj_s: InputTensor[dtype=F32, rank=1, ...],
        mlp_proj_b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        block[Self.epsilon, Self.scale](
            x_out.unsafe_ptr(), new_k.unsafe_ptr(), new_v.unsafe_ptr(), x.unsafe_ptr(), past_k.unsafe_ptr(),
            past_v.unsafe_ptr(), key_mask.unsafe_ptr(), ln_1_w.unsafe_ptr(), ln_1_b.unsafe_ptr(),
            c_attn_w.unsafe_ptr(), c_attn_s.unsafe_ptr(), c_attn_b.unsafe_ptr(),
            attn_proj_w.unsafe_ptr(), attn_proj_s.unsafe_ptr(), attn_proj_b.unsafe_ptr(),
            ln_2_w.unsafe_ptr(), ln_2_b.unsafe_ptr(),
            c_fc_w.unsafe_ptr(), c_fc_s.unsafe_ptr(), c_fc_b.unsafe_ptr(),
            mlp_proj_w.unsafe_ptr(), mlp_proj_s.unsafe_ptr(), mlp_proj_b.unsafe_ptr(),
            past_k.dim_size(0), past_k.dim_size(1), past_k.dim_size(2), past_k.dim_size(3), c_fc_w.dim_size(0))


def block[epsilon: Float64, scale: Float64](
    xo: Pointer[Float32, MutAnyOrigin],
    kp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    pkp: Pointer[Float32, ImmutAnyOrigin],
    pvp: Pointer[Float32, ImmutAnyOrigin],
    mp: Pointer[Float32, ImmutAnyOrigin],
    g1: Pointer[Float32, _],
    b1: Pointer[Float32, _],
    w_attn: Pointer[Int8, _],
    s_attn: Pointer[Float32, _],
    bias_attn: Pointer[Float32, _],
    w_proj: Pointer[Int8, _],
    s_proj: Pointer[Float32, _],
    bias_proj: Pointer[Float32, _],
    g2: Pointer[Float32, _],
    b2: Pointer[Float32, _],
    w_fc: Pointer[Int8, _],
    s_fc: Pointer[Float32, _],
    bias_fc: Pointer[Float32, _],
    w_mlp: Pointer[Int8, _],
    s_mlp: Pointer[Float32, _],
    bias_mlp: Pointer[Float32, _],
    rows: Int,
    heads: Int,
    past: Int,
    d_head: Int,
    inner: Int,
) raises:
    """GPT2Block.forward_cached for one token per row, as GPT2Decode.block does it in five
    launches for other weights; the residual stream is kept in xo from the first residual add
    on."""
    var c = heads * d_head
    var qkv = alloc[Float32](rows * 3 * c).unsafe_origin_cast[MutAnyOrigin]()
    var att = alloc[Float32](rows * c).unsafe_origin_cast[MutAnyOrigin]()
    var h = alloc[Float32](rows * inner).unsafe_origin_cast[MutAnyOrigin]()
    var normed = layer_norm[epsilon](xp, g1, b1, rows, c)
    product[False](qkv, normed, w_attn, s_attn, bias_attn, qkv, rows, c, 3 * c, add=False)
    normed.unsafe_free()
    attend[scale](att, kp, vp, qkv.unsafe_mut_cast[False]().unsafe_origin_cast[ImmutAnyOrigin](), pkp, pvp, mp, rows, heads, past, d_head)
    product[False](xo, att, w_proj, s_proj, bias_proj, xp, rows, c, c, add=True)
    normed = layer_norm[epsilon](xo, g2, b2, rows, c)
    product[True](h, normed, w_fc, s_fc, bias_fc, h, rows, c, inner, add=False)
    normed.unsafe_free()
    # In place: each element of the residual is read and then written by the same task.
    product[False](xo, h, w_mlp, s_mlp, bias_mlp, xo, rows, inner, c, add=True)
    qkv.unsafe_free()
    att.unsafe_free()
    h.unsafe_free()
