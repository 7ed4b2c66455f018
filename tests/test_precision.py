"""Weights held narrower than float32 (max_gpt2/precision.py): bfloat16, and int8 with a scale per
output row.

- The decode kernels with narrow weights against numpy, at every tile remainder the float32
  kernels are tested at (tests/test_kernels.py's sizes): bfloat16 widening is exact, so the only
  difference from numpy on the same narrow weights is float32 summation order; int8 products are
  integer sums on x's int16 digits, which numpy reproduces exactly.
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

from max_gpt2.decode import BF16_FEW_ROWS, matvec  # noqa: E402
from max_gpt2.precision import bfloat16, for_max, quantize_rows  # noqa: E402
from tests.test_generation import assert_decode_equals_recompute  # noqa: E402
from tests.test_kernels import KS, N, ROWS, compiled, gelu  # noqa: E402


def run(graph, *arrays) -> list[np.ndarray]:
    out = graph.execute_raw(*(Tensor.from_dlpack(for_max(np.ascontiguousarray(a))).driver_tensor for a in arrays))
    return [np.from_dlpack(o).copy() for o in out]


def kernel_graph(weight: DType, few_rows: int | None = None):
    """Every matvec kernel in one graph (one compile per weight dtype), rows and K symbolic:
    plain, with a residual, after a layer norm, after a layer norm and then GELU; with
    `few_rows`, the bfloat16 kernels that choose by the number of rows (kernels/bf16.mojo)."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    w_type = TensorType(weight, [N, "k"], device=CPU())

    if few_rows is not None:  # the prompt's kernel is a bare product
        return compiled(lambda x, w, b: matvec(x, w, b, few_rows=few_rows), f32("rows", "k"), w_type, f32(N))

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


