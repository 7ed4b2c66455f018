# A matrix-vector product for decoding: out = x @ w.T + b for the few rows x of one decode step.
#
# At one token per row, every projection of GPT-2 reads its whole weight matrix to do two flops
# per weight, so decoding is bound by how fast the weights stream from memory. MAX's general
# matmul reads them well below the speed of a plain streaming read on this CPU (numbers in
# docs/benchmarks.md). This kernel streams each weight row once, front to back, and uses it for
# every row of x while it is in L1. Prefill (many rows) keeps MAX's matmul, which blocks for
# compute.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.sys.info import num_physical_cores

comptime F32 = DType.float32
comptime W = 16  # float32 lanes of one AVX-512 register


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
        var m_rows = x.dim_size(0)
        var k_dim = x.dim_size(1)
        var n_dim = w.dim_size(0)
        var xp = x.unsafe_ptr()
        var wp = w.unsafe_ptr()
        var bp = b.unsafe_ptr()
        var op = output.unsafe_ptr()
        var k_vec = k_dim // W * W
        # A few contiguous slices of rows per core: each task streams its own part of w.
        var tasks = num_physical_cores() * 4
        var per_task = (n_dim + tasks - 1) // tasks

        def rows(task: Int) {imm}:
            var n_end = min((task + 1) * per_task, n_dim)
            var n = task * per_task
            # Batches of four rows or more: two rows of w against four rows of x at a time,
            # eight independent sums, so that the multiply-adds, not the loads, set the pace.
            while n + 2 <= n_end and m_rows >= 4:
                var r0 = wp.unsafe_offset(n * k_dim)
                var r1 = wp.unsafe_offset((n + 1) * k_dim)
                var m = 0
                while m + 4 <= m_rows:
                    var x0 = xp.unsafe_offset(m * k_dim)
                    var x1 = xp.unsafe_offset((m + 1) * k_dim)
                    var x2 = xp.unsafe_offset((m + 2) * k_dim)
                    var x3 = xp.unsafe_offset((m + 3) * k_dim)
                    var a00 = SIMD[F32, W](0)
                    var a01 = SIMD[F32, W](0)
                    var a02 = SIMD[F32, W](0)
                    var a03 = SIMD[F32, W](0)
                    var a10 = SIMD[F32, W](0)
                    var a11 = SIMD[F32, W](0)
                    var a12 = SIMD[F32, W](0)
                    var a13 = SIMD[F32, W](0)
                    for k in range(0, k_vec, W):
                        var w0 = r0.unsafe_load[width=W](k)
                        var w1 = r1.unsafe_load[width=W](k)
                        var v0 = x0.unsafe_load[width=W](k)
                        var v1 = x1.unsafe_load[width=W](k)
                        var v2 = x2.unsafe_load[width=W](k)
                        var v3 = x3.unsafe_load[width=W](k)
                        a00 += w0 * v0
                        a01 += w0 * v1
                        a02 += w0 * v2
                        a03 += w0 * v3
                        a10 += w1 * v0
                        a11 += w1 * v1
                        a12 += w1 * v2
                        a13 += w1 * v3
                    var s = SIMD[F32, 8](
                        a00.reduce_add(), a01.reduce_add(), a02.reduce_add(), a03.reduce_add(),
                        a10.reduce_add(), a11.reduce_add(), a12.reduce_add(), a13.reduce_add(),
                    )
                    for k in range(k_vec, k_dim):
                        for j in range(4):
                            var xk = xp[unsafe_offset=(m + j) * k_dim + k]
                            s[j] += r0[unsafe_offset=k] * xk
                            s[4 + j] += r1[unsafe_offset=k] * xk
                    for j in range(4):
                        op[unsafe_offset=(m + j) * n_dim + n] = s[j] + bp[unsafe_offset=n]
                        op[unsafe_offset=(m + j) * n_dim + n + 1] = s[4 + j] + bp[unsafe_offset=n + 1]
                    m += 4
                for i in range(2):
                    for mm in range(m, m_rows):
                        op[unsafe_offset=mm * n_dim + n + i] = dot(wp.unsafe_offset((n + i) * k_dim), xp.unsafe_offset(mm * k_dim), k_dim) + bp[unsafe_offset=n + i]
                n += 2
            # Batch 1 (and what is left): one row of w at a time, streamed front to back.
            while n < n_end:
                for m in range(m_rows):
                    op[unsafe_offset=m * n_dim + n] = dot(wp.unsafe_offset(n * k_dim), xp.unsafe_offset(m * k_dim), k_dim) + bp[unsafe_offset=n]
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
