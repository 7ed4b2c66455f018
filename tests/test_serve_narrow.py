"""`max-gpt2 serve --dtype bfloat16` and `--quantize int8`: the served weights are narrowed as
our engine narrows them, so a greedy completion equals our engine's `generate` in the same
precision, alone and in a batch with requests of other lengths. One server per precision, on
the ODD config of tests/test_serve.py's float32 server (each precision is its own graph,
compiled once by MAX and cached).
"""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.test_serve import PROMPTS, Server, greedy, openai

from max_gpt2.reference import ODD, make_checkpoint

MAX_TOKENS = 24
PRECISIONS = {"bfloat16": ("--dtype", "bfloat16"), "int8": ("--quantize", "int8")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-narrow")
    # Weights at std 0.4: at 0.2 bfloat16's greedy text leaves float32's after 48 tokens in one
    # prompt of five, and not at all in the others; at 0.4 within 5-21 tokens in every prompt
    # (int8 within 0-15), so each served precision is told apart from float32 in every prompt.
    make_checkpoint(path, ODD, "hub", seed=0, initializer_range=0.4)
    return path


@pytest.fixture(scope="module", params=list(PRECISIONS))
def served(request, checkpoint):
    """(precision, a client of a server holding the weights in it)."""
    server = Server(checkpoint, max_batch_size=8, options=PRECISIONS[request.param])
    try:
        server.wait_ready()
        yield request.param, openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engine_greedy(checkpoint):
    """Our engine's greedy continuation of each prompt, by precision (float32 included)."""
    from max_gpt2 import GPT2

    texts = {}
    for precision, kwargs in {"float32": {}, "bfloat16": {"dtype": "bfloat16"}, "int8": {"quantize": "int8"}}.items():
        model = GPT2.from_pretrained(str(checkpoint), **kwargs)
        texts[precision] = [model.generate(p, max_new_tokens=MAX_TOKENS) for p in PROMPTS]
    return texts


def test_the_narrow_weights_change_the_greedy_text_so_the_tests_below_can_tell(engine_greedy):
    # Were the server to serve float32 whatever it was told, it would fail the test below only
    # where the precisions' greedy texts differ: they must differ somewhere.
    for precision in PRECISIONS:
        for narrow, exact in zip(engine_greedy[precision], engine_greedy["float32"]):
            assert narrow != exact, precision


def test_served_greedy_equals_the_engine_in_the_same_precision(served, engine_greedy):
    precision, client = served
    assert [greedy(client, p, MAX_TOKENS) for p in PROMPTS] == engine_greedy[precision]


def test_served_greedy_in_a_batch_of_other_lengths_equals_the_engine(served, engine_greedy):
    precision, client = served
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        texts = list(pool.map(lambda p: greedy(client, p, MAX_TOKENS), PROMPTS))
    assert texts == engine_greedy[precision]