# Beyond tests/test_kernels.py's rows: a prompt longer than the int8 kernels' chunk of rows at
# K=1000 (kernels/int8.mojo: as many rows of digits as stay in L2), the last chunk with the
# remainders 2 + 1.
CHUNKED = 131


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
@pytest.mark.parametrize("rows", ROWS + [CHUNKED])
def test_narrow_matvec_equals_numpy_on_the_same_narrow_weights(graphs, weights, rows, kind):
    """Each kernel against numpy on the weights as held. bfloat16 is widened, which is exact, so
    the tolerance is float32 summation order's, as for the float32 kernels. int8 is summed in
    integers on x's int16 digits (`int8_product`), which numpy reproduces exactly, so the
    tolerance is that of the few float32 multiplies after the sum; a scale or step not applied,
    a digit or a remainder of K or of the rows dropped, is off by far more. After a layer norm
    (float32 in a different order here) a digit may differ by one, which moves a sum by its step
    times that weight: the tolerance is the float kernels' plus every digit of the row off by one
    (for int8). A row of x of zeros has step 0, not a division by zero."""
    w, b, gamma, beta = weights
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, w.shape[1]), dtype=np.float32)
    x[rows // 2] = 0
    r = rng.standard_normal((rows, N), dtype=np.float32)
    if kind == "bfloat16":
        held = w.astype(bfloat16())
        extra, exact = [], 1e-5
        product = lambda x: x @ held.astype(np.float32).T  # noqa: E731
    else:
        held, scale = quantize_rows(w)
        extra, exact = [scale], 1e-6
        product = lambda x: int8_product(x, held, scale)  # noqa: E731
    plain, residual, normed, normed_gelu = run(graphs[kind], x, held, b, r, gamma, beta, *extra)
    np.testing.assert_allclose(plain, product(x) + b, rtol=exact, atol=exact)
    np.testing.assert_allclose(residual, r + product(x) + b, rtol=exact, atol=exact)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    normed_x = ((x - mean) / np.sqrt(var + 1e-6) * gamma + beta).astype(np.float32)
    expected = product(normed_x) + b
    digit = 0.0
    if kind == "int8":  # one step of each row of x times the sum of |w| of each row of w
        digit = np.abs(normed_x).max(axis=1, keepdims=True) / 32767 * (np.abs(held.astype(np.float32)).sum(axis=1) * scale)
    np.testing.assert_array_less(np.abs(normed - expected), 1e-4 + 1e-4 * np.abs(expected) + digit)
    # GELU's slope is at most 1.13: the same bound, a little wider.
    np.testing.assert_array_less(np.abs(normed_gelu - gelu(expected)), 1.2 * (1e-4 + 1e-4 * np.abs(expected) + digit))


# Rows of x on both sides of BF16_FEW_ROWS: at it (matvec, x in float32), and above it in blocks of
# four with each remainder (1, 2, 2 + 1, none); CHUNKED rows, at K=1000 two chunks of x
# (kernels/bf16.mojo: as many rows as stay in L2), the last with the remainders 2 + 1. N (1029)
# leaves each core's slice of w rows after its tiles of four.
PROMPT_ROWS = [BF16_FEW_ROWS, BF16_FEW_ROWS + 1, BF16_FEW_ROWS + 2, BF16_FEW_ROWS + 3, BF16_FEW_ROWS + 4, CHUNKED]


@pytest.fixture(scope="module")
def prompt_graph():
    return kernel_graph(DType.bfloat16, few_rows=BF16_FEW_ROWS)


@pytest.mark.parametrize("rows", PROMPT_ROWS)
def test_bfloat16_prompt_products_equal_numpy_on_x_rounded_to_bfloat16(prompt_graph, weights, rows):
    """Above BF16_FEW_ROWS rows, x is rounded to bfloat16 (to nearest, ties to even) and
    multiplied in bfloat16 dot products: numpy on the same rounded x (ml_dtypes rounds the same
    way) and the same weights, summed in float64, agrees to float32 summation order's
    tolerance. At BF16_FEW_ROWS and below x stays float32 (the matvec kernels), which the same
    comparison would miss by the rounding of x, far more than the tolerance, as would a
    truncated rather than rounded x, a dropped remainder of K, of the rows of x or of w, or a
    dropped bias."""
    w, b, _, _ = weights
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, w.shape[1]), dtype=np.float32)
    x[rows // 2] = 0
    held = w.astype(bfloat16())
    x_used = x.astype(bfloat16()) if rows > BF16_FEW_ROWS else x
    [out] = run(prompt_graph, x, held, b)
    np.testing.assert_allclose(out, x_used.astype(np.float64) @ held.astype(np.float64).T + b, rtol=1e-5, atol=1e-5)


def int8_product(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x @ (q * scale).T as the int8 kernels compute it (kernels/int8.mojo): each row of x as
    int16 digits, round(x / step) with step = max|row| / 32767 (in float32, ties to even, as
    there), the integer sums exact, then times the step and the row scale in float32."""
    top = np.abs(x).max(axis=1, keepdims=True)
    inv = np.where(top > 0, np.float32(32767) / np.where(top > 0, top, np.float32(1)), np.float32(0))
    digits = np.rint(x * inv.astype(np.float32)).astype(np.int64)
    sums = (digits @ q.astype(np.int64).T).astype(np.float32)
    return sums * (top / np.float32(32767)).astype(np.float32) * scale


def test_int8_rows_are_within_half_a_step_of_the_weights():
    w = np.random.default_rng(0).standard_normal((50, 33)).astype(np.float32)
    w[3] = 0
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_array_equal(np.abs(q).max(axis=1)[[0, 1, 2, 4]], 127)  # each row's largest is ±127
    assert not q[3].any() and scale[3] == 0
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 * (1 + 1e-6))


# --- whole models on a test checkpoint ---------------------------------------------------------

KINDS = {"bfloat16": dict(dtype="bfloat16"), "int8": dict(quantize="int8")}
# How much more the logits move than the weights' own relative error predicts (see
# test_narrow_logits_stay_within_a_derived_bound_of_float32): attention and layer norms amplify a
# perturbation, on random weights at std 0.2 more than on trained ones. Twice what was seen on
# this checkpoint for either dtype, at its largest.
AMPLIFICATION = 6.0


@pytest.fixture(scope="module", params=list(KINDS))
def narrow(request, hub):
    """(kind, our model with narrow weights, transformers on the same weights widened to float32)."""
    from max_gpt2 import GPT2
    from max_gpt2.checkpoints.huggingface import to_hf
    from max_gpt2.reference import load_reference

    model = GPT2.from_pretrained(hub.path, **KINDS[request.param])
    return request.param, model, load_reference(None, model.config, to_hf(widened(model.state), model.config))


def widened(state: dict) -> dict:
    """A narrow state dict as the float32 weights it stands for: int8 rows times their scales."""
    from max_gpt2.precision import SCALE, is_scale

    wide = {}
    for name, array in state.items():
        if array.dtype == np.int8:
            wide[name] = array.astype(np.float32) * state[name + SCALE][:, None]
        elif not is_scale(name):
            wide[name] = array.astype(np.float32)
    return wide


IDS = np.random.default_rng(0).integers(0, 50257, (3, 33))


def test_narrow_weights_are_held_narrow_and_nothing_in_float32_beside_them(narrow, hub):
    kind, model, _ = narrow
    held = {a.dtype.name for name, a in model.state.items() if a.ndim == 2 and "wpe" not in name}
    assert held == {kind}
    float32 = sum(a.nbytes for a in hub.model.state.values())
    assert sum(a.nbytes for a in model.state.values()) < (0.55 if kind == "bfloat16" else 0.35) * float32
    assert model.num_parameters == hub.model.num_parameters  # scales are not parameters
    assert kind in model.describe()


def test_narrow_logits_equal_transformers_on_the_same_narrow_weights(narrow):
    """The implementation, apart from rounding: transformers given exactly the weights we hold
    (bfloat16 widened, int8 rows times their scales) computes our logits to float32's
    tolerance, the same as the float32 parity tests. Widening is exact; only the order of float32
    sums differs (and for int8, the scale applied to the sum rather than to each weight). The
    int8 kernels also round x to int16 digits (kernels/int8.mojo), which transformers does not:
    for int8 the tolerance adds what that rounding may move the logits (`digits_bound`), still
    far below what a scale on the wrong row or a term dropped would. The bfloat16 kernels round
    x to bfloat16 for a prompt's many rows (kernels/bf16.mojo; IDS has 99): for bfloat16 the
    tolerance adds what that rounding may move the logits (`X_ROUNDING`, carried)."""
    from max_gpt2.reference import reference_logits

    kind, model, reference = narrow
    expected = reference_logits(reference, IDS)
    tolerance = 1e-4 + (digits_bound(model, expected) if kind == "int8" else carried(model, X_ROUNDING, expected))
    np.testing.assert_allclose(model.logits(IDS), expected, rtol=0, atol=tolerance)


# The relative rms error of a value rounded to bfloat16, as the bfloat16 kernels round x for
# many rows (kernels/bf16.mojo): 8 significant bits, rounded to nearest, move a value by at
# most half its last place, 2^-8 of the power of two below it; an error spread evenly over that
# has rms 2^-8 / sqrt(3) of it, and the value is at least that power, so at most this.
X_ROUNDING = 2.0**-8 / np.sqrt(3)


def digits_bound(model, logits: np.ndarray) -> float:
    """How far the int8 kernels' rounding of x to int16 digits may move `logits`: each value is
    off by at most half a step, max|row| / 65534, and a row's largest is at most sqrt(K) times
    its rms, so rho (as in `logit_bound`) is at most sqrt(K) / 65534 / sqrt(3) for uniform
    errors, at the widest K, the MLP's 4 n_embd; carried to the logits as `logit_bound` does."""
    rho = np.sqrt(4 * model.config.n_embd) / 65534 / np.sqrt(3)
    return carried(model, rho, logits)


def logit_bound(model, original: dict, logits: np.ndarray) -> float:
    """How far rounding the weights may move `logits` (float32 logits of `original`'s weights).

    Rounding moves each weight by a zero-mean error, independent of the others, with relative
    size rho = rms(error) / rms(weight), read off the arrays: for bfloat16 at most 2^-8 of each
    weight (round to nearest, 8 significant bits), about 2^-8 / sqrt(3) on average; for int8
    at most half a step, max|row| / 254, several times more. (The int8 kernels also round x, to
    int16 digits: `digits_bound`, far below the weights' rounding, is left out.) A sum over K
    such products is then
    off by about rho times its size (a random walk over K terms), and the logits, the end of
    M = 4 n_layer + 3 products and lookups in a row, by about rho * sqrt(M) times their spread,
    at most sqrt(2 ln n) times that over n logits (a Gaussian tail), times AMPLIFICATION for what
    attention and layer norms add.

    With bfloat16 weights a prompt's x is rounded to bfloat16 too (kernels/bf16.mojo), by at
    most X_ROUNDING, independently of the weight it meets: a product w x is then off by both
    relative errors, whose sizes add in quadrature.
    """
    wide = widened(model.state)
    matrices = [k for k in wide if wide[k].ndim == 2]
    errors = np.concatenate([(wide[k] - original[k]).ravel() for k in matrices]).astype(np.float64)
    weights = np.concatenate([original[k].ravel() for k in matrices]).astype(np.float64)
    rho = np.sqrt(np.mean(errors**2) / np.mean(weights**2))
    if any(a.dtype == bfloat16() for a in model.state.values()):
        rho = np.hypot(rho, X_ROUNDING)
    return carried(model, rho, logits)


def carried(model, rho: float, logits: np.ndarray) -> float:
    """A relative error rho of every product's terms as `logit_bound` carries it to the logits."""
    m = 4 * model.config.n_layer + 3
    return float(AMPLIFICATION * rho * np.sqrt(m) * logits.std() * np.sqrt(2 * np.log(logits.size)))


def test_narrow_logits_stay_within_a_derived_bound_of_float32(narrow, hub):
    """The cost of rounding, against transformers in float32 on the original weights, within
    `logit_bound`; and rho itself as rounding makes it."""
    from max_gpt2.reference import reference_logits

    kind, model, _ = narrow
    exact = reference_logits(hub.reference, IDS)
    bound = logit_bound(model, hub.model.state, exact)
    worst = np.abs(model.logits(IDS) - exact).max()
    assert worst <= bound, (worst, bound)


def test_narrow_greedy_choices_equal_float32s_where_its_margins_exceed_the_bound(narrow, hub):
    """A greedy choice cannot change where float32's lead of the first logit over the second is
    more than twice the most any logit may move (`logit_bound`): at every such position of IDS
    (the contexts float32 sees, teacher-forced), the narrow model picks float32's token."""
    from max_gpt2.reference import reference_logits

    kind, model, _ = narrow
    exact = reference_logits(hub.reference, IDS)
    top2 = np.sort(exact, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 * logit_bound(model, hub.model.state, exact)
    if not clear.any():
        pytest.skip(f"{kind}'s bound is above every float32 margin on this checkpoint: no greedy choice is sure")
    ours = model.logits(IDS).argmax(-1)
    np.testing.assert_array_equal(ours[clear], exact.argmax(-1)[clear])


def test_narrow_greedy_tokens_equal_transformers_on_the_same_narrow_weights(narrow, hub):
    """Prefill, then our decode kernels reading the narrow weights: token for token what
    transformers generates from the same weights widened, where its margins are a thousand times
    float32's error (as in tests/test_generation.py)."""
    from max_gpt2.reference import reference_greedy

    _, model, reference = narrow
    prompt = hub.model.tokenizer.encode("The meaning of life is")
    margins = []
    theirs = reference_greedy(reference, prompt, 32, margins)
    assert len(set(theirs)) >= 8 and min(margins) > 1e-3, (len(set(theirs)), min(margins))
    assert [int(t[0]) for t in model.generate_tokens([prompt], 32)] == theirs


@pytest.mark.parametrize("batch", [1, 5, 8], ids=["one row", "tiles of four rows and one left",
                                                 "eight rows: tiles of eight, int8's block by stages"])
def test_narrow_decode_logits_equal_a_full_recompute_at_every_step(narrow, hub, batch):
    """Decode steps (one launch per block, kernels/block.mojo; int8's 8 rows by stages) against
    the prompt path recomputing the whole sequence, for 12 steps. Both read the same narrow weights in the same
    kernels' arithmetic (a batch's prompts, padded to the longest, stay under BF16_FEW_ROWS rows,
    so bfloat16's x is not rounded in either), so only the order of float32 sums differs: float32's tolerance of
    tests/test_generation.py; for int8 plus what the rounding of x to digits may move the logits
    in each (`digits_bound`, twice), since x differs in its last bits between the two. A part of
    the block skipped or fed the wrong input is off by far more."""
    kind, model, _ = narrow
    prompts = ["Dear Sir,", "Chapter 1", "The sky", "Hello", "Yes", "No", "Maybe", "Well"]
    rows = [hub.model.tokenizer.encode(p) for p in prompts[:batch]]
    assert batch * max(map(len, rows)) <= BF16_FEW_ROWS
    tolerance = 1e-4 + (2 * digits_bound(model, model.logits(rows[:1])) if kind == "int8" else 0)
    assert_decode_equals_recompute(model, rows, tolerance)


def test_int8_decode_without_the_tanh_gelu_equals_a_full_recompute(tmp_path):
    """The one-launch int8 block (kernels/block.mojo) has the tanh GELU only, so a checkpoint
    with another activation (nanoGPT's exact "gelu") decodes int8 in five launches a block, by
    MAX's GELU between them: the same check as above on that path."""
    from max_gpt2 import GPT2, GPT2Config
    from max_gpt2.reference import make_checkpoint

    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_head=4, n_layer=2, activation_function="gelu")
    make_checkpoint(tmp_path, config, tokenizer=False)
    model = GPT2.from_pretrained(tmp_path, quantize="int8")
    rows = [[5, 17, 42, 99], [7, 250]]
    assert_decode_equals_recompute(model, rows, 1e-4 + 2 * digits_bound(model, model.logits(rows[:1])))


# --- what cannot run --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(dtype="float16"), "unknown dtype 'float16'; use one of float32, bfloat16"),
    (dict(quantize="int4"), "unknown quantization 'int4'; use int8, or none"),
    (dict(dtype="bfloat16", quantize="int8"), "cannot be combined with dtype='bfloat16'"),
])
def test_a_precision_that_cannot_run_is_refused_before_loading(kwargs, fragment):
    from max_gpt2 import GPT2
    from max_gpt2.errors import PrecisionError

    with pytest.raises(PrecisionError, match=fragment):  # not "no such file": nothing was read
        GPT2.from_pretrained("/nonexistent", **kwargs)


