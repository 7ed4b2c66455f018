# Causal attention of a prompt: each new token against the cache and the new tokens up to itself.
#
# In MAX's ops a prompt's attention is q @ k.T over every (query, key) pair, a scale, the mask
# added, a softmax and the weighted sum of values: both products also do the pairs above the
# diagonal, which the causal mask then throws away (half of them, for a prompt with no cache),
# and the T x S scores pass through memory several times. Here each (row, head) pair is one
# task. Its keys are laid out transposed once, so that the scores of 32 keys are the lanes of two
# vectors (no sum across lanes); a block of eight queries is scored against the keys its last
# query may see, and the block's softmax and weighted sum of values are taken while its scores
# are in L1.
#
# The mask is the one GPT2Model.forward_cached makes, added to the scaled scores as MAX's ops
# add it; keys after P + i, which its causal part hides from query i, are not read.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp
from std.memory import alloc

comptime F32 = DType.float32
comptime W = 16  # float32 lanes of one AVX-512 register
comptime QB = 8  # queries scored together: each vector of keys (or values) feeds eight
comptime VS = 2  # vectors of keys scored (or of a value summed) at once: QB * VS sums in registers


@extensibility.register("gpt2_prefill_attention")
struct PrefillAttention[scale: Float64]:
    """From qkv (B, T, 3C), the output of c_attn for T new tokens per row, the cache (B, H, P, D)
    and mask (B, 1, T, P + T), added to the scaled scores and causal (query i's keys after P + i
    are hidden, and not read): out (B, T, C), the attention with its heads merged."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=3, ...],
        qkv: InputTensor[dtype=F32, rank=3, ...],
        past_k: InputTensor[dtype=F32, rank=4, ...],
        past_v: InputTensor[dtype=F32, rank=4, ...],
        mask: InputTensor[dtype=F32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        attend[Self.scale, True](output.unsafe_ptr(), qkv.unsafe_ptr(), past_k.unsafe_ptr(), past_v.unsafe_ptr(),
                           mask.unsafe_ptr(), qkv.dim_size(0), qkv.dim_size(1), past_k.dim_size(1),
                           past_k.dim_size(2), past_k.dim_size(3))


@extensibility.register("gpt2_causal_attention")
struct CausalAttention[scale: Float64, heads: Int]:
    """The same for a sequence with no cache and no padding (GPT2LMHeadModel.forward): the
    causal mask alone, which is not read, only kept."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=3, ...],
        qkv: InputTensor[dtype=F32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        # No cache (past = 0) and no mask to add: the cache and mask pointers are never read.
        attend[Self.scale, False](output.unsafe_ptr(), qkv.unsafe_ptr(), qkv.unsafe_ptr(), qkv.unsafe_ptr(),
                                  qkv.unsafe_ptr(), qkv.dim_size(0), qkv.dim_size(1), Self.heads, 0,
                                  output.dim_size(2) // Self.heads)


def attend[scale: Float64, masked: Bool = True](
    op: Pointer[Float32, MutAnyOrigin],
    qkvp: Pointer[Float32, _],
    pkp: Pointer[Float32, _],
    pvp: Pointer[Float32, _],
    mp: Pointer[Float32, _],
    rows: Int,
    t_new: Int,
    heads: Int,
    past: Int,
    d_head: Int,
):
    var width = heads * d_head
    var total = past + t_new
    var s_pad = (total + VS * W - 1) // (VS * W) * (VS * W)  # keys, rounded up to whole tiles
    var d_pad = (d_head + VS * W - 1) // (VS * W) * (VS * W)
    # kt's rows one vector longer than the keys: rows a power of two apart would share a few sets of
    # the L1 cache, and a tile reads a column of them.
    var kt_row = s_pad + W

    def one(task: Int) {imm}:
        var b = task // heads
        var h = task % heads
        # Keys transposed (kt[d, j], rows of s_pad), values and queries in rows of d_pad; the
        # padding is zeros, so it adds nothing to any sum.
        var kt = alloc[Float32](d_head * kt_row)
        var vs = alloc[Float32](s_pad * d_pad)
        var qs = alloc[Float32]((t_new + QB) * d_pad)  # whole blocks of queries
        var sc = alloc[Float32](QB * kt_row)
        for i in range(d_head * kt_row):
            kt[unsafe_offset=i] = 0
        for i in range(s_pad * d_pad):
            vs[unsafe_offset=i] = 0
        for i in range((t_new + QB) * d_pad):
            qs[unsafe_offset=i] = 0
        var cache = (b * heads + h) * past * d_head
        for j in range(past):
            for d in range(d_head):
                kt[unsafe_offset=d * kt_row + j] = pkp[unsafe_offset=cache + j * d_head + d]
                vs[unsafe_offset=j * d_pad + d] = pvp[unsafe_offset=cache + j * d_head + d]
        for t in range(t_new):
            var row = qkvp.unsafe_offset((b * t_new + t) * 3 * width + h * d_head)
            for d in range(d_head):
                # The scale on q, once, rather than on every score (MAX's ops scale the scores:
                # the same up to rounding, exact for GPT-2's 1/8).
                qs[unsafe_offset=t * d_pad + d] = row[unsafe_offset=d] * Float32(scale)
                kt[unsafe_offset=d * kt_row + past + t] = row[unsafe_offset=width + d]
                vs[unsafe_offset=(past + t) * d_pad + d] = row[unsafe_offset=2 * width + d]

        for i0 in range(0, t_new, QB):
            var nq = min(QB, t_new - i0)
            var seen = past + i0 + nq  # keys the block's last query sees
            var j_end = (seen + VS * W - 1) // (VS * W) * (VS * W)
            # Scores: QB queries against VS * W keys at a time.
            for j in range(0, j_end, VS * W):
                var acc = Array[SIMD[F32, W], QB * VS](fill=SIMD[F32, W](0))
                for d in range(d_head):
                    var kv = Array[SIMD[F32, W], VS](uninitialized=True)
                    comptime for u in range(VS):
                        kv[u] = kt.unsafe_offset(d * kt_row).unsafe_load[width=W](j + u * W)
                    comptime for r in range(QB):
                        var q = qs[unsafe_offset=(i0 + r) * d_pad + d]
                        comptime for u in range(VS):
                            acc[r * VS + u] = acc[r * VS + u] + q * kv[u]
                comptime for r in range(QB):
                    comptime for u in range(VS):
                        sc.unsafe_offset(r * kt_row).unsafe_store(j + u * W, acc[r * VS + u])
            # Mask and softmax, one query at a time; a key the query may not see weighs 0.
            var inv = SIMD[F32, QB](0)
            for r in range(nq):
                var i = i0 + r
                var n = past + i + 1  # keys query i sees
                var srow = sc.unsafe_offset(r * kt_row)
                var mrow = mp.unsafe_offset((b * t_new + i) * total)
                var n_vec = n // W * W
                var top_v = SIMD[F32, W](Float32.MIN)
                for j in range(0, n_vec, W):
                    var s = srow.unsafe_load[width=W](j)
                    comptime if masked:
                        s += mrow.unsafe_load[width=W](j)
                        srow.unsafe_store(j, s)
                    top_v = max(top_v, s)
                var top = top_v.reduce_max()
                for j in range(n_vec, n):
                    var s = srow[unsafe_offset=j]
                    comptime if masked:
                        s += mrow[unsafe_offset=j]
                        srow[unsafe_offset=j] = s
                    top = max(top, s)
                var sum_v = SIMD[F32, W](0)
                for j in range(0, n_vec, W):
                    var e = exp(srow.unsafe_load[width=W](j) - top)
                    srow.unsafe_store(j, e)
                    sum_v += e
                var sum = sum_v.reduce_add()
                for j in range(n_vec, n):
                    var e = exp(srow[unsafe_offset=j] - top)
                    srow[unsafe_offset=j] = e
                    sum += e
                for j in range(n, seen):
                    srow[unsafe_offset=j] = 0
                inv[r] = 1 / sum
            for r in range(nq, QB):
                for j in range(seen):
                    sc[unsafe_offset=r * kt_row + j] = 0
            # The weighted sums of values: each vector of values feeds the block's eight queries.
            for d in range(0, d_pad, VS * W):
                var acc = Array[SIMD[F32, W], QB * VS](fill=SIMD[F32, W](0))
                for j in range(seen):
                    var v = Array[SIMD[F32, W], VS](uninitialized=True)
                    comptime for u in range(VS):
                        v[u] = vs.unsafe_offset(j * d_pad).unsafe_load[width=W](d + u * W)
                    comptime for r in range(QB):
                        var p = sc[unsafe_offset=r * kt_row + j]
                        comptime for u in range(VS):
                            acc[r * VS + u] = acc[r * VS + u] + p * v[u]
                for r in range(nq):
                    var out = op.unsafe_offset((b * t_new + i0 + r) * width + h * d_head)
                    comptime for u in range(VS):
                        var a = acc[r * VS + u] * inv[r]
                        for l in range(max(0, min(W, d_head - d - u * W))):
                            out[unsafe_offset=d + u * W + l] = a[l]
        kt.unsafe_free()
        vs.unsafe_free()
        qs.unsafe_free()
        sc.unsafe_free()

    sync_parallelize(one, rows * heads)
