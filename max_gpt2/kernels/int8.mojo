# Products with int8 weights in integer arithmetic: out = x @ (s * w).T + b for int8 w [N, K] with
# s[n], the float32 scale of row n of w (max_gpt2/precision.py).
#
# Widening each int8 weight to float32 in registers (sign-extend, convert, multiply-add: three
# instructions for sixteen products) leaves the kernels bound by arithmetic rather than by the
# bytes of weight they read, which narrowing was meant to make the cost. The CPU's VNNI dot
# products (vpdpwssd: pairs of int16 products summed into int32) do thirty-two products in one
# instruction, after one sign-extension of w shared by every row of x.
#
# So each row of x is first written as int16 digits with one float32 step per row: q = round(x /
# step), step = max|x| / QMAX. The step is a part in 2^15 of the row's largest value, far below the
# int8 weights' own rounding (a part in 2^8 of their row's largest), so the products agree with
# float32 as closely as the float kernels did. int8 activations (vpdpbusd, one product more per
# byte) would round x as coarsely as w, which costs measurable agreement; docs/benchmarks.md has
# the comparison. The integer sum of row m with row n of w is exact, and is scaled once, at the
# end: out[m, n] = step[m] * s[n] * sum_k q[m, k] * w[n, k] + b[n].
#
# Overflow: each int32 lane of a sum takes K/16 products of at most QMAX * 127 each, so the sums
# are exact for K up to 8192 (GPT-2's widest product, XL's MLP projection, has K = 6400).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc
from std.sys import llvm_intrinsic
from std.sys.info import num_physical_cores
from std.sys.intrinsics import prefetch

from .matvec import AHEAD, FETCH, layer_norm, store

comptime F32 = DType.float32
comptime I16 = DType.int16
comptime I32 = DType.int32
comptime V = 32  # int16 lanes of one AVX-512 register: the products of one vpdpwssd
comptime QMAX = 32767  # the largest digit of x
comptime L2_DIGITS = 1 << 17  # digits of x in one chunk of rows: a quarter of a Zen 4 core's L2


@extensibility.register("gpt2_matvec_scaled")
struct MatVecScaled:
    """Computes out[m, n] = s[n] * sum_k x[m, k] * w[n, k] + b[n] for int8 w."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=DType.int8, rank=2, ...],
        s: InputTensor[dtype=F32, rank=1, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        product[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), s.unsafe_ptr(), b.unsafe_ptr(),
                       output.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0))


@extensibility.register("gpt2_matvec_add_scaled")
struct MatVecAddScaled:
    """The same plus r: a block's output projection and its residual connection."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=DType.int8, rank=2, ...],
        s: InputTensor[dtype=F32, rank=1, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        r: InputTensor[dtype=F32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        product[False](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), s.unsafe_ptr(), b.unsafe_ptr(),
                       r.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0), add=True)


@extensibility.register("gpt2_norm_matvec_scaled")
struct NormMatVecScaled[gelu: Bool, epsilon: Float64]:
    """The same on layer_norm(x), then GELU (tanh form) if `gelu`."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        gamma: InputTensor[dtype=F32, rank=1, ...],
        beta: InputTensor[dtype=F32, rank=1, ...],
        w: InputTensor[dtype=DType.int8, rank=2, ...],
        s: InputTensor[dtype=F32, rank=1, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var normed = layer_norm[Self.epsilon](x.unsafe_ptr(), gamma.unsafe_ptr(), beta.unsafe_ptr(), x.dim_size(0),
                                              x.dim_size(1))
        product[Self.gelu](output.unsafe_ptr(), normed, w.unsafe_ptr(), s.unsafe_ptr(), b.unsafe_ptr(),
                           output.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0))
        normed.unsafe_free()


@always_inline
def dot2(acc: SIMD[I32, 16], x: SIMD[I16, V], w: SIMD[I16, V]) -> SIMD[I32, 16]:
    """Returns acc plus the sums of adjacent pairs of x * w (vpdpwssd)."""
    return llvm_intrinsic["llvm.x86.avx512.vpdpwssd.512", SIMD[I32, 16]](acc, x, w)


def digits(
    xp: Pointer[Float32, _], qp: Pointer[Int16, MutAnyOrigin], steps: Pointer[Float32, MutAnyOrigin],
    m_rows: Int,
    k_dim: Int
):
    """Each row of x as int16 digits q (into qp) and its step (into steps), x ~ q * step.
    A row of zeros gets step 0 and digits 0, not a division by zero."""
    for m in range(m_rows):
        var row = xp.unsafe_offset(m * k_dim)
        var top = Float32(0)
        var k = 0
        while k + 16 <= k_dim:
            top = max(top, abs(row.unsafe_load[width=16](k)).reduce_max())
            k += 16
        for kk in range(k, k_dim):
            top = max(top, abs(row[unsafe_offset=kk]))
        var inv = Float32(QMAX) / top if top > 0 else Float32(0)
        steps[unsafe_offset=m] = top / Float32(QMAX)
        var q = qp.unsafe_offset(m * k_dim)
        k = 0
        while k + 16 <= k_dim:
            q.unsafe_store(k, round(row.unsafe_load[width=16](k) * inv).cast[I16]())
            k += 16
        for kk in range(k, k_dim):
            q[unsafe_offset=kk] = round(row[unsafe_offset=kk] * inv).cast[I16]()


@always_inline
def product[gelu: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Int8, _],
    sp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool = False,
):
    """Computes out[m, n] = (rp[m, n] if add) + act(sp[n] * sum_k x[m, k] * w[n, k] + b[n]), on every
    core, in integer arithmetic on x's digits."""
    var qp = alloc[Int16](m_rows * k_dim).unsafe_origin_cast[MutAnyOrigin]()
    var steps = alloc[Float32](m_rows).unsafe_origin_cast[MutAnyOrigin]()
    digits(xp, qp, steps, m_rows, k_dim)
    # The rows of w split among tasks as in matvec.mojo, and for the same reasons.
    var tasks = num_physical_cores() * (1 if m_rows >= 8 else 4)
    var per_task = (n_dim + tasks - 1) // tasks

    def rows(task: Int) {imm}:
        product_rows[gelu](op, qp, steps, wp, sp, bp, rp, m_rows, k_dim, n_dim, add, task * per_task,
                           min((task + 1) * per_task, n_dim))

    sync_parallelize(rows, tasks)
    qp.unsafe_free()
    steps.unsafe_free()


