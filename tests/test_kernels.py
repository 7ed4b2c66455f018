"""Our Mojo kernels (max_gpt2/kernels) alone, against numpy, at sizes the models in the other
tests never reach: widths that are no multiple of the 16-lane vectors, row counts on both sides
of the four- and eight-row blocks, a head size with a remainder, masked cache positions.

The whole-model tests (decode equal to a full recompute, greedy text equal to transformers)
cover the kernels inside the graph; these cover every branch of their loops, in seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("max")

import max.experimental.functional as F  # noqa: E402
from max.driver import CPU  # noqa: E402
from max.dtype import DType  # noqa: E402
from max.experimental import compilation  # noqa: E402
from max.experimental.tensor import Tensor, TensorType  # noqa: E402

from max_gpt2.decode import FEW_ROWS, causal_attention, decode_attention, matvec, prompt_attention  # noqa: E402

# K: two 16-lane vectors and 8 left over, or 1000, wider than 768 as the MLP's c_proj (3072)
# is. N: rows of w, which the kernel splits into one slice per core (batches of 8 rows or more)
# or four (fewer rows); at 1031, on 1 to 64 cores, some slice has rows left after its tiles of
# three rows of w (8 to 11 rows of x) and some after its tiles of four (the other batches).
KS, N = (40, 1000), 1031
# Rows of x: one; fewer than a block of four; a block of four, and four with every remainder
# (1, 2, 2 + 1); a block of eight, and eight with every remainder (1, 2, 2 + 1); two blocks of
# six, and two with every remainder (2 + 1, 4); then one more block of six.
ROWS = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 18]


def compiled(fn, *types):
    return compilation.compile(fn)(*types)


def run(graph, *arrays) -> list[np.ndarray]:
    out = graph.execute_raw(*(Tensor.from_dlpack(np.ascontiguousarray(a)).driver_tensor for a in arrays))
    return [np.from_dlpack(o).copy() for o in out]


def gelu(y):
    return 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))


@pytest.fixture(scope="module", params=KS, ids=lambda k: f"K={k}")
def weights(request):
    rng, k = np.random.default_rng(0), request.param
    w = rng.standard_normal((N, k), dtype=np.float32) / np.float32(np.sqrt(k))  # sums of order 1 at any K
    return (w, rng.standard_normal(N, dtype=np.float32),
            rng.standard_normal(k, dtype=np.float32), rng.standard_normal(k, dtype=np.float32))


@pytest.fixture(scope="module")
def graphs():
    """One graph per kernel, with the number of rows and K symbolic."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731

    def normed(gelu):
        def graph(x, w, b, gamma, beta):  # matvec reads a LayerNorm's weight, bias and eps
            return matvec(x, w, b, norm=SimpleNamespace(weight=gamma, bias=beta, eps=1e-6), gelu=gelu)

        return compiled(graph, f32("rows", "k"), f32(N, "k"), f32(N), f32("k"), f32("k"))

    return {
        "plain": compiled(lambda x, w, b: matvec(x, w, b), f32("rows", "k"), f32(N, "k"), f32(N)),
        "residual": compiled(lambda x, w, b, r: matvec(x, w, b, residual=r),
                             f32("rows", "k"), f32(N, "k"), f32(N), f32("rows", N)),
        "norm_gelu": normed(True),  # ln_2, c_fc and its GELU
        "norm": normed(False),  # ln_f and the head
    }


def expected(kind, x, w, b, gamma, beta, r):
    """What each kernel should compute, in numpy."""
    if kind == "plain":
        return x @ w.T + b
    if kind == "residual":
        return r + x @ w.T + b
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = ((x - mean) / np.sqrt(var + 1e-6) * gamma + beta) @ w.T + b
    return gelu(y) if kind == "norm_gelu" else y


