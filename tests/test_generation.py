"""KV-cached generation: token-for-token transformers, batches, sampling, stops and limits."""

import numpy as np
import pytest

from max_gpt2 import GPT2, Sampling, engine
from max_gpt2.engine import GenerationError
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


@pytest.mark.parametrize("batch", [2, 5, 9], ids=["one row at a time", "tiles of four rows and one left",
                                                 "tiles of eight rows and one left"])
def test_decode_logits_equal_a_full_recompute_at_every_step(hub, batch, monkeypatch):
    model = hub.model
    monkeypatch.setattr(engine, "CACHE_CHUNK", 4)  # the cache grows (is copied) every 4 steps here
    monkeypatch.setattr(model, "_spare", None)  # and is new, not an earlier generation's memory
    # The decode kernels take eight rows at a time, or four, then one.
    more = ["Once upon a time", "In 1969, the first", "Dear Sir,", "Chapter 1", "It was a dark and stormy",
            "import numpy as np", "Q: What is 2 + 2?\nA:"]
    rows = [model.tokenizer.encode(p) for p in (PROMPTS + more)[:batch]]
    logits, cache = model._prefill(rows)
    for _ in range(12):
        for row, got in zip(rows, logits):
            full = model.logits([row])[0, -1]
            assert np.abs(got - full).max() <= 1e-4
        nxt = logits.argmax(axis=-1)
        for row, t in zip(rows, nxt):
            row.append(int(t))
        logits, cache = model._decode(nxt, cache)


def test_generation_allocates_its_cache_once(hub, monkeypatch):
    """Room for every new token is made at prefill: growing the cache mid-generation copies all
    of it (the test above grows it, and so tests that path)."""
    monkeypatch.setattr(engine, "CACHE_CHUNK", 1)  # capacity = exactly what was asked for
    model, sizes = hub.model, []
    monkeypatch.setattr(model, "_spare", None)  # no earlier generation's memory to take
    reserve = model._reserve

    def spy(cache, length):
        before = cache.k
        reserve(cache, length)
        if cache.k is not before:
            sizes.append(cache.k.shape[3])

    monkeypatch.setattr(model, "_reserve", spy)
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    assert len(list(model.generate_tokens(rows, 70))) == 70
    assert sizes == [max(map(len, rows)) + 69]  # the 70th token's keys are never stored


def test_a_finished_generation_lends_its_cache_memory_to_the_next(hub, monkeypatch):
    """Whatever the earlier generation left in the memory is hidden from the next: here NaN."""
    model = hub.model
    monkeypatch.setattr(model, "_spare", None)
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    first = ours_greedy(model, rows, 20)
    lent = model._spare
    lent.k[...] = np.nan
    lent.v[...] = np.nan
    assert ours_greedy(model, rows, 20) == first
    assert model._spare.k is lent.k  # the same memory served the second generation


def test_generations_in_progress_never_share_a_cache(hub, monkeypatch):
    """A generation lends its cache only when it is over: one still going keeps its own while
    others start and finish."""
    model = hub.model
    monkeypatch.setattr(model, "_spare", None)
    a, b, c = ([model.tokenizer.encode(p)] for p in PROMPTS)
    n = 12  # every prompt's cache has the same capacity: any of them would fit any other's memory
    alone = [ours_greedy(model, p, n) for p in (a, b, c)]
    first = model.generate_tokens(a, n)
    got_a = [next(first) for _ in range(4)]
    got_b = ours_greedy(model, b, n)  # over: its memory is lent
    third = model.generate_tokens(c, n)
    got_c = [next(third)]
    assert model._spare is None  # the third took it, while the first still has its own
    for _ in range(n - 4):
        got_a.append(next(first))
        got_c.append(next(third))
    got_c += list(third)
    assert [np.stack(got_a, axis=1).tolist(), got_b, np.stack(got_c, axis=1).tolist()] == alone


