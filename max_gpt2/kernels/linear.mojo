# Float32 projections for any number of rows: out = x @ w.T + b, w [N, K] as MAX's Linear keeps
# it, with the parts around a projection of GPT-2 in the same launch: a layer norm of x before
# (then GELU after), or a residual added after.
#
# MAX's CPU matmul repacks w on every call, which its blocking then repays over many rows of x:
# a long prompt runs at the CPU's float32 peak. The few rows of a decode step or a short prompt
# have too little arithmetic to repay the repacking, and our matvec (matvec.mojo), which reads
# w as it is, is faster for them. The number of rows is known only when the graph runs (a
# prefill's prompt length, a served batch's tokens), so the choice is made here, at run time,
# and one compiled graph serves every batch: a second graph would be a second compile, and a
# graph holding both needs a branch per projection, both sides compiled, every weight entered
# above the branches (the served graph did so until the branches gave way to these kernels).

import extensibility
from extensibility import InputTensor, OutputTensor
from layout import Coord, TileTensor
from layout.tile_layout import row_major
from linalg.matmul import matmul
from max.gpu.host import DeviceContext

from .matvec import gelu_tanh, layer_norm, matvec

comptime F32 = DType.float32


@extensibility.register("gpt2_linear")
struct Linear[few_rows: Int]:
    """Computes out[m, n] = sum_k x[m, k] * w[n, k] + b[n] in float32, for any number of rows:
    up to `few_rows` by matvec, more by MAX's matmul."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=F32, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var op = output.unsafe_ptr()
        project[Self.few_rows, False, False](op, x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(), op,
                                             x.dim_size(0), x.dim_size(1), w.dim_size(0))


@extensibility.register("gpt2_linear_add")
struct LinearAdd[few_rows: Int]:
    """Computes out = r + x @ w.T + b: a block's output projection and its residual connection."""

    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=F32, rank=2, ...],
        x: InputTensor[dtype=F32, rank=2, ...],
        w: InputTensor[dtype=F32, rank=2, ...],
        b: InputTensor[dtype=F32, rank=1, ...],
        r: InputTensor[dtype=F32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        project[Self.few_rows, False, True](output.unsafe_ptr(), x.unsafe_ptr(), w.unsafe_ptr(), b.unsafe_ptr(),
                                            r.unsafe_ptr(), x.dim_size(0), x.dim_size(1), w.dim_size(0))


@extensibility.register("gpt2_norm_linear")
struct NormLinear[few_rows: Int, gelu: Bool, epsilon: Float64]:
    """Computes out = layer_norm(x) @ w.T + b, then GELU (tanh form) if `gelu`: ln_1 with c_attn,
    ln_2 with c_fc and its activation, ln_f with the head."""

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
        var normed = layer_norm[Self.epsilon](x.unsafe_ptr(), gamma.unsafe_ptr(), beta.unsafe_ptr(), m_rows, k_dim)
        var op = output.unsafe_ptr()
        project[Self.few_rows, Self.gelu, False](op, normed, w.unsafe_ptr(), b.unsafe_ptr(), op,
                                                 m_rows, k_dim, w.dim_size(0))
        normed.unsafe_free()


def project[few_rows: Int, gelu: Bool, add: Bool](
    op: Pointer[Float32, MutAnyOrigin],
    xp: Pointer[Float32, _],
    wp: Pointer[Float32, _],
    bp: Pointer[Float32, _],
    rp: Pointer[Float32, _],
    m_rows: Int,
    k_dim: Int,
    n_dim: Int,
) raises:
    """out[m, n] = (rp[m, n] if add) + act(sum_k x[m, k] * w[n, k] + b[n]): by matvec for up
    to `few_rows` rows, else by MAX's matmul."""
    if m_rows <= few_rows:
        matvec[gelu](op, xp, wp, bp, rp, m_rows, k_dim, n_dim, add=add)
        return

    # The bias, GELU and residual are applied as each tile of out is finished, while it is in
    # cache, not in further passes over out.
    @__parameter
    @always_inline
    def finish[dtype: DType, width: SIMDLength, *, alignment: Int = 1](at: Coord, v: SIMD[dtype, width]):
        var at_mn = Int(at[0]) * n_dim + Int(at[1])
        var y = v.cast[F32]() + bp.unsafe_offset(Int(at[1])).unsafe_load[width=width]()
        comptime if gelu:
            y = gelu_tanh(y)
        comptime if add:
            y += rp.unsafe_offset(at_mn).unsafe_load[width=width]()
        op.unsafe_offset(at_mn).unsafe_store(y)

    matmul[transpose_b=True, elementwise_lambda_fn=finish](
        TileTensor(op, row_major(Coord(m_rows, n_dim))),
        TileTensor(xp, row_major(Coord(m_rows, k_dim))).as_imm(),
        TileTensor(wp, row_major(Coord(n_dim, k_dim))).as_imm(),
    )