def check(graphs, weights, kind, rows):
    w, b, gamma, beta = weights
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, w.shape[1]), dtype=np.float32)
    r = rng.standard_normal((rows, N), dtype=np.float32)
    inputs = {"plain": (x, w, b), "residual": (x, w, b, r)}.get(kind, (x, w, b, gamma, beta))
    (out,) = run(graphs[kind], *inputs)
    tolerance = 1e-5 if kind in ("plain", "residual") else 1e-4
    np.testing.assert_allclose(out, expected(kind, x, w, b, gamma, beta, r), rtol=tolerance, atol=tolerance)


KINDS = ["plain", "residual", "norm", "norm_gelu"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", ROWS)
def test_matvec_equals_numpy(graphs, weights, kind, rows):
    check(graphs, weights, kind, rows)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [FEW_ROWS - 1, FEW_ROWS, FEW_ROWS + 1, 2 * FEW_ROWS + 3])
def test_every_kernel_equals_numpy_on_both_sides_of_its_few_rows(graphs, weights, kind, rows):
    """Float32 projections take matvec up to FEW_ROWS rows and MAX's matmul for more, with the
    bias, GELU and residual applied as each tile finishes (N = 1029 leaves a partial vector at
    the end of every row) and the layer norm done before: each part on both sides."""
    check(graphs, weights, kind, rows)


def test_decode_attention_equals_numpy():
    # 9 (row, head) pairs: runs of unequal length on 2 to 8 cores. Head size 20: a 16-lane vector
    # and 4 left over.
    rows, heads, past, d = 3, 3, 5, 20
    scale = 0.3
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((rows, 1, 3 * heads * d), dtype=np.float32)
    past_k = rng.standard_normal((rows, heads, past, d), dtype=np.float32)
    past_v = rng.standard_normal((rows, heads, past, d), dtype=np.float32)
    mask = np.zeros((rows, past + 1), np.float32)
    mask[0, :2] = -1e9  # row 0: two padded positions
    mask[2, 3:past] = -1e9  # row 2: cache capacity not used yet
    mask[1, 1] = -3.0  # a bias, not a hidden position: it still counts
    # Hidden positions are never read: NaN there would otherwise reach every output of the row.
    hidden = np.broadcast_to((mask[:, :past] <= -1e8)[:, None, :, None], past_k.shape)
    stale_k, stale_v = np.where(hidden, np.nan, past_k), np.where(hidden, np.nan, past_v)

    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    graph = compiled(lambda *a: decode_attention(*a, scale), f32("b", 1, 3 * heads * d),
                     f32("b", heads, "p", d), f32("b", heads, "p", d), f32("b", "p1"))
    out, k, v = run(graph, qkv, stale_k, stale_v, mask)

    q, k_new, v_new = (part.reshape(rows, heads, 1, d) for part in np.split(qkv[:, 0], 3, axis=-1))
    keys = np.concatenate([past_k, k_new], axis=2)  # (B, H, P + 1, D)
    values = np.concatenate([past_v, v_new], axis=2)
    scores = (q @ keys.transpose(0, 1, 3, 2))[:, :, 0] * scale + mask[:, None]  # (B, H, P + 1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights[:, :, None] @ values)[:, :, 0].reshape(rows, 1, heads * d)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(k, k_new)
    np.testing.assert_array_equal(v, v_new)


