# Matrix-vector products for decoding: out = x @ w.T + b for the few rows x of one decode step.
#
# At one token per row, every projection of GPT-2 reads its whole weight matrix to do two flops
# per weight, so decoding is bound by how fast the weights stream from memory. MAX's general
# matmul reads them well below the speed of a plain streaming read on this CPU (numbers in
# docs/benchmarks.md). These kernels stream each weight row once, front to back, and use it for
# every row of x while it is in L1. Prefill (many rows) keeps MAX's matmul, which blocks for
# compute.
#
# Each kernel launch also costs about 15 microseconds of scheduling (a chain of 200 launches on
# a 16 x 16 matrix, on 2 cores), near what a 768 x 768 projection takes to read, so the pieces
# around the projections of a block are done in the same launch: the layer norm before c_attn
# and c_fc, the GELU after c_fc, the residual add after each c_proj; attention is one launch of
# its own (attention.mojo).

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
    """Computes out[m, n] = sum_k x[m, k] * w[n, k] + b[n]; w is [N, K] as MAX's Linear keeps it.
    """

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=F32, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        matvec[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(), output.unsafe_ptr(),
                      x.dim_size(0), x.dim_size(1), w.dim_size(0))


@extensibility.register("gpt2_matvec_add")
struct MatVecAdd:
    """Computes out = r + x @ w.T + b: a block's output projection and its residual connection.
    """

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=F32, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        r: InputTensor[dtype=F32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        matvec[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(), r.unsafe_ptr(),
                      x.dim_size(0), x.dim_size(1), w.dim_size(0), add=True)


@extensibility.register("gpt2_norm_matvec")
struct NormMatVec[gelu: Bool, epsilon: Float64]:
    """Computes out = layer_norm(x) @ w.T + b, then GELU (tanh form) if `gelu`: ln_1 with c_attn,
    ln_2 with c_fc and its activation."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        gamma: InputTensor[dtype=F32, rank=1, ...],
        beta: InputTensor[dtype=F32, rank=1, ...],
        w: InputTensor[dtype=F32, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var m_rows = x.dim_size(0)
        var k_dim = x.dim_size(1)
        var xp = x.unsafe_ptr()
        var gp = gamma.unsafe_ptr()
        var bp = beta.unsafe_ptr()
        # A few rows of k_dim numbers: normalized once, here, then shared by every task.
        var normed = alloc[Float32](m_rows * k_dim)
        for m in range(m_rows):
            var mean = Float32(0)
            for k in range(k_dim):
                mean += xp[unsafe_offset=m * k_dim + k]
            mean /= Float32(k_dim)
            var var_ = Float32(0)
            for k in range(k_dim):
                var d = xp[unsafe_offset=m * k_dim + k] - mean
                var_ += d * d
            var rstd = 1 / sqrt(var_ / Float32(k_dim) + Float32(Self.epsilon))
            for k in range(k_dim):
                var d = xp[unsafe_offset=m * k_dim + k] - mean
                normed[unsafe_offset=m * k_dim + k] = d * rstd * gp[unsafe_offset=k] + bp[unsafe_offset=k]
        matvec[Self.gelu](output.unsafe_ptr(), normed, w.unsafe_ptr(), b.unsafe_ptr(), output.unsafe_ptr(),
                          m_rows, k_dim, w.dim_size(0))
        normed.unsafe_free()


@always_inline
def matvec[gelu: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool = False,
):
    """Computes out[m, n] = (rp[m, n] if add) + act(sum_k x[m, k] * w[n, k] + b[n]), on every core."""
    var k_vec = k_dim // W * W
    # Contiguous slices of rows, each task streaming its own part of w: four per core, which
    # balance well, or one per core for batches of eight rows or more. Their tile fetches 32 rows
    # ahead (below), so a slice's first 32 rows come on demand, and a quarter of the MLP's c_proj
    # (768 rows) is only 96 rows: one slice per core took 24 such matrices at 8 rows from 16.9
    # to 13.0 ms (one process), and at fewer rows made no difference.
    var tasks = num_physical_cores() * (1 if m_rows >= 8 else 4)
    var per_task = (n_dim + tasks - 1) // tasks

    @always_inline
    def store(m: Int, n: Int, s: Float32) {imm}:
        var y = s + bp[unsafe_offset=n]
        comptime if gelu:
            y = 0.5 * y * (1 + tanh(Float32(0.7978845608028654) * (y + Float32(0.044715) * y * y * y)))
        if add:
            y += rp[unsafe_offset=m * n_dim + n]
        op[unsafe_offset=m * n_dim + n] = y

    def rows(task: Int) {imm}:
        var n_end = min((task + 1) * per_task, n_dim)
        var n = task * per_task
        # Batches of eight rows or more: two rows of w against eight rows of x at a time, sixteen
        # sums in registers. Each row of w is read once, in one pass, at an even pace; rows ahead
        # are prefetched because the arithmetic keeps this loop too busy for the hardware to
        # fetch far enough ahead on its own (32 rows ahead into L2 did better than 8 into L1). At
        # 8 rows this takes the head from 7.2 to 5.5 ms and the blocks' projections from 17.5 to
        # 16.0 ms against the 4 x 4 tile below (same prefetch, one process). Near the end of w
        # the last rows are prefetched again, never memory past it.
        while n + 2 <= n_end and m_rows >= 8:
            var r0 = wp.unsafe_offset(n * k_dim)
            var r1 = wp.unsafe_offset((n + 1) * k_dim)
            var ahead = wp.unsafe_offset(min(n + AHEAD, n_dim - 2) * k_dim)
            var m = 0
            while m + 8 <= m_rows:
                var xr0 = xp.unsafe_offset((m + 0) * k_dim)
                var xr1 = xp.unsafe_offset((m + 1) * k_dim)
                var xr2 = xp.unsafe_offset((m + 2) * k_dim)
                var xr3 = xp.unsafe_offset((m + 3) * k_dim)
                var xr4 = xp.unsafe_offset((m + 4) * k_dim)
                var xr5 = xp.unsafe_offset((m + 5) * k_dim)
                var xr6 = xp.unsafe_offset((m + 6) * k_dim)
                var xr7 = xp.unsafe_offset((m + 7) * k_dim)
                var a00 = SIMD[F32, W](0)
                var a10 = SIMD[F32, W](0)
                var a01 = SIMD[F32, W](0)
                var a11 = SIMD[F32, W](0)
                var a02 = SIMD[F32, W](0)
                var a12 = SIMD[F32, W](0)
                var a03 = SIMD[F32, W](0)
                var a13 = SIMD[F32, W](0)
                var a04 = SIMD[F32, W](0)
                var a14 = SIMD[F32, W](0)
                var a05 = SIMD[F32, W](0)
                var a15 = SIMD[F32, W](0)
                var a06 = SIMD[F32, W](0)
                var a16 = SIMD[F32, W](0)
                var a07 = SIMD[F32, W](0)
                var a17 = SIMD[F32, W](0)
                for k in range(0, k_vec, W):
                    if m == 0:  # the first pass over these two rows streams them from memory
                        prefetch[FETCH](ahead.unsafe_offset(k))
                        prefetch[FETCH](ahead.unsafe_offset(k_dim + k))
                    var w0 = r0.unsafe_load[width=W](k)
                    var w1 = r1.unsafe_load[width=W](k)
                    var x0 = xr0.unsafe_load[width=W](k)
                    a00 += w0 * x0
                    a10 += w1 * x0
                    var x1 = xr1.unsafe_load[width=W](k)
                    a01 += w0 * x1
                    a11 += w1 * x1
                    var x2 = xr2.unsafe_load[width=W](k)
                    a02 += w0 * x2
                    a12 += w1 * x2
                    var x3 = xr3.unsafe_load[width=W](k)
                    a03 += w0 * x3
                    a13 += w1 * x3
                    var x4 = xr4.unsafe_load[width=W](k)
                    a04 += w0 * x4
                    a14 += w1 * x4
                    var x5 = xr5.unsafe_load[width=W](k)
                    a05 += w0 * x5
                    a15 += w1 * x5
                    var x6 = xr6.unsafe_load[width=W](k)
                    a06 += w0 * x6
                    a16 += w1 * x6
                    var x7 = xr7.unsafe_load[width=W](k)
                    a07 += w0 * x7
                    a17 += w1 * x7
                var s = SIMD[F32, 16](a00.reduce_add(), a01.reduce_add(), a02.reduce_add(), a03.reduce_add(), a04.reduce_add(), a05.reduce_add(), a06.reduce_add(), a07.reduce_add(), a10.reduce_add(), a11.reduce_add(), a12.reduce_add(), a13.reduce_add(), a14.reduce_add(), a15.reduce_add(), a16.reduce_add(), a17.reduce_add())  # s[8 * i + j]: row n + i of w, row m + j of x
                for k in range(k_vec, k_dim):
                    for i in range(2):
                        for j in range(8):
                            s[8 * i + j] += wp[unsafe_offset=(n + i) * k_dim + k] * xp[unsafe_offset=(m + j) * k_dim + k]
                for i in range(2):
                    for j in range(8):
                        store(m + j, n + i, s[8 * i + j])
                m += 8
            for i in range(2):
                for mm in range(m, m_rows):
                    store(mm, n + i, dot(wp.unsafe_offset((n + i) * k_dim), xp.unsafe_offset(mm * k_dim), k_dim))
            n += 2
        # Batches of four to seven rows: four rows of w against four rows of x at a time, sixteen
        # independent sums in registers, so that each load feeds four multiply-adds.
        while n + 4 <= n_end and m_rows >= 4:
            var r0 = wp.unsafe_offset(n * k_dim)
            var r1 = wp.unsafe_offset((n + 1) * k_dim)
            var r2 = wp.unsafe_offset((n + 2) * k_dim)
            var r3 = wp.unsafe_offset((n + 3) * k_dim)
            var ahead = wp.unsafe_offset(min(n + AHEAD, n_dim - 4) * k_dim)
            var m = 0
            while m + 4 <= m_rows:
                var xr0 = xp.unsafe_offset(m * k_dim)
                var xr1 = xp.unsafe_offset((m + 1) * k_dim)
                var xr2 = xp.unsafe_offset((m + 2) * k_dim)
                var xr3 = xp.unsafe_offset((m + 3) * k_dim)
                var a00 = SIMD[F32, W](0)
                var a01 = SIMD[F32, W](0)
                var a02 = SIMD[F32, W](0)
                var a03 = SIMD[F32, W](0)
                var a10 = SIMD[F32, W](0)
                var a11 = SIMD[F32, W](0)
                var a12 = SIMD[F32, W](0)
                var a13 = SIMD[F32, W](0)
                var a20 = SIMD[F32, W](0)
                var a21 = SIMD[F32, W](0)
                var a22 = SIMD[F32, W](0)
                var a23 = SIMD[F32, W](0)
                var a30 = SIMD[F32, W](0)
                var a31 = SIMD[F32, W](0)
                var a32 = SIMD[F32, W](0)
                var a33 = SIMD[F32, W](0)
                for k in range(0, k_vec, W):
                    var x0 = xr0.unsafe_load[width=W](k)
                    var x1 = xr1.unsafe_load[width=W](k)
                    var x2 = xr2.unsafe_load[width=W](k)
                    var x3 = xr3.unsafe_load[width=W](k)
                    if m == 0:  # as above
                        prefetch[FETCH](ahead.unsafe_offset(k))
                        prefetch[FETCH](ahead.unsafe_offset(k_dim + k))
                        prefetch[FETCH](ahead.unsafe_offset(2 * k_dim + k))
                        prefetch[FETCH](ahead.unsafe_offset(3 * k_dim + k))
                    var w0 = r0.unsafe_load[width=W](k)
                    a00 += w0 * x0
                    a01 += w0 * x1
                    a02 += w0 * x2
                    a03 += w0 * x3
                    var w1 = r1.unsafe_load[width=W](k)
                    a10 += w1 * x0
                    a11 += w1 * x1
                    a12 += w1 * x2
                    a13 += w1 * x3
                    var w2 = r2.unsafe_load[width=W](k)
                    a20 += w2 * x0
                    a21 += w2 * x1
                    a22 += w2 * x2
                    a23 += w2 * x3
                    var w3 = r3.unsafe_load[width=W](k)
                    a30 += w3 * x0
                    a31 += w3 * x1
                    a32 += w3 * x2
                    a33 += w3 * x3
                var s = SIMD[F32, 16](a00.reduce_add(), a01.reduce_add(), a02.reduce_add(), a03.reduce_add(), a10.reduce_add(), a11.reduce_add(), a12.reduce_add(), a13.reduce_add(), a20.reduce_add(), a21.reduce_add(), a22.reduce_add(), a23.reduce_add(), a30.reduce_add(), a31.reduce_add(), a32.reduce_add(), a33.reduce_add())  # s[4 * i + j]: row n + i of w, row m + j of x
                for k in range(k_vec, k_dim):
                    for i in range(4):
                        for j in range(4):
                            s[4 * i + j] += wp[unsafe_offset=(n + i) * k_dim + k] * xp[unsafe_offset=(m + j) * k_dim + k]
                for i in range(4):
                    for j in range(4):
                        store(m + j, n + i, s[4 * i + j])
                m += 4
            for i in range(4):
                for mm in range(m, m_rows):
                    store(mm, n + i, dot(wp.unsafe_offset((n + i) * k_dim), xp.unsafe_offset(mm * k_dim), k_dim))
            n += 4
        # Batch 1 (and what is left): one row of w at a time, streamed front to back.
        while n < n_end:
            for m in range(m_rows):
                store(m, n, dot(wp.unsafe_offset(n * k_dim), xp.unsafe_offset(m * k_dim), k_dim))
            n += 1

    sync_parallelize(rows, tasks)


@always_inline
def dot(r: Pointer[Float32, _], xr: Pointer[Float32, _], k_dim: Int) -> Float32:
    """Sum of r[k] * xr[k], with four partial sums so consecutive multiply-adds do not wait."""
    var a0 = SIMD[F32, W](0)
    var a1 = SIMD[F32, W](0)
    var a2 = SIMD[F32, W](0)
    var a3 = SIMD[F32, W](0)
    var k = 0
    while k + 4 * W <= k_dim:
        a0 += r.unsafe_load[width=W](k) * xr.unsafe_load[width=W](k)
        a1 += r.unsafe_load[width=W](k + W) * xr.unsafe_load[width=W](k + W)
        a2 += r.unsafe_load[width=W](k + 2 * W) * xr.unsafe_load[width=W](k + 2 * W)
        a3 += r.unsafe_load[width=W](k + 3 * W) * xr.unsafe_load[width=W](k + 3 * W)
        k += 4 * W
    var s = (a0 + a1 + a2 + a3).reduce_add()
    for kk in range(k, k_dim):
        s += r[unsafe_offset=kk] * xr[unsafe_offset=kk]
    return s