def test_an_int8_state_is_not_taken_for_float32(hub):
    from max_gpt2 import GPT2
    from max_gpt2.errors import PrecisionError

    state = dict(GPT2.from_pretrained(hub.path, quantize="int8").state)
    with pytest.raises(PrecisionError, match="is int8 but float32 weights hold it in float32: pass quantize='int8'"):
        GPT2(hub.config, state)


def test_int8_refuses_a_product_longer_than_its_sums_stay_exact_for():
    from max_gpt2 import GPT2
    from max_gpt2.config import GPT2Config
    from max_gpt2.errors import PrecisionError

    wide = GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2, n_inner=8200)
    with pytest.raises(PrecisionError, match="int8 sums stay exact for products up to 8192 long, and this "
                                             "model's widest is 8200: load it in float32 or bfloat16"):
        GPT2(wide, {}, quantize="int8")
    GPT2(wide, {}, dtype="bfloat16")  # a wide model is refused by int8 only (no weights: nothing to convert)


def test_matvec_takes_a_scale_with_an_int8_weight_and_only_then():
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    int8 = TensorType(DType.int8, [4, 8], device=CPU())
    with pytest.raises(ValueError, match="an int8 weight needs scale="):
        compiled(lambda x, w: matvec(x, w), f32(2, 8), int8)
    with pytest.raises(ValueError, match="an int8 weight needs scale="):
        compiled(lambda x, w, s: matvec(x, w, scale=s), f32(2, 8), f32(4, 8), f32(4))


