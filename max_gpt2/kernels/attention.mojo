# Attention of one decode step: each row's one new token against its cached keys and values.
#
# In MAX's ops this is some twenty small operations per layer (split, reshape and transpose the
# heads, two products, concat, scale, mask, softmax, the weighted sum, merge the heads), most of
# them a launch of their own for a few kilobytes of work. Here it is one launch: every (row, head) pair
# reads its query from the c_attn output, scores it against the cached keys and its own new
# key, and writes its part of the weighted sum of values. The pairs are split into one run of
# consecutive pairs per core, and each pair asks for the next pair's keys and values while it
# works on its own (the cache keeps them next to each other), which measured faster than one task
# per pair left to the hardware to fetch (figures in docs/benchmarks.md).
#
# Positions the mask hides (padding, cache capacity not used yet) are not read at all: their
# weight, the exponential of a score near -1e9, would be exactly 0 in float32. So the caller can
# keep a cache with room for the whole generation and pay only for the positions filled so far.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp
from std.memory import alloc
from std.sys.info import num_physical_cores
from std.sys.intrinsics import prefetch

from .matvec import dot, F32, W, FETCH

comptime HIDDEN = Float32(-1e8)  # a mask at or below this hides its position: it is skipped


@extensibility.register("gpt2_decode_attention")
struct DecodeAttention[scale: Float64]:
    """From qkv (B, 3C), the output of c_attn for one new token per row, and the cache (B, H, P,
    D): out (B, C), the attention of the new token with its heads merged, and its key and value
    (B, H, 1, D) for the caller to store. `key_mask` (B, P + 1) is added to the scaled scores,
    the new token's column last: 0 where a position may be seen, HIDDEN or less where it may not
    (padding, cache capacity not yet used); hidden keys and values are never read."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        new_k: OutputTensor[dtype=F32, rank=4, ...],
        new_v: OutputTensor[dtype=F32, rank=4, ...],
        qkv: InputTensor[dtype=F32, rank=2, ...],
        past_k: InputTensor[dtype=F32, rank=4, ...],
        past_v: InputTensor[dtype=F32, rank=4, ...],
        key_mask: InputTensor[dtype=F32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        attend[Self.scale](output.unsafe_ptr(), new_k.unsafe_ptr(), new_v.unsafe_ptr(), qkv.unsafe_ptr(),
                           past_k.unsafe_ptr(), past_v.unsafe_ptr(), key_mask.unsafe_ptr(), past_k.dim_size(0),
                           past_k.dim_size(1), past_k.dim_size(2), past_k.dim_size(3))


def attend[scale: Float64](
    op: Pointer[Float32, MutAnyOrigin],
    kp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    qkvp: Pointer[Float32, ImmutAnyOrigin],
    pkp: Pointer[Float32, ImmutAnyOrigin],
    pvp: Pointer[Float32, ImmutAnyOrigin],
    mp: Pointer[Float32, ImmutAnyOrigin],
    rows: Int,
    heads: Int,
    past: Int,
    d_head: Int,
):
    """DecodeAttention on pointers: out (rows, C), the new keys and values (rows, heads, 1,
    d_head) into kp and vp, from qkv (rows, 3C), the cache (rows, heads, past, d_head) and the
    mask (rows, past + 1)."""
    var tasks = rows * heads
    if tasks == 0:
        return
    var parts = min(num_physical_cores(), tasks)
    var per_part = (tasks + parts - 1) // parts

    def run(part: Int) {imm}:
        var end = min((part + 1) * per_part, tasks)
        for task in range(part * per_part, end):
            attend_pair[scale](op, kp, vp, qkvp, pkp, pvp, mp, heads, past, d_head, task, task + 1 < end)

    sync_parallelize(run, parts)


@always_inline
def attend_pair[scale: Float64](
    op: Pointer[Float32, MutAnyOrigin],
    kp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    qkvp: Pointer[Float32, ImmutAnyOrigin],
    pkp: Pointer[Float32, ImmutAnyOrigin],
    pvp: Pointer[Float32, ImmutAnyOrigin],
    mp: Pointer[Float32, ImmutAnyOrigin],
    heads: Int,
    past: Int,
    d_head: Int,
    task: Int,
    next_follows: Bool,
):
    """One (row, head) pair of `attend`, task = row * heads + head, on the calling thread; if
    `next_follows`, it asks for the next pair's keys and values as it goes."""
    var width = heads * d_head
    var d_vec = d_head // W * W
    var b = task // heads
    var h = task % heads
    var q = qkvp.unsafe_offset(b * 3 * width + h * d_head)
    var k_new = q.unsafe_offset(width)
    var v_new = q.unsafe_offset(2 * width)
    var keys = pkp.unsafe_offset(task * past * d_head)  # (b, h) of (B, H, P, D)
    var values = pvp.unsafe_offset(task * past * d_head)
    var mask = mp.unsafe_offset(b * (past + 1))
    var out = op.unsafe_offset(b * width + h * d_head)
    for d in range(d_head):
        kp[unsafe_offset=task * d_head + d] = k_new[unsafe_offset=d]
        vp[unsafe_offset=task * d_head + d] = v_new[unsafe_offset=d]

    # Softmax of the scaled, masked scores; the new token is position `past`. A hidden
    # position's weight is 0, and its key and value are not read.
    var scores = alloc[Float32](past + 1)
    var top = Float32.MIN
    for j in range(past + 1):
        if mask[unsafe_offset=j] <= HIDDEN:
            continue
        if next_follows and j < past:  # the next pair's key j
            for d in range(0, d_head, W):
                prefetch[FETCH](keys.unsafe_offset((past + j) * d_head + d))
        var key = keys.unsafe_offset(j * d_head) if j < past else k_new
        var s = dot(q, key, d_head) * Float32(scale) + mask[unsafe_offset=j]
        scores[unsafe_offset=j] = s
        top = max(top, s)
    var total = Float32(0)
    for j in range(past + 1):
        if mask[unsafe_offset=j] <= HIDDEN:
            continue
        var e = exp(scores[unsafe_offset=j] - top)
        scores[unsafe_offset=j] = e
        total += e

    # out = sum_j weight_j * value_j, a head's D numbers kept in the output row.
    for d in range(d_head):
        out[unsafe_offset=d] = 0
    for j in range(past + 1):
        if mask[unsafe_offset=j] <= HIDDEN:
            continue
        var wj = scores[unsafe_offset=j] / total
        if next_follows and j < past:  # the next pair's value j
            for d in range(0, d_head, W):
                prefetch[FETCH](values.unsafe_offset((past + j) * d_head + d))
        var value = values.unsafe_offset(j * d_head) if j < past else v_new
        for d in range(0, d_vec, W):
            out.unsafe_store(d, out.unsafe_load[width=W](d) + wj * value.unsafe_load[width=W](d))
        for d in range(d_vec, d_head):
            out[unsafe_offset=d] += wj * value[unsafe_offset=d]
    scores.unsafe_free()
