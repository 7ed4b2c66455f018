"""KV-cached generation: token-for-token transformers, batches, sampling, stops and limits."""

import threading

import numpy as np
import pytest

from max_gpt2 import GPT2, Sampling, cache
from max_gpt2.decode import FEW_ROWS
from max_gpt2.errors import GenerationError
from max_gpt2.reference import reference_greedy
from max_gpt2.sampling import SettingsError, probabilities

PROMPTS = ["Hi", "The meaning of life is", "The quick brown fox jumps over the lazy dog, and then"]


def ours_greedy(model, prompts_ids, n):
    return np.stack(list(model.generate_tokens(prompts_ids, n)), axis=1).tolist()  # [batch, n]


def assert_greedy_equals_transformers(made, prompt_ids, n=64):
    margins = []
    theirs = reference_greedy(made.reference, prompt_ids, n, margins)
    # The comparison proves something only if the reference is neither repetitive nor near-tied.
    assert len(set(theirs)) >= 16 and min(margins) > 1e-3, (len(set(theirs)), min(margins))
    assert ours_greedy(made.model, [prompt_ids], n)[0] == theirs


def assert_decode_equals_recompute(model, rows: list[list[int]], tolerance: float = 1e-4, steps: int = 12):
    """Greedy decode steps from `rows` (extended in place), each row's logits at every step
    against `model.logits` recomputing its whole sequence, to within `tolerance`."""
    generation = model.start(rows)
    logits = generation.logits
    for _ in range(steps):
        for row, got in zip(rows, logits):
            assert np.abs(got - model.logits([row])[0, -1]).max() <= tolerance, tolerance
        nxt = logits.argmax(axis=-1)
        for row, t in zip(rows, nxt):
            row.append(int(t))
        logits = generation.step(nxt)
    generation.close()


def test_greedy_64_tokens_equal_transformers_generate(hub):
    assert_greedy_equals_transformers(hub, hub.model.tokenizer.encode(PROMPTS[1]))


def test_greedy_untied_extended_vocabulary_equals_transformers(untied):
    prompt = untied.model.tokenizer.encode(PROMPTS[2]) + [50258, 50259]  # the added entries too
    assert_greedy_equals_transformers(untied, prompt)


def test_batch_of_different_lengths_equals_each_prompt_alone(hub):
    encoded = [hub.model.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(e) for e in encoded}) == 3
    batch = ours_greedy(hub.model, encoded, 64)
    for row, prompt in zip(batch, encoded):
        assert row == reference_greedy(hub.reference, prompt, 64)
        assert row == ours_greedy(hub.model, [prompt], 64)[0]


def test_batch_text_equals_single_text(hub):
    assert hub.model.generate(PROMPTS, 24) == [hub.model.generate(p, 24) for p in PROMPTS]


@pytest.mark.parametrize("batch", [2, 5, 9, FEW_ROWS + 1],
                         ids=["one row at a time", "tiles of four rows and one left", "tiles of eight rows and one left",
                              "more rows than matvec takes: the block by stages, MAX's matmul"])
def test_decode_logits_equal_a_full_recompute_at_every_step(hub, batch, monkeypatch):
    model = hub.model
    monkeypatch.setattr(cache, "CHUNK", 4)  # the cache grows (is copied) every 4 steps here
    model.cache_pool.clear()  # and is new, not an earlier generation's memory
    # The decode kernels take eight rows at a time, or four, then one.
    more = ["Once upon a time", "In 1969, the first", "Dear Sir,", "Chapter 1", "It was a dark and stormy",
            "import numpy as np", "Q: What is 2 + 2?\nA:"]
    prompts = [f"{i} {p}" for i in range(4) for p in PROMPTS + more][:batch]  # distinct rows, however many
    assert_decode_equals_recompute(model, [model.tokenizer.encode(p) for p in prompts])