def test_the_prompt_product_of_bfloat16_weights_takes_no_norm_or_residual():
    """kernels/bf16.mojo has the bare product only: asked for more, matvec says so rather than
    dropping the norm or the residual."""
    f32 = lambda *shape: TensorType(DType.float32, shape, device=CPU())  # noqa: E731
    bf16 = TensorType(DType.bfloat16, [4, 8], device=CPU())
    norm = lambda g, b: SimpleNamespace(weight=g, bias=b, eps=1e-5)  # noqa: E731
    with pytest.raises(ValueError, match="few_rows= is for a bare product"):
        compiled(lambda x, w, r: matvec(x, w, residual=r, few_rows=24), f32(2, 8), bf16, f32(2, 4))
    with pytest.raises(ValueError, match="few_rows= is for a bare product"):
        compiled(lambda x, w, g, b: matvec(x, w, norm=norm(g, b), few_rows=24), f32(2, 8), bf16, f32(8), f32(8))


@pytest.mark.parametrize("args, fragment", [
    (["verify", "--dtype", "bfloat16"], "verify proves float32 weights compute exactly what transformers computes"),
    (["verify", "--quantize", "int8"], "int8 weights differ from it by their rounding"),
    (["generate", "--prompt", "x", "--dtype", "bfloat16", "--quantize", "int8"], "cannot be combined"),
    (["chat", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
])
def test_the_command_line_refuses_what_cannot_run_in_one_line_before_loading(args, fragment):
    from tests.test_cli import assert_one_clear_error, run

    assert_one_clear_error(run(args[0], "--model", "/nonexistent", *args[1:]), fragment)
