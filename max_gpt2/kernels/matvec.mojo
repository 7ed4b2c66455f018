# Matrix-vector products for decoding: out = x @ w.T + b for the few rows x of one decode step.
#
# At one token per row, every projection of GPT-2 reads its whole weight matrix to do two flops
# per weight, so decoding is bound by how fast the weights stream from memory. MAX's general
# matmul blocks for compute and reads them well below streaming speed. These kernels stream each
# weight row once, front to back, and use it for every row of x while it is in L1. Float32
# weights take them for few rows and MAX's matmul for many, chosen as the graph runs
# (linear.mojo); narrow weights (below) take these kernels in every graph (max_gpt2/narrow.py
# says why).
#
# Each kernel launch also has a fixed scheduling cost near what a small projection takes to
# read, so the pieces around the projections of a block are done in the same launch: the layer
# norm before c_attn and c_fc, the GELU after c_fc, the residual add after each c_proj;
# attention is one launch of its own (attention.mojo). Every choice here was measured: the
# figures, and what was tried and not kept, are in docs/benchmarks.md.
#
# The weights may be held narrower than the float32 arithmetic, in bfloat16. Each vector of w is
# widened to float32 in registers as it is loaded, so the sums are float32 as before, and a
# narrower w is fewer bytes to stream, which is the whole cost of a decode step. int8 weights
# have kernels of their own, in integer arithmetic (int8.mojo).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import sqrt, tanh
from std.memory import alloc
from std.sys.info import num_physical_cores
from std.sys.intrinsics import prefetch, PrefetchOptions

comptime F32 = DType.float32
comptime W = 16  # float32 lanes of one AVX-512 register
comptime AHEAD = 32  # rows of w the batch tiles ask for before they need them
comptime FETCH = PrefetchOptions().for_read().medium_locality().to_data_cache()  # into L2, not L1


@extensibility.register("gpt2_matvec")
struct MatVec:
    """Computes out[m, n] = sum_k x[m, k] * w[n, k] + b[n]; w is [N, K] as MAX's Linear keeps it,
    in float32 or bfloat16.
    """

    @staticmethod
    def execute[target: StaticString, wdt: DType](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=wdt, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        matvec[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(),
                      output.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0))