def test_the_kept_cache_memory_is_the_largest_at_the_latest_batch_size(hub, monkeypatch):
    model = hub.model
    monkeypatch.setattr(model, "_spare", None)
    rows = [model.tokenizer.encode(PROMPTS[1])]
    large, small = model.generate_tokens(rows, 60), model.generate_tokens(rows, 2)
    next(large), next(small)  # each has its own cache
    list(large)
    kept = model._spare.k
    list(small)  # ends later, with less room
    assert model._spare.k is kept and kept.shape[3] >= 60
    ours_greedy(model, rows * 2, 2)  # another batch size
    assert model._spare.k.shape[1] == 2


def test_no_cache_memory_over_the_limit_is_kept(hub, monkeypatch):
    model = hub.model
    monkeypatch.setattr(model, "_spare", None)
    rows = [model.tokenizer.encode(PROMPTS[1])]
    ours_greedy(model, rows, 2)
    kept = model._spare.k.nbytes + model._spare.v.nbytes
    monkeypatch.setattr(model, "_spare", None)
    monkeypatch.setattr(engine, "SPARE_LIMIT", kept - 1)
    ours_greedy(model, rows, 2)
    assert model._spare is None


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
    monkeypatch.setattr(hub.model, "generate_tokens", lambda *a, **k: iter(np.array(script)))
    first, second = hub.model.complete(["a", "b"], 4)
    assert (first.tokens, first.finish_reason) == ([464, 3290], "eos")
    assert (second.tokens, second.finish_reason) == ([464], "eos")


def test_context_limit_stops_with_the_reason(hub):
    n_ctx = hub.config.n_positions
    prompt = list(range(1000, 1000 + n_ctx - 8))
    tokens = list(hub.model.generate_tokens([prompt], 50))
    assert len(tokens) == 8  # positions n_ctx-8 … n_ctx-1, and no further
    text_prompt = " x" * (n_ctx - 8)
    result = hub.model.complete([text_prompt], 50)[0]
    assert result.finish_reason == "context"


def test_a_batch_may_hold_more_tokens_than_one_context(hub):
    rows = [list(range(1000, 1100)), list(range(2000, 2090))]  # 190 tokens, each row < 128
    assert len(list(hub.model.generate_tokens(rows, 4))) == 4


def test_sliding_window_goes_on_past_the_context(hub):
    n_ctx = hub.config.n_positions
    tokens = list(hub.model.generate_tokens([list(range(1000, 1100))], n_ctx, sliding_window=True))
    assert len(tokens) == n_ctx


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
    """GPT2Decode(matvec=False), the decode graph an accelerator gets (MAX's ops, no Mojo
    kernels), compiled here on the CPU: its logits and new keys and values equal the kernels'."""
    from max_gpt2.model import GPT2Decode

    model = hub.model
    plain = model._compile(GPT2Decode, *model._step_types(1), matvec=False)
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    logits, cache = model._prefill(rows)
    for _ in range(3):
        nxt = logits.argmax(axis=-1)
        b, p = cache.key_mask.shape
        model._reserve(cache, p + 1)
        key_mask = np.full((b, cache.k.shape[3] + 1), -1e9, np.float32)
        key_mask[:, :p], key_mask[:, -1] = cache.key_mask, 0.0
        args = [model._tensor(a) for a in (nxt[:, None].astype(np.int64), cache.next_position[:, None].astype(np.int64),
                                           key_mask, cache.k, cache.v)]
        expected = [t.to_numpy() for t in plain(*args)]
        logits, cache = model._decode(nxt, cache)
        np.testing.assert_allclose(logits, expected[0], atol=1e-4)
        np.testing.assert_allclose(cache.k[:, :, :, p], expected[1][:, :, :, 0], atol=1e-5)
        np.testing.assert_allclose(cache.v[:, :, :, p], expected[2][:, :, :, 0], atol=1e-5)