@always_inline
def product_rows[gelu: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    qp: Pointer[Int16, _],
    steps: Pointer[Float32, _],
    wp: Pointer[Int8, _],
    sp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    add: Bool,
    n_start: Int,
    n_end: Int,
):
    """Rows n_start..n_end of product's out from x's digits and steps, on the calling thread:
    one task's part."""
    var n = n_start
    # Four rows of w against four rows of x (16 sums in registers): each widened vector of w
    # feeds four dot products, and each vector of x four. A prompt's digits are taken a
    # chunk of rows at a time, small enough to stay in L2 while every row of w of the task
    # passes over them; all of them at once would come from L3 for every four rows of w.
    if m_rows >= 4:
        var chunk = max(4, L2_DIGITS // k_dim // 4 * 4)
        var n_tiled = n + (n_end - n) // 4 * 4
        for m0 in range(0, m_rows, chunk):
            var m1 = min(m0 + chunk, m_rows)
            for nt in range(n, n_tiled, 4):
                var m = m0
                while m + 4 <= m1:
                    block[4, 4, gelu](op, qp, steps, wp, sp, bp, rp, k_dim, n_dim, add, nt, m, m0)
                    m += 4
                if m + 2 <= m1:
                    block[4, 2, gelu](op, qp, steps, wp, sp, bp, rp, k_dim, n_dim, add, nt, m, m0)
                    m += 2
                if m < m1:
                    block[4, 1, gelu](op, qp, steps, wp, sp, bp, rp, k_dim, n_dim, add, nt, m, m0)
        n = n_tiled
    # Few rows (and the rows of w left): one row of w at a time, streamed front to back.
    while n < n_end:
        for m in range(m_rows):
            var s = dot(wp.unsafe_offset(n * k_dim), qp.unsafe_offset(m * k_dim), k_dim)
            store[gelu](op, bp, rp, n_dim, add, m, n, Float32(s) * steps[unsafe_offset=m] * sp[unsafe_offset=n])
        n += 1


@always_inline
def block[nw: Int, mx: Int, gelu: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    qp: Pointer[Int16, _],
    steps: Pointer[Float32, _],
    wp: Pointer[Int8, _],
    sp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    k_dim: Int,
    n_dim: Int,
    add: Bool,
    n: Int,
    m: Int,
    m_first: Int,
):
    """Computes out for rows n..n + nw of w and rows m..m + mx of x: nw * mx integer sums in
    registers."""
    var k_vec = k_dim // V * V
    # Rows ahead prefetched by the first block of a row of w in each chunk (m_first), as in
    # matvec.mojo's tiles.
    var ahead = wp.unsafe_offset(min(n + AHEAD, n_dim - nw) * k_dim)
    var acc = Array[SIMD[I32, 16], nw * mx](fill=SIMD[I32, 16](0))  # acc[mx * i + j]: row n + i of w, m + j of x
    for k in range(0, k_vec, V):
        if m == m_first:
            comptime for i in range(nw):
                prefetch[FETCH](ahead.unsafe_offset(i * k_dim + k))
        var ws = Array[SIMD[I16, V], nw](uninitialized=True)
        comptime for i in range(nw):
            ws[i] = wp.unsafe_offset((n + i) * k_dim).unsafe_load[width=V](k).cast[I16]()
        comptime for j in range(mx):
            var xv = qp.unsafe_offset((m + j) * k_dim).unsafe_load[width=V](k)
            comptime for i in range(nw):
                acc[mx * i + j] = dot2(acc[mx * i + j], xv, ws[i])
    comptime for i in range(nw):
        comptime for j in range(mx):
            var s = acc[mx * i + j].reduce_add()
            for k in range(k_vec, k_dim):
                s += Int32(qp[unsafe_offset=(m + j) * k_dim + k]) * Int32(wp[unsafe_offset=(n + i) * k_dim + k])
            store[gelu](op, bp, rp, n_dim, add, m + j, n + i,
                        Float32(s) * steps[unsafe_offset=m + j] * sp[unsafe_offset=n + i])


@always_inline
def dot(r: Pointer[Int8, _], q: Pointer[Int16, _], k_dim: Int) -> Int32:
    """Sum of r[k] * q[k], with four partial sums so consecutive dot products do not wait."""
    var a = Array[SIMD[I32, 16], 4](fill=SIMD[I32, 16](0))
    var k = 0
    while k + 4 * V <= k_dim:
        comptime for i in range(4):
            a[i] = dot2(a[i], q.unsafe_load[width=V](k + i * V), r.unsafe_load[width=V](k + i * V).cast[I16]())
        k += 4 * V
    while k + V <= k_dim:
        a[0] = dot2(a[0], q.unsafe_load[width=V](k), r.unsafe_load[width=V](k).cast[I16]())
        k += V
    var s = (a[0] + a[1] + a[2] + a[3]).reduce_add()
    for kk in range(k, k_dim):
        s += Int32(q[unsafe_offset=kk]) * Int32(r[unsafe_offset=kk])
    return s
