# A whole GPT-2 block of one decode step in one launch: ln_1 and c_attn, attention over the
# cache, c_proj and the residual, ln_2, c_fc and GELU, the MLP's c_proj and the residual.
#
# The block's stages depend on each other, so the cores must wait for each other between them.
# As separate launches (or as one launch of several parallel loops), every stage wakes the
# runtime's worker threads and waits for them to sleep again. Here the cores are woken once a
# block: each takes chunks of a stage's work through an atomic counter and, at the end of the
# stage, waits on a second counter until every chunk is done. A core that finds no chunk left
# waits only for chunks another core has taken and is working on, so the launch finishes whether
# the runtime runs its tasks side by side or one after the other.
#
# Against five launches a block, in interleaved processes (docs/benchmarks.md): float32 decode
# 4-22% faster at batch 1 and 4-9% at batch 8, int8 at batch 1 3-13%; bfloat16 level but for
# one pair, and int8 at batch 8 slower chunked (two pairs of three). int8 batches of 8 rows or more run the stages as before, one parallel loop
# after another (`by_stages`), which measured faster for them; so do float32 batches past
# matvec's rows, whose projections take MAX's matmul.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.atomic import Atomic
from std.ffi import external_call
from std.memory import alloc
from std.sys import llvm_intrinsic
from std.sys.info import num_physical_cores

from .attention import attend, attend_pair
from .int8 import digits, product, product_rows
from .linear import project
from .matvec import F32, layer_norm, matvec, matvec_rows, norm_rows

comptime LINE = 8  # Int64s in a cache line: each stage's counters on a line of their own
comptime STAGES = 8
# int8 decode batches of more rows than this run the block by stages: measured faster at 8 rows
# (docs/benchmarks.md).
comptime INT8_CHUNKED_ROWS = 7


