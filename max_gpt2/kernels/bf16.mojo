# Products with bfloat16 weights for many rows of x (a prompt): out = x @ w.T + b, w [N, K] in
# bfloat16 as narrow.py holds it.
#
# matvec.mojo widens each bfloat16 weight to float32 in registers, once per row of x it meets:
# right for the few rows of a decode step, whose cost is the bytes of w streamed, but for a
# prompt's hundreds of rows the widening and float32 multiply-adds make the product bound by
# arithmetic. The CPU's bfloat16 dot products (vdpbf16ps: pairs of bfloat16 products summed into
# float32 lanes) do thirty-two products in one instruction, on the weights as they are held,
# twice float32's rate. For that x must be bfloat16 too: each row is rounded once (to nearest,
# ties to even) into a scratch buffer that every row of w then meets. That rounding moves each
# value of x by at most a part in 2^8, as the weights' own rounding moved them; the products
# themselves are exact in float32 and summed in float32.
#
# Few rows keep matvec.mojo's kernels (x in float32): there the weights' bytes are the cost, and
# rounding x would buy nothing. The choice depends on the number of rows, which a prefill graph
# learns only when it runs, so it is made here, as linear.mojo does, and one graph serves
# prompts of every length.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc
from std.sys import CompilationTarget, llvm_intrinsic
from std.sys.info import num_physical_cores
from std.sys.intrinsics import prefetch

from .matvec import AHEAD, FETCH, matvec

comptime F32 = DType.float32
comptime BF16 = DType.bfloat16
comptime V = 32  # bfloat16 lanes of one AVX-512 register: the products of one vdpbf16ps
comptime L2_VALUES = 1 << 17  # bfloat16 values of x in one chunk of rows: a quarter of a Zen 4 core's L2


