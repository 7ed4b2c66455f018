# A float32 projection for any number of rows: out = x @ w.T + b, w [N, K] as MAX's Linear keeps it.
#
# MAX's CPU matmul repacks w on every call, which its blocking then repays over many rows of x:
# a long prompt runs at the CPU's float32 peak. The few rows of a short prompt have too little
# arithmetic to repay the repacking, and our matvec (matvec.mojo), which reads w as it is, is
# faster for them. The choice depends on the number of rows, which a prefill graph learns only
# when it runs, so it is made here, at run time, and one compiled graph serves prompts of every
# length (a second graph would be a second compile for every model size).

import extensibility
from extensibility import InputTensor, OutputTensor
from layout import Coord, TileTensor
from layout.tile_layout import row_major
from linalg.matmul import matmul
from max.gpu.host import DeviceContext

from .matvec import matvec

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
        var m_rows = x.dim_size(0)
        var k_dim = x.dim_size(1)
        var n_dim = w.dim_size(0)
        var op = output.unsafe_ptr()
        var bp = b.unsafe_ptr()
        if m_rows <= Self.few_rows:
            matvec[False](op, x.unsafe_ptr(), w.unsafe_ptr(), bp, op, m_rows, k_dim, n_dim)
            return

        # The bias is added as each tile of out is finished, while it is in cache, not in a
        # second pass over out.
        @__parameter
        @always_inline
        def add_bias[dtype: DType, width: SIMDLength, *, alignment: Int = 1](at: Coord, v: SIMD[dtype, width]):
            var m = Int(at[0])
            var n = Int(at[1])
            var y = v.cast[F32]() + bp.unsafe_offset(n).unsafe_load[width=width]()
            op.unsafe_offset(m * n_dim + n).unsafe_store(y)

        matmul[transpose_b=True, elementwise_lambda_fn=add_bias](
            TileTensor(op, row_major(Coord(m_rows, n_dim))),
            TileTensor(x.unsafe_ptr(), row_major(Coord(m_rows, k_dim))).as_imm(),
            TileTensor(w.unsafe_ptr(), row_major(Coord(n_dim, k_dim))).as_imm(),
        )