@extensibility.register("gpt2_matvec_add")
struct MatVecAdd:
    """Computes out = r + x @ w.T + b: a block's output projection and its residual connection.
    """

    @staticmethod
    def execute[target: StaticString, wdt: DType](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=wdt, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        r: InputTensor[dtype=F32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        matvec[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(),
                      r.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0), add=True)


@extensibility.register("gpt2_norm_matvec")
struct NormMatVec[gelu: Bool, epsilon: Float64]:
    """Computes out = layer_norm(x) @ w.T + b, then GELU (tanh form) if `gelu`: ln_1 with c_attn,
    ln_2 with c_fc and its activation."""

    @staticmethod
    def execute[target: StaticString, wdt: DType](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        gamma: InputTensor[dtype=F32, rank=1, ...],
        beta: InputTensor[dtype=F32, rank=1, ...],
        w: InputTensor[dtype=wdt, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var normed = layer_norm[Self.epsilon](x.unsafe_ptr(), gamma.unsafe_ptr(), beta.unsafe_ptr(), x.dim_size(0),
                                              x.dim_size(1))
        matvec[Self.gelu](output.unsafe_ptr(), normed, w.unsafe_ptr(), b.unsafe_ptr(),
                          output.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0))
        normed.unsafe_free()


def layer_norm[epsilon: Float64](
    xp: Pointer[Float32, _], gp: Pointer[Float32, _], bp: Pointer[Float32, _], m_rows: Int, k_dim: Int
) -> Pointer[Float32, MutUntrackedOrigin]:
    """The rows of x layer-normed into new memory (the caller frees it): normed once, here, then
    shared by every task of the product. In vectors of W, and a prompt's many rows (linear.mojo
    takes them to MAX's matmul) on every core; a decode step's few rows are not worth waking the
    other core for."""
    var normed = alloc[Float32](m_rows * k_dim)
    var tasks = num_physical_cores() if m_rows >= 16 else 1
    var per_task = (m_rows + tasks - 1) // tasks

    def rows(task: Int) {imm}:
        norm_rows[epsilon](normed.unsafe_origin_cast[MutAnyOrigin](), xp, gp, bp, task * per_task, min((task + 1) * per_task, m_rows), k_dim)

    sync_parallelize(rows, tasks)
    return normed


@always_inline
def norm_rows[epsilon: Float64](
    normed: Pointer[Float32, MutAnyOrigin], xp: Pointer[Float32, _], gp: Pointer[Float32, _],
    bp: Pointer[Float32, _], m_start: Int, m_end: Int, k_dim: Int
):
    """Rows m_start..m_end of x layer-normed into the same rows of `normed`, on the calling thread."""
    for m in range(m_start, m_end):
        var xr = xp.unsafe_offset(m * k_dim)
        var out = normed.unsafe_offset(m * k_dim)
        var mean = row_sum[False](xr, 0, k_dim) / Float32(k_dim)
        var rstd = 1 / sqrt(row_sum[True](xr, mean, k_dim) / Float32(k_dim) + Float32(epsilon))
        var k = 0
        while k + W <= k_dim:
            var d = xr.unsafe_load[width=W](k) - mean
            out.unsafe_store(k, d * rstd * gp.unsafe_load[width=W](k) + bp.unsafe_load[width=W](k))
            k += W
        for kk in range(k, k_dim):
            out[unsafe_offset=kk] = (xr[unsafe_offset=kk] - mean) * rstd * gp[unsafe_offset=kk] + bp[unsafe_offset=kk]


@always_inline
def row_sum[squares: Bool](xr: Pointer[Float32, _], mean: Float32, k_dim: Int) -> Float32:
    """Sum over one row of x[k] - mean, or of its squares if `squares`, in vectors of W."""
    var acc = SIMD[F32, W](0)
    var k = 0
    while k + W <= k_dim:
        var d = xr.unsafe_load[width=W](k) - mean
        comptime if squares:
            d = d * d
        acc += d
        k += W
    var s = acc.reduce_add()
    for kk in range(k, k_dim):
        var d = xr[unsafe_offset=kk] - mean
        comptime if squares:
            d = d * d
        s += d
    return s


@always_inline
def matvec[gelu: Bool, wdt: DType](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool = False,
):
    """Computes out[m, n] = (rp[m, n] if add) + act(sum_k x[m, k] * w[n, k] + b[n]),
    on every core; w is widened to float32 as it is read."""
    # Contiguous slices of rows, each task streaming its own part of w: four per core, which
    # balance well, or one per core for batches of eight rows or more. Their tiles fetch 32 rows
    # ahead (below), so a slice's first 32 rows come on demand, and a quarter of the MLP's c_proj
    # (768 rows) is only 96 rows: too short a slice for the prefetch to take hold.
    var tasks = num_physical_cores() * (1 if m_rows >= 8 else 4)
    var per_task = (n_dim + tasks - 1) // tasks

    def rows(task: Int) {imm}:
        matvec_rows[gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, task * per_task,
                          min((task + 1) * per_task, n_dim))

    sync_parallelize(rows, tasks)


@always_inline
def matvec_rows[gelu: Bool, wdt: DType](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool,
    n_start: Int,
    n_end: Int,
):
    """Rows n_start..n_end of matvec's out, on the calling thread: one task's part."""
    var n = n_start
    # A tile of sums in registers, so that each load of w feeds several rows of x and each
    # load of x several rows of w. AVX-512 has 32 registers: a tile of 24 sums leaves room
    # for its loads of w and x. Three rows of w against eight rows of x for a batch of 8 to
    # 11 rows; four against six for 12 rows or more (a short prompt); four against four for
    # four to seven rows. The 4 x 8 tile these replaced held 32 sums, with nothing left for
    # the loads. Against it, in three rounds of interleaved processes (docs/benchmarks.md):
    # batch-8 decode from 319-322 to 331-353 tokens/s in float32 and from 404-407 to 430-453
    # in bfloat16, a 16-row prefill from 33.5-35.2 to 32.2-32.8 ms, a 32-row one from
    # 59.5-61.3 to 53.4-55.1 ms.
    if m_rows >= 12:
        n = tiles[4, 6, gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
    elif m_rows >= 8:
        n = tiles[3, 8, gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
    elif m_rows >= 4:
        n = tiles[4, 4, gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
    else:
        # Float32 at batch 1 to 3: four rows of w at a time against each row of x, so that four
        # streams come from memory side by side. Against one row at a time, in five interleaved
        # pairs of processes: float32 decode 3-29% faster at batch 1 (docs/benchmarks.md). Not
        # for bfloat16 (11-23% slower) nor int8 (int8.mojo: about 30% slower), whose loops do
        # more work a byte.
        comptime if wdt == F32:
            n = tiles[4, 1, gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add, n, n_end)
    # Batch 1 of narrow weights (and what is left): one row of w at a time, streamed front to back.
    while n < n_end:
        for m in range(m_rows):
            var s = dot(wp.unsafe_offset(n * k_dim), xp.unsafe_offset(m * k_dim), k_dim)
            store[gelu](op, bp, rp, n_dim, add, m, n, s)
        n += 1


@always_inline
def tiles[nw: Int, mx: Int, gelu: Bool, wdt: DType](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool,
    n_start: Int,
    n_end: Int,
) -> Int:
    """Rows n_start.. of out, `nw` rows of w at a time against blocks of `mx` rows of x, then
    against the rows of x left (4, 2, 1); returns the first row of w it left for the caller
    (fewer than `nw` remain)."""
    var n = n_start
    while n + nw <= n_end:
        var m = 0
        while m + mx <= m_rows:
            block[nw, mx, gelu](op, xp, wp, bp, rp, k_dim, n_dim, add, n, m)
            m += mx
        # The rows left over, a few at a time rather than one by one, which would re-read
        # every row of w for each.
        comptime if mx > 4:
            if m + 4 <= m_rows:
                block[nw, 4, gelu](op, xp, wp, bp, rp, k_dim, n_dim, add, n, m)
                m += 4
        if m + 2 <= m_rows:
            block[nw, 2, gelu](op, xp, wp, bp, rp, k_dim, n_dim, add, n, m)
            m += 2
        if m < m_rows:
            block[nw, 1, gelu](op, xp, wp, bp, rp, k_dim, n_dim, add, n, m)
        n += nw
    return n


@always_inline
def block[nw: Int, mx: Int, gelu: Bool, wdt: DType](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Scalar[wdt], _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    k_dim: Int,
    n_dim: Int,
    add: Bool,
    n: Int,
    m: Int,
):
    """out for rows n..n + nw of w and rows m..m + mx of x: nw * mx sums in registers, so that
    each load of w feeds mx multiply-adds and each load of x nw."""
    var k_vec = k_dim // W * W
    # Each row of w is read once, in one pass, at an even pace, by the first block (m = 0);
    # rows ahead are prefetched because the arithmetic keeps this loop too busy for the hardware
    # to fetch far enough ahead on its own (into L2, which measured better than into L1).
    # Near the end of w the last rows are prefetched again, never memory past it. A block of
    # one row of x (batch 1) is not busy enough for that: there the prefetches cost more than
    # they gave (float32 decode 69-80 tokens/s with them, 77-111 without, in interleaved pairs).
    var ahead = wp.unsafe_offset(min(n + AHEAD, n_dim - nw) * k_dim)
    var acc = Array[SIMD[F32, W], nw * mx](fill=SIMD[F32, W](0))  # acc[mx * i + j]: row n + i of w, row m + j of x
    for k in range(0, k_vec, W):
        if m == 0 and mx > 1:
            comptime for i in range(nw):
                prefetch[FETCH](ahead.unsafe_offset(i * k_dim + k))
        var ws = Array[SIMD[F32, W], nw](uninitialized=True)
        comptime for i in range(nw):
            ws[i] = wp.unsafe_offset((n + i) * k_dim).unsafe_load[width=W](k).cast[F32]()
        comptime for j in range(mx):
            var xv = xp.unsafe_offset((m + j) * k_dim).unsafe_load[width=W](k)
            comptime for i in range(nw):
                acc[mx * i + j] += ws[i] * xv
    comptime for i in range(nw):
        comptime for j in range(mx):
            var s = acc[mx * i + j].reduce_add()
            for k in range(k_vec, k_dim):
                s += wp[unsafe_offset=(n + i) * k_dim + k].cast[F32]() * xp[unsafe_offset=(m + j) * k_dim + k]
            store[gelu](op, bp, rp, n_dim, add, m + j, n + i, s)


@always_inline
def store[gelu: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    n_dim: Int,
    add: Bool,
    m: Int,
    n: Int,
    s: Float32,
):
    """out[m, n] = (rp[m, n] if add) + act(s + b[n])."""
    var y = s + bp[unsafe_offset=n]
    comptime if gelu:
        y = gelu_tanh(y)
    if add:
        y += rp[unsafe_offset=m * n_dim + n]
    op[unsafe_offset=m * n_dim + n] = y


@always_inline
def gelu_tanh[width: SIMDLength](y: SIMD[F32, width]) -> SIMD[F32, width]:
    """GELU in the tanh form GPT-2 was trained with (HF's gelu_new), on `width` lanes at once."""
    return 0.5 * y * (1 + tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))


@always_inline
def dot[wdt: DType](r: Pointer[Scalar[wdt], _], xr: Pointer[Float32, _], k_dim: Int) -> Float32:
    """Sum of r[k] * xr[k] (r widened to float32), with four partial sums so consecutive
    multiply-adds do not wait."""
    var a0 = SIMD[F32, W](0)
    var a1 = SIMD[F32, W](0)
    var a2 = SIMD[F32, W](0)
    var a3 = SIMD[F32, W](0)
    var k = 0
    while k + 4 * W <= k_dim:
        a0 += r.unsafe_load[width=W](k).cast[F32]() * xr.unsafe_load[width=W](k)
        a1 += r.unsafe_load[width=W](k + W).cast[F32]() * xr.unsafe_load[width=W](k + W)
        a2 += r.unsafe_load[width=W](k + 2 * W).cast[F32]() * xr.unsafe_load[width=W](k + 2 * W)
        a3 += r.unsafe_load[width=W](k + 3 * W).cast[F32]() * xr.unsafe_load[width=W](k + 3 * W)
        k += 4 * W
    var s = (a0 + a1 + a2 + a3).reduce_add()
    for kk in range(k, k_dim):
        s += r[unsafe_offset=kk].cast[F32]() * xr[unsafe_offset=kk]
    return s