@extensibility.register("gpt2_decode_block")
struct DecodeBlock[epsilon: Float64, scale: Float64, few_rows: Int]:
    """x (B, C) through one block with float32 or bfloat16 weights, for one new token per row:
    x_out (B, C), and the token's key and value (B, H, 1, D) for the caller to store. The cache
    (B, H, P, D) and key_mask (B, P + 1) are as for gpt2_decode_attention. Float32 weights with
    more than `few_rows` rows take MAX's matmul, as in linear.mojo (`by_stages`)."""

    @staticmethod
    def execute[target: StaticString, wdt: DType](
        x_out: OutputTensor[dtype=F32, rank=2, ...],
        new_k: OutputTensor[dtype=F32, rank=4, ...],
        new_v: OutputTensor[dtype=F32, rank=4, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        past_k: InputTensor[dtype=F32, rank=4, ...],
        past_v: InputTensor[dtype=F32, rank=4, ...],
        key_mask: InputTensor[dtype=F32, rank=2, ...],
        ln_1_w: InputTensor[dtype=F32, rank=1, ...],
        ln_1_b: InputTensor[dtype=F32, rank=1, ...],
        c_attn_w: InputTensor[dtype=wdt, rank=2, ...],
        c_attn_b: InputTensor[dtype=F32, rank=1, ...],
        attn_proj_w: InputTensor[dtype=wdt, rank=2, ...],
        attn_proj_b: InputTensor[dtype=F32, rank=1, ...],
        ln_2_w: InputTensor[dtype=F32, rank=1, ...],
        ln_2_b: InputTensor[dtype=F32, rank=1, ...],
        c_fc_w: InputTensor[dtype=wdt, rank=2, ...],
        c_fc_b: InputTensor[dtype=F32, rank=1, ...],
        mlp_proj_w: InputTensor[dtype=wdt, rank=2, ...],
        mlp_proj_b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        # A float weight has no scales: its bias stands in, never read. bfloat16 takes matvec at
        # every row count, as in the five launches (max_gpt2/narrow.py).
        comptime chunked_rows = Self.few_rows if wdt == F32 else Int.MAX
        block[Self.epsilon, Self.scale, chunked_rows](
            x_out.unsafe_ptr(), new_k.unsafe_ptr(), new_v.unsafe_ptr(), x.unsafe_ptr(), past_k.unsafe_ptr(),
            past_v.unsafe_ptr(), key_mask.unsafe_ptr(), ln_1_w.unsafe_ptr(), ln_1_b.unsafe_ptr(),
            c_attn_w.unsafe_ptr(), c_attn_b.unsafe_ptr(), c_attn_b.unsafe_ptr(),
            attn_proj_w.unsafe_ptr(), attn_proj_b.unsafe_ptr(), attn_proj_b.unsafe_ptr(),
            ln_2_w.unsafe_ptr(), ln_2_b.unsafe_ptr(),
            c_fc_w.unsafe_ptr(), c_fc_b.unsafe_ptr(), c_fc_b.unsafe_ptr(),
            mlp_proj_w.unsafe_ptr(), mlp_proj_b.unsafe_ptr(), mlp_proj_b.unsafe_ptr(),
            past_k.dim_size(0), past_k.dim_size(1), past_k.dim_size(2), past_k.dim_size(3), c_fc_w.dim_size(0))


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
        block[Self.epsilon, Self.scale, INT8_CHUNKED_ROWS](
            x_out.unsafe_ptr(), new_k.unsafe_ptr(), new_v.unsafe_ptr(), x.unsafe_ptr(), past_k.unsafe_ptr(),
            past_v.unsafe_ptr(), key_mask.unsafe_ptr(), ln_1_w.unsafe_ptr(), ln_1_b.unsafe_ptr(),
            c_attn_w.unsafe_ptr(), c_attn_s.unsafe_ptr(), c_attn_b.unsafe_ptr(),
            attn_proj_w.unsafe_ptr(), attn_proj_s.unsafe_ptr(), attn_proj_b.unsafe_ptr(),
            ln_2_w.unsafe_ptr(), ln_2_b.unsafe_ptr(),
            c_fc_w.unsafe_ptr(), c_fc_s.unsafe_ptr(), c_fc_b.unsafe_ptr(),
            mlp_proj_w.unsafe_ptr(), mlp_proj_s.unsafe_ptr(), mlp_proj_b.unsafe_ptr(),
            past_k.dim_size(0), past_k.dim_size(1), past_k.dim_size(2), past_k.dim_size(3), c_fc_w.dim_size(0))


@always_inline
def claim(counters: Pointer[Int64, MutAnyOrigin], stage: Int) -> Int:
    """The next chunk of `stage` for the calling core (the number of chunks or more: none left)."""
    return Int(Atomic.fetch_add(counters.unsafe_offset(stage * LINE), 1))


@always_inline
def finish(counters: Pointer[Int64, MutAnyOrigin], stage: Int):
    """Counts one chunk of `stage` done; its results are written before the count is."""
    _ = Atomic.fetch_add(counters.unsafe_offset(stage * LINE + 1), 1)


@always_inline
def wait(counters: Pointer[Int64, MutAnyOrigin], stage: Int, chunks: Int):
    """Waits until all `chunks` of `stage` are done: spinning at first, then giving the core
    away between looks. Spinning alone measured slower than five launches (float32 decode 73-88
    tokens/s against 91-96): the runtime may have another thread to run on the core, and may
    not yet have started the task the spinning one waits for."""
    var spins = 0
    while Int(Atomic.load(counters.unsafe_offset(stage * LINE + 1))) < chunks:
        if spins < 2000:
            llvm_intrinsic["llvm.x86.sse2.pause", NoneType]()
            spins += 1
        else:
            _ = external_call["sched_yield", Int32]()


@always_inline
def alone(counters: Pointer[Int64, MutAnyOrigin], stage: Int) -> Bool:
    """Whether the calling core is the one to do `stage`, a single chunk; if not it waits for it.
    The one that does it calls `finish`."""
    if claim(counters, stage) == 0:
        return True
    wait(counters, stage, 1)
    return False


@always_inline
def chunked[gelu: Bool, wdt: DType](
    counters: Pointer[Int64, MutAnyOrigin],
    stage: Int,
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    qp: Pointer[Int16, _],
    steps: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    sp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool,
):
    """One projection as a stage: matvec's (or for int8 weights, int8.mojo's product's) out in
    chunks of rows of w, as many as matvec's tasks and for the same reasons, each a multiple of
    the tiles' 3 and 4 rows."""
    var parts = num_physical_cores() * (1 if m_rows >= 8 else 4)
    var per = ((n_dim + parts - 1) // parts + 11) // 12 * 12
    var chunks = (n_dim + per - 1) // per
    var i = claim(counters, stage)
    while i < chunks:
        var n = i * per
        var n_end = min(n + per, n_dim)
        comptime if wdt == DType.int8:
            product_rows[gelu](op, qp, steps, wp.bitcast[Int8](), sp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
        else:
            matvec_rows[gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
        finish(counters, stage)
        i = claim(counters, stage)
    wait(counters, stage, chunks)


def block[epsilon: Float64, scale: Float64, chunked_rows: Int, wdt: DType](
    xo: Pointer[Float32, MutAnyOrigin],
    kp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    pkp: Pointer[Float32, ImmutAnyOrigin],
    pvp: Pointer[Float32, ImmutAnyOrigin],
    mp: Pointer[Float32, ImmutAnyOrigin],
    g1: Pointer[Float32, _],
    b1: Pointer[Float32, _],
    w_attn: Pointer[Scalar[wdt], _],
    s_attn: Pointer[Float32, _],
    bias_attn: Pointer[Float32, _],
    w_proj: Pointer[Scalar[wdt], _],
    s_proj: Pointer[Float32, _],
    bias_proj: Pointer[Float32, _],
    g2: Pointer[Float32, _],
    b2: Pointer[Float32, _],
    w_fc: Pointer[Scalar[wdt], _],
    s_fc: Pointer[Float32, _],
    bias_fc: Pointer[Float32, _],
    w_mlp: Pointer[Scalar[wdt], _],
    s_mlp: Pointer[Float32, _],
    bias_mlp: Pointer[Float32, _],
    rows: Int,
    heads: Int,
    past: Int,
    d_head: Int,
    inner: Int,
) raises:
    """GPT2Block.forward_cached for one token per row, as GPT2Decode.block does it in five
    launches; the residual stream is kept in xo from the first residual add on. The s_ pointers
    are int8 weights' row scales, read only for int8. More than `chunked_rows` rows go
    `by_stages` (for float32 weights that is FEW_ROWS, the rows matvec takes)."""
    if rows > chunked_rows:
        by_stages[epsilon, scale, chunked_rows](xo, kp, vp, xp, pkp, pvp, mp, g1, b1, w_attn, s_attn, bias_attn, w_proj,
                                            s_proj, bias_proj, g2, b2, w_fc, s_fc, bias_fc, w_mlp, s_mlp, bias_mlp,
                                            rows, heads, past, d_head, inner)
        return
    comptime int8 = wdt == DType.int8
    var c = heads * d_head
    var qkv = alloc[Float32](rows * 3 * c).unsafe_origin_cast[MutAnyOrigin]()
    var att = alloc[Float32](rows * c).unsafe_origin_cast[MutAnyOrigin]()
    var h = alloc[Float32](rows * inner).unsafe_origin_cast[MutAnyOrigin]()
    var normed = alloc[Float32](rows * c).unsafe_origin_cast[MutAnyOrigin]()
    # int8: the digits of each product's x (int8.mojo), the widest x being the MLP's.
    var qp = alloc[Int16](rows * max(c, inner)).unsafe_origin_cast[MutAnyOrigin]()
    var steps = alloc[Float32](rows).unsafe_origin_cast[MutAnyOrigin]()
    var counters = alloc[Int64](STAGES * LINE).unsafe_origin_cast[MutAnyOrigin]()
    for i in range(STAGES * LINE):
        counters[unsafe_offset=i] = 0
    var qkv_in = qkv.unsafe_mut_cast[False]().unsafe_origin_cast[ImmutAnyOrigin]()
    var pairs = rows * heads
    var cores = num_physical_cores()
    # Runs of consecutive (row, head) pairs, each asking for the next pair's cache as it goes:
    # two runs a core.
    var per_run = max(1, (pairs + 2 * cores - 1) // (2 * cores))
    var runs = (pairs + per_run - 1) // per_run
    norm_rows[epsilon](normed, xp, g1, b1, 0, rows, c)
    comptime if int8:
        digits(normed, qp, steps, rows, c)

    def work(task: Int) {imm}:
        chunked[False](counters, 0, qkv, normed, qp, steps, w_attn, s_attn, bias_attn, qkv, rows, c, 3 * c, False)
        var i = claim(counters, 1)
        while i < runs:
            var end = min((i + 1) * per_run, pairs)
            for t in range(i * per_run, end):
                attend_pair[scale](att, kp, vp, qkv_in, pkp, pvp, mp, heads, past, d_head, t, t + 1 < end)
            finish(counters, 1)
            i = claim(counters, 1)
        wait(counters, 1, runs)
        comptime if int8:
            if alone(counters, 2):
                digits(att, qp, steps, rows, c)
                finish(counters, 2)
        chunked[False](counters, 3, xo, att, qp, steps, w_proj, s_proj, bias_proj, xp, rows, c, c, True)
        if alone(counters, 4):
            norm_rows[epsilon](normed, xo, g2, b2, 0, rows, c)
            comptime if int8:
                digits(normed, qp, steps, rows, c)
            finish(counters, 4)
        chunked[True](counters, 5, h, normed, qp, steps, w_fc, s_fc, bias_fc, h, rows, c, inner, False)
        comptime if int8:
            if alone(counters, 6):
                digits(h, qp, steps, rows, inner)
                finish(counters, 6)
        # In place: each element of the residual is read and then written by the same chunk.
        chunked[False](counters, 7, xo, h, qp, steps, w_mlp, s_mlp, bias_mlp, xo, rows, inner, c, True)

    sync_parallelize(work, cores)
    qkv.unsafe_free()
    att.unsafe_free()
    h.unsafe_free()
    normed.unsafe_free()
    qp.unsafe_free()
    steps.unsafe_free()
    counters.unsafe_free()


def by_stages[epsilon: Float64, scale: Float64, few_rows: Int, wdt: DType](
    xo: Pointer[Float32, MutAnyOrigin],
    kp: Pointer[Float32, MutAnyOrigin],
    vp: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    pkp: Pointer[Float32, ImmutAnyOrigin],
    pvp: Pointer[Float32, ImmutAnyOrigin],
    mp: Pointer[Float32, ImmutAnyOrigin],
    g1: Pointer[Float32, _],
    b1: Pointer[Float32, _],
    w_attn: Pointer[Scalar[wdt], _],
    s_attn: Pointer[Float32, _],
    bias_attn: Pointer[Float32, _],
    w_proj: Pointer[Scalar[wdt], _],
    s_proj: Pointer[Float32, _],
    bias_proj: Pointer[Float32, _],
    g2: Pointer[Float32, _],
    b2: Pointer[Float32, _],
    w_fc: Pointer[Scalar[wdt], _],
    s_fc: Pointer[Float32, _],
    bias_fc: Pointer[Float32, _],
    w_mlp: Pointer[Scalar[wdt], _],
    s_mlp: Pointer[Float32, _],
    bias_mlp: Pointer[Float32, _],
    rows: Int,
    heads: Int,
    past: Int,
    d_head: Int,
    inner: Int,
) raises:
    """The same block for a batch of many rows: each stage by the kernels' own parallel loops,
    one after another, as the five launches do it; float32 projections past `few_rows` rows by
    MAX's matmul (linear.mojo), which is faster there (docs/benchmarks.md, *Design decisions*)."""
    var c = heads * d_head
    var qkv = alloc[Float32](rows * 3 * c).unsafe_origin_cast[MutAnyOrigin]()
    var att = alloc[Float32](rows * c).unsafe_origin_cast[MutAnyOrigin]()
    var mid = alloc[Float32](rows * c).unsafe_origin_cast[MutAnyOrigin]()  # x after attention
    var h = alloc[Float32](rows * inner).unsafe_origin_cast[MutAnyOrigin]()
    var normed = layer_norm[epsilon](xp, g1, b1, rows, c)
    stage[few_rows, False, False](qkv, normed, w_attn, s_attn, bias_attn, qkv, rows, c, 3 * c)
    normed.unsafe_free()
    attend[scale](att, kp, vp, qkv.unsafe_mut_cast[False]().unsafe_origin_cast[ImmutAnyOrigin](), pkp, pvp, mp, rows,
                  heads, past, d_head)
    stage[few_rows, False, True](mid, att, w_proj, s_proj, bias_proj, xp, rows, c, c)
    normed = layer_norm[epsilon](mid, g2, b2, rows, c)
    stage[few_rows, True, False](h, normed, w_fc, s_fc, bias_fc, h, rows, c, inner)
    normed.unsafe_free()
    stage[few_rows, False, True](xo, h, w_mlp, s_mlp, bias_mlp, mid, rows, inner, c)
    qkv.unsafe_free()
    att.unsafe_free()
    mid.unsafe_free()
    h.unsafe_free()


@always_inline
def stage[few_rows: Int, gelu: Bool, add: Bool, wdt: DType](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    sp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
) raises:
    """One projection of `by_stages` on every core: int8.mojo's product, linear.mojo's for float32
    (matvec or MAX's matmul), matvec for bfloat16."""
    comptime if wdt == DType.int8:
        product[gelu](op, xp, wp.bitcast[Int8](), sp, bp, rp, m_rows, k_dim, n_dim, add=add)
    elif wdt == F32:
        project[few_rows, gelu, add](op, xp, wp.bitcast[Float32](), bp, rp, m_rows, k_dim, n_dim)
    else:
        matvec[gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add=add)