@pytest.mark.parametrize("batch, length", [(1, FEW_ROWS - 1), (1, FEW_ROWS + 1), (8, FEW_ROWS // 8), (8, FEW_ROWS // 8 + 1)],
                         ids=["one prompt by matvec", "one prompt by matmul", "eight by matvec", "eight by matmul"])
def test_prefill_logits_equal_a_full_recompute_on_both_sides_of_few_rows(hub, batch, length):
    """A float32 prefill's projections take our matvec for up to FEW_ROWS rows (batch x tokens)
    and MAX's matmul for more; either way its logits are the logits graph's."""
    model = hub.model
    rng = np.random.default_rng(length)
    rows = rng.integers(0, hub.config.vocab_size, (batch, length)).tolist()
    generation = model.start(rows)
    for row, got in zip(rows, generation.logits):
        assert np.abs(got - model.logits([row])[0, -1]).max() <= 1e-4
    generation.close()


def test_greedy_after_a_prompt_longer_than_few_rows_equals_transformers(hub):
    prompt = hub.model.tokenizer.encode(" ".join(PROMPTS * 3))
    assert len(prompt) > FEW_ROWS
    assert_greedy_equals_transformers(hub, prompt, 32)


def test_generation_allocates_its_cache_once(hub, monkeypatch):
    """Room for every new token is made at prefill: growing the cache mid-generation copies all
    of it (the test above grows it, and so tests that path)."""
    monkeypatch.setattr(cache, "CHUNK", 1)  # capacity = exactly what was asked for
    model = hub.model
    model.cache_pool.clear()
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    generation = model.start(rows, 70)
    memory = generation.cache.k
    assert memory.shape[3] == max(map(len, rows)) + 69  # the 70th token's keys are never stored
    for _ in range(69):
        generation.step(generation.logits.argmax(axis=-1))
    assert generation.cache.k is memory
    generation.close()


def test_a_finished_generation_lends_its_cache_memory_to_the_next(hub):
    """Whatever the earlier generation left in the memory is hidden from the next: here NaN."""
    model = hub.model
    model.cache_pool.clear()
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    first = model.start(rows, 20)
    k, v = first.cache.k, first.cache.v
    first.close()
    k[...] = np.nan
    v[...] = np.nan
    second = model.start(rows, 20)
    assert second.cache.k is k  # the same memory serves the second generation
    second.close()
    assert ours_greedy(model, rows, 20) == [reference_greedy(hub.reference, r, 20) for r in rows]


def test_generations_in_progress_never_share_a_cache(hub):
    """A generation lends its cache only when it is over: one still going keeps its own while
    others start and finish."""
    model = hub.model
    model.cache_pool.clear()
    a, b, c = ([model.tokenizer.encode(p)] for p in PROMPTS)
    n = 12  # every prompt's cache has the same capacity: any of them would fit any other's memory
    alone = [ours_greedy(model, p, n) for p in (a, b, c)]
    first = model.generate_tokens(a, n)
    got_a = [next(first) for _ in range(4)]
    got_b = ours_greedy(model, b, n)  # over: its memory is lent
    third = model.generate_tokens(c, n)
    got_c = [next(third)]  # takes it, while the first still has its own
    for _ in range(n - 4):
        got_a.append(next(first))
        got_c.append(next(third))
    got_c += list(third)
    assert [np.stack(got_a, axis=1).tolist(), got_b, np.stack(got_c, axis=1).tolist()] == alone


def test_two_threads_first_using_a_graph_compile_it_once(hub):
    messages = []
    model = GPT2(hub.config, hub.model.state, progress=messages.append)
    start = threading.Barrier(2)

    def run():
        start.wait()
        model.logits([[1, 2, 3]])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(m.startswith("compiling the logits graph") for m in messages) == 1, messages


def test_sampling_is_reproducible_with_a_seed_and_varies_without(hub):
    s = dict(do_sample=True, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=24)
    assert hub.model.generate(PROMPTS[1], seed=7, **s) == hub.model.generate(PROMPTS[1], seed=7, **s)
    assert len({hub.model.generate(PROMPTS[1], seed=k, **s) for k in range(4)}) > 1


def test_temperature_zero_is_greedy(hub):
    sampled = hub.model.generate(PROMPTS[1], 24, do_sample=True, temperature=0, seed=3)
    assert sampled == hub.model.generate(PROMPTS[1], 24)


def test_stop_strings_end_the_text_and_are_cut(hub):
    text = hub.model.generate(PROMPTS[1], 40)
    stop = text[10:14]
    assert hub.model.generate(PROMPTS[1], 40, stop=[stop, "never appears"]) == text[: text.index(stop)]
    assert "".join(hub.model.stream(PROMPTS[1], 40, stop=stop)) == text[: text.index(stop)]


def test_stream_pieces_join_to_the_generated_text(hub):
    pieces = list(hub.model.stream(PROMPTS[1], 40))
    assert len(pieces) > 10 and "".join(pieces) == hub.model.generate(PROMPTS[1], 40)


def test_generation_stops_at_eos(hub, monkeypatch):
    eos = hub.model.tokenizer.eos_token_id
    script = [[464, 464], [3290, eos], [eos, 318], [318, 318]]
    monkeypatch.setattr(hub.model, "generate_tokens", lambda *a, **k: (row for row in np.array(script)))
    first, second = hub.model.complete(["a", "b"], 4)
    assert (first.tokens, first.finish_reason) == ([464, 3290], "eos")
    assert (second.tokens, second.finish_reason) == ([464], "eos")


def test_generation_goes_as_far_as_transformers_at_the_context_limit(hub):
    """A sequence may grow to n_positions + 1 tokens, as in transformers: the last new token is
    read at the last position. Stopping at n_positions was one token early."""
    n_ctx = hub.config.n_positions
    prompt = list(range(1000, 1000 + n_ctx - 8))
    tokens = [int(t[0]) for t in hub.model.generate_tokens([prompt], 50)]
    assert tokens == reference_greedy(hub.reference, prompt, 9)  # transformers' 10th would fail
    full = list(range(1000, 1000 + n_ctx))
    assert [int(t[0]) for t in hub.model.generate_tokens([full], 5)] == reference_greedy(hub.reference, full, 1)
    result = hub.model.complete([" x" * (n_ctx - 8)], 50)[0]
    assert result.finish_reason == "context"


def test_a_generation_at_the_context_limit_refuses_another_token_in_one_line(hub):
    """`start` and `step` are public: past the last position MAX's gather would fail with its own
    message (an index out of bounds); the row and what to do instead are named."""
    n_ctx = hub.config.n_positions
    generation = hub.model.start([[5, 6], list(range(1000, 1000 + n_ctx))])
    try:
        with pytest.raises(GenerationError, match=f"row 1 has used all {n_ctx} of GPT-2's positions.*sliding_window"):
            generation.step(np.array([1, 2]))
    finally:
        generation.close()
    with pytest.raises(GenerationError, match=rf"the prompt is {n_ctx + 1} tokens; GPT-2 reads at most {n_ctx}"):
        hub.model.start([list(range(n_ctx + 1))])
    with pytest.raises(GenerationError, match="empty prompt"):
        hub.model.start([[]])


def test_a_batch_may_hold_more_tokens_than_one_context(hub):
    rows = [list(range(1000, 1100)), list(range(2000, 2090))]  # 190 tokens, each row < 128
    assert len(list(hub.model.generate_tokens(rows, 4))) == 4


def test_sliding_window_goes_on_from_the_last_half_of_the_context(hub):
    """Past the limit, generation goes on from the last n_positions // 2 tokens: the tokens
    after the slide are transformers' continuation of that half."""
    n_ctx, prompt = hub.config.n_positions, list(range(1000, 1100))
    before = n_ctx + 1 - len(prompt)  # tokens until the context is full
    tokens = [int(t[0]) for t in hub.model.generate_tokens([prompt], before + 40, sliding_window=True)]
    assert len(tokens) == before + 40
    assert tokens[:before] == reference_greedy(hub.reference, prompt, before)
    kept = (prompt + tokens[:before])[-(n_ctx // 2):]
    assert tokens[before:] == reference_greedy(hub.reference, kept, 40)


def test_bad_arguments_raise_when_called_not_at_the_first_token(hub):
    with pytest.raises(GenerationError, match="empty prompt"):
        hub.model.generate_tokens([[]], 5)
    with pytest.raises(GenerationError, match="max_new_tokens"):
        hub.model.stream("Hi", 0)
    with pytest.raises(GenerationError, match="empty prompt"):
        hub.model.stream("", 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1, do_sample=True), "temperature must be >= 0"),
        (dict(top_p=0, do_sample=True), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5, do_sample=True), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-2, do_sample=True), "top_k must be a whole number >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_explained(hub, kwargs, message):
    with pytest.raises((SettingsError, GenerationError), match=message):
        hub.model.generate(PROMPTS[0], **kwargs)


def test_prompt_longer_than_the_context(hub):
    with pytest.raises(GenerationError, match=r"the prompt is \d+ tokens; GPT-2 reads at most 128"):
        hub.model.generate(" word" * 200, 5)


def test_empty_prompt(hub):
    with pytest.raises(GenerationError, match="empty prompt"):
        hub.model.generate("", 5)


def test_text_generation_without_a_tokenizer_says_how_to_get_one(hub):
    bare = GPT2(hub.config, hub.model.state)
    with pytest.raises(GenerationError.__mro__[1], match="no tokenizer files"):
        bare.generate("hello")


# --- sampling on crafted logits: no model needed ----------------------------------------------


def test_top_k_keeps_the_k_likeliest():
    p = probabilities(np.array([[1.0, 4.0, 3.0, 2.0]]), temperature=1.0, top_k=2, top_p=1.0)[0]
    assert p[0] == 0 and p[3] == 0 and p[1] > p[2] > 0 and np.isclose(p.sum(), 1)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.count_nonzero(probabilities(logits, 1.0, 0, 0.5)[0]) == 1  # 0.5 alone reaches 0.5
    assert np.count_nonzero(probabilities(logits, 1.0, 0, 0.7)[0]) == 2  # 0.5 < 0.7 <= 0.5 + 0.3
    assert np.count_nonzero(probabilities(logits, 1.0, 0, 0.79)[0]) == 2
    assert np.count_nonzero(probabilities(logits, 1.0, 0, 0.81)[0]) == 3
    assert np.count_nonzero(probabilities(logits, 1.0, 0, 0.01)[0]) == 1  # never empty


def test_top_p_and_top_k_match_transformers_warpers():
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(3, 500)).astype(np.float32) * 3
    x = torch.from_numpy(logits)
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.9)):
        x = warper(None, x)
    np.testing.assert_allclose(probabilities(logits, 0.7, 40, 0.9), torch.softmax(x.double(), -1).numpy(), atol=1e-6)


def test_temperature_sharpens():
    logits = np.array([[1.0, 2.0]])
    assert probabilities(logits, 0.5, 0, 1.0)[0, 1] > probabilities(logits, 2.0, 0, 1.0)[0, 1]


def test_sampler_draws_by_probability():
    sampler = Sampling(do_sample=True, seed=0).sampler()
    logits = np.log(np.array([[0.7, 0.2, 0.1]] * 20000))
    counts = np.bincount(sampler(logits), minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.02)


def test_decode_without_our_kernels_equals_decode_with_them(hub):
    """The decode graph an accelerator gets (MAX's ops, no Mojo kernels), compiled here on the
    CPU: step by step, its logits equal the kernels'. (No accelerator has run it: see README.)"""
    plain = GPT2(hub.config, hub.model.state, decode_kernels=False)
    rows = [hub.model.tokenizer.encode(p) for p in PROMPTS]
    ours, theirs = hub.model.start(rows), plain.start(rows)
    for _ in range(4):
        np.testing.assert_allclose(ours.logits, theirs.logits, atol=1e-4)
        nxt = ours.logits.argmax(axis=-1)
        ours.step(nxt)
        theirs.step(nxt)
    ours.close()
    theirs.close()