@extensibility.register("gpt2_matvec_bf16")
struct MatVecBF16[few_rows: Int]:
    """Computes out[m, n] = sum_k x[m, k] * w[n, k] + b[n] for bfloat16 w: up to `few_rows` rows
    by matvec (x in float32), more in bfloat16 dot products."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=BF16, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        product(output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(), x.dim_size(0), x.dim_size(1),
                w.dim_size(0), Self.few_rows)


@always_inline
def dot2(acc: SIMD[F32, 16], x: SIMD[BF16, V], w: SIMD[BF16, V]) -> SIMD[F32, 16]:
    """Returns acc plus the sums of adjacent pairs of x * w: vdpbf16ps, or on a CPU without it
    the same sums by float32 multiply-adds on the widened values, so that the kernels build
    everywhere."""
    comptime if CompilationTarget._has_feature["avx512bf16"]():
        return llvm_intrinsic["llvm.x86.avx512bf16.dpbf16ps.512", SIMD[F32, 16]](acc, x, w)
    else:
        var xs = x.deinterleave()  # (even lanes, odd lanes): the pairs' first and second terms
        var ws = w.deinterleave()
        var first = xs[0].cast[F32]().fma(ws[0].cast[F32](), acc)
        return xs[1].cast[F32]().fma(ws[1].cast[F32](), first)


def rounded(xp: Pointer[Float32, _], m_rows: Int, k_dim: Int) -> Pointer[BFloat16, MutUntrackedOrigin]:
    """The rows of x rounded to bfloat16 (to nearest, ties to even) into new memory, which the
    caller frees; the rows split between the cores."""
    var xb = alloc[BFloat16](m_rows * k_dim)
    var tasks = num_physical_cores()
    var per_task = (m_rows + tasks - 1) // tasks

    def part(task: Int) {imm}:
        var start = task * per_task * k_dim
        var end = min((task + 1) * per_task, m_rows) * k_dim
        var i = start
        while i + 16 <= end:
            xb.unsafe_store(i, xp.unsafe_load[width=16](i).cast[BF16]())
            i += 16
        for j in range(i, end):
            xb[unsafe_offset=j] = xp[unsafe_offset=j].cast[BF16]()

    sync_parallelize(part, tasks)
    return xb


@always_inline
def product(
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[BFloat16, _],
    bp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
    few_rows: Int,
):
    """Computes out[m, n] = sum_k x[m, k] * w[n, k] + b[n], on every core: by matvec for up to
    `few_rows` rows, else on x rounded to bfloat16."""
    if m_rows <= few_rows:
        matvec[False](op, xp, wp, bp, op, m_rows, k_dim, n_dim)
        return
    var xb = rounded(xp, m_rows, k_dim)
    # One contiguous slice of the rows of w per core, as matvec.mojo splits them for many rows.
    var tasks = num_physical_cores()
    var per_task = (n_dim + tasks - 1) // tasks

    def rows(task: Int) {imm}:
        var n_end = min((task + 1) * per_task, n_dim)
        var n = task * per_task
        # Four rows of w against four rows of x (16 sums in registers): each vector of w feeds
        # four dot products, and each vector of x four. x is taken a chunk of rows at a time,
        # small enough to stay in L2 while every row of w of the task passes over it, as in
        # int8.mojo.
        var chunk = max(4, L2_VALUES // k_dim // 4 * 4)
        var n_tiled = n + (n_end - n) // 4 * 4
        for m0 in range(0, m_rows, chunk):
            var m1 = min(m0 + chunk, m_rows)
            for nt in range(n, n_tiled, 4):
                var m = m0
                while m + 4 <= m1:
                    block[4, 4](op, xb, wp, bp, k_dim, n_dim, nt, m, m0)
                    m += 4
                if m + 2 <= m1:
                    block[4, 2](op, xb, wp, bp, k_dim, n_dim, nt, m, m0)
                    m += 2
                if m < m1:
                    block[4, 1](op, xb, wp, bp, k_dim, n_dim, nt, m, m0)
            # The rows of w left after the tiles of four, one at a time.
            for nr in range(n_tiled, n_end):
                for m in range(m0, m1):
                    block[1, 1](op, xb, wp, bp, k_dim, n_dim, nr, m, m0)

    sync_parallelize(rows, tasks)
    xb.unsafe_free()


@always_inline
def block[nw: Int, mx: Int](
    op: Pointer[Float32, MutAnyOrigin],
    xb: Pointer[BFloat16, _],
    wp: Pointer[BFloat16, _],
    bp: Pointer[Float32, _],
    k_dim: Int,
    n_dim: Int,
    n: Int,
    m: Int,
    m_first: Int,
):
    """Computes out for rows n..n + nw of w and rows m..m + mx of x: nw * mx sums in registers."""
    var k_vec = k_dim // V * V
    # Rows ahead prefetched by the first block of a row of w in each chunk (m_first), as in
    # matvec.mojo's tiles.
    var ahead = wp.unsafe_offset(min(n + AHEAD, n_dim - nw) * k_dim)
    var acc = Array[SIMD[F32, 16], nw * mx](fill=SIMD[F32, 16](0))  # acc[mx * i + j]: row n + i of w, m + j of x
    for k in range(0, k_vec, V):
        if m == m_first:
            comptime for i in range(nw):
                prefetch[FETCH](ahead.unsafe_offset(i * k_dim + k))
        var ws = Array[SIMD[BF16, V], nw](uninitialized=True)
        comptime for i in range(nw):
            ws[i] = wp.unsafe_offset((n + i) * k_dim).unsafe_load[width=V](k)
        comptime for j in range(mx):
            var xv = xb.unsafe_offset((m + j) * k_dim).unsafe_load[width=V](k)
            comptime for i in range(nw):
                acc[mx * i + j] = dot2(acc[mx * i + j], xv, ws[i])
    comptime for i in range(nw):
        comptime for j in range(mx):
            var s = acc[mx * i + j].reduce_add()
            # The last K % 32 products one by one: a product of two bfloat16 values is exact in float32.
            for k in range(k_vec, k_dim):
                s += xb[unsafe_offset=(m + j) * k_dim + k].cast[F32]() * wp[unsafe_offset=(n + i) * k_dim + k].cast[F32]()
            op[unsafe_offset=(m + j) * n_dim + n + i] = s + bp[unsafe_offset=n + i]