# Prompts of T tokens after P cached ones: T = 19 is two blocks of eight queries and 3 left
# over; with P = 0 the last query sees 19 keys (one tile of 32 keys, partly filled), with P = 30
# it sees 49 (a second tile). T = 1 is one query alone.
@pytest.mark.parametrize("t, past", [(19, 0), (19, 30), (1, 4)])
def test_prompt_attention_equals_numpy(t, past):
    rows, heads, d = 2, 3, 20  # head size 20: a 16-lane vector and 4 left over
    scale = 0.3
    rng = np.random.default_rng(t + past)
    qkv = rng.standard_normal((rows, t, 3 * heads * d), dtype=np.float32)
    past_k = rng.standard_normal((rows, heads, past, d), dtype=np.float32)
    past_v = rng.standard_normal((rows, heads, past, d), dtype=np.float32)
    # The mask GPT2Model.forward_cached makes: causal, plus each row's padding and biases.
    key_mask = np.zeros((rows, past + t), np.float32)
    key_mask[0, : past + 2] = -1e9  # row 0 left-padded: its first queries see only padding
    key_mask[1, -1] = -3.0  # a bias, not a hidden position: it still counts
    causal = np.triu(np.full((t, past + t), -np.inf, np.float32), k=past + 1)
    mask = (causal[None] + key_mask[:, None, :])[:, None]  # (B, 1, T, P + T)

    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    graph = compiled(lambda *a: prompt_attention(*a, scale), f32("b", "t", 3 * heads * d),
                     f32("b", heads, "p", d), f32("b", heads, "p", d), f32("b", 1, "t", "s"))
    (out,) = run(graph, qkv, past_k, past_v, mask)

    q, k_new, v_new = (part.reshape(rows, t, heads, d).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1))
    keys = np.concatenate([past_k, k_new], axis=2)  # (B, H, P + T, D)
    values = np.concatenate([past_v, v_new], axis=2)
    scores = (q @ keys.transpose(0, 1, 3, 2)) * scale + mask  # (B, H, T, P + T)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ values).transpose(0, 2, 1, 3).reshape(rows, t, heads * d)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_causal_attention_equals_numpy():
    """The variant with no cache and no mask to read (the logits graph): 19 queries, two blocks
    and 3 over, and a head size with a remainder, as above."""
    rows, t, heads, d, scale = 2, 19, 3, 20, 0.3
    qkv = np.random.default_rng(1).standard_normal((rows, t, 3 * heads * d), dtype=np.float32)
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    (out,) = run(compiled(lambda a: causal_attention(a, heads, scale), f32("b", "t", 3 * heads * d)), qkv)

    q, k, v = (part.reshape(rows, t, heads, d).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1))
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale + np.triu(np.full((t, t), -np.inf, np.float32), k=1)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ v).transpose(0, 2, 1, 3).reshape(rows, t, heads * d)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_matvec_refuses_combinations_its_kernels_do_not_have():
    """The kernels fuse a layer norm (then GELU) or a residual add, never both, and GELU only
    after a norm: any other request is refused, not half done."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    norm = lambda g, b: SimpleNamespace(weight=g, bias=b, eps=1e-5)  # noqa: E731
    with pytest.raises(ValueError, match="gelu=True needs norm="):
        compiled(lambda x, w: matvec(x, w, gelu=True), f32(2, 8), f32(4, 8))
    with pytest.raises(ValueError, match="residual= and norm= cannot be combined"):
        compiled(lambda x, w, r, g, b: matvec(x, w, norm=norm(g, b), residual=r),
                 f32(2, 8), f32(4, 8), f32(2, 4), f32(8), f32(8))


def test_kernels_read_inputs_that_are_views_in_the_graph():
    """The kernels index raw pointers as dense row-major arrays. Inputs that the graph makes as
    a transpose or a slice of another tensor reach them as such arrays (MAX materializes them),
    and the results are right."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    rng = np.random.default_rng(0)
    x, wt, b = (rng.standard_normal(s, dtype=np.float32) for s in ((3, 40), (40, 24), (24,)))
    wide = rng.standard_normal((3, 80), dtype=np.float32)
    graph = compiled(lambda x, wt, b, wide: (matvec(x, wt.T, b), matvec(wide[:, 20:60], wt.T, b)),
                     f32(3, 40), f32(40, 24), f32(24), f32(3, 80))
    transposed, sliced = run(graph, x, wt, b, wide)
    np.testing.assert_allclose(transposed, x @ wt + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sliced, wide[:, 20:60] @ wt + b, rtol=1e-5, atol=1e-5)
