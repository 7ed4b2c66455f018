"""The key/value cache and its pool, with numpy alone (no model, no MAX)."""

import threading

import numpy as np
import pytest

from max_gpt2 import cache
from max_gpt2.cache import PAD_BIAS, CachePool, KVCache, prompt_inputs

SHAPE = (2, 3, 4)  # layers, heads, head_dim


def new_cache(batch=2, length=5, max_length=64) -> KVCache:
    return KVCache(SHAPE, max_length, np.zeros((batch, length), np.float32), np.full(batch, length))


def test_prompts_are_left_padded_and_count_positions_from_their_own_start():
    ids, positions, mask = prompt_inputs([[7, 8, 9], [5]])
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert (mask == [[0, 0, 0], [PAD_BIAS, PAD_BIAS, 0]]).all()


def test_reserve_rounds_up_to_a_chunk_but_never_past_the_context():
    c = new_cache(max_length=40)
    c.reserve(5)
    assert c.capacity == cache.CHUNK and c.k.shape == (2, 2, 3, cache.CHUNK, 4)
    c.reserve(cache.CHUNK + 1)
    assert c.capacity == 40


def test_growing_keeps_what_was_cached():
    c = new_cache(length=3)
    c.reserve(3)
    c.store_prompt(np.ones((2, 2, 3, 3, 4), np.float32), np.full((2, 2, 3, 3, 4), 2, np.float32))
    c.reserve(c.capacity + 1)
    assert (c.k[:, :, :, :3] == 1).all() and (c.v[:, :, :, :3] == 2).all()


def test_decode_mask_hides_unused_room_and_puts_the_new_token_last():
    c = KVCache(SHAPE, 64, np.array([[PAD_BIAS, 0, 0]], np.float32), np.array([2]))
    c.reserve(6)
    mask = c.decode_mask()
    assert mask.shape == (1, c.capacity + 1)
    assert mask[0, :3].tolist() == [PAD_BIAS, 0, 0]
    assert (mask[0, 3:-1] == PAD_BIAS).all() and mask[0, -1] == 0


def test_append_stores_one_position_in_place_and_advances():
    c = new_cache(length=3)
    c.reserve(4)
    k = c.k
    c.append(np.full((2, 2, 3, 4), 5, np.float32), np.full((2, 2, 3, 4), 6, np.float32))
    assert c.k is k and (c.k[:, :, :, 3] == 5).all() and (c.v[:, :, :, 3] == 6).all()
    assert c.length == 4 and c.next_position.tolist() == [4, 4]


def test_a_new_cache_takes_the_pools_memory_when_it_fits():
    pool = CachePool()
    first = new_cache()
    first.reserve(20)
    k = first.k
    pool.give(first)
    second = new_cache()
    second.reserve(10, pool)  # needs less: fits
    assert second.k is k
    third = new_cache(batch=3)
    third.reserve(10, pool)  # another batch size: new memory
    assert third.k is not k


def test_memory_given_twice_is_never_lent_twice():
    """A sliding window gives its cache back before it re-prefills, and again in `finally` if
    the re-prefill fails: the second give must not put memory another generation took back in
    the pool, or two generations would share it and give wrong tokens without a word."""
    pool = CachePool()
    c = new_cache()
    c.reserve(10)
    pool.give(c)
    taker = new_cache()
    taker.reserve(10, pool)
    assert taker.k is not None and pool.kept_bytes == 0
    pool.give(c)  # again: the cache holds nothing now
    other = new_cache()
    other.reserve(10, pool)
    assert other.k is not taker.k


def test_the_pool_keeps_the_largest_for_a_batch_size_and_the_latest_across_sizes():
    pool = CachePool()
    large, small = new_cache(), new_cache()
    large.reserve(60)
    small.reserve(2)
    kept = large.k
    pool.give(large)
    pool.give(small)  # less room, same batch size: the larger stays
    probe = new_cache()
    probe.reserve(60, pool)
    assert probe.k is kept
    pool.give(probe)
    other = new_cache(batch=3)
    other.reserve(2)
    pool.give(other)  # another batch size: the latest wins
    assert pool.take((2, 3, 3, 1, 4)) is not None and pool.kept_bytes == 0


def test_no_memory_over_the_limit_is_kept():
    c = new_cache()
    c.reserve(10)
    size = c.k.nbytes + c.v.nbytes
    pool = CachePool(limit=size - 1)
    pool.give(c)
    assert pool.kept_bytes == 0
    c = new_cache()
    c.reserve(10)
    pool = CachePool(limit=size)
    pool.give(c)
    assert pool.kept_bytes == size


def test_threads_taking_at_once_never_get_the_same_memory():
    pool = CachePool()
    c = new_cache()
    c.reserve(10)
    pool.give(c)
    got, start = [], threading.Barrier(8)

    def take():
        start.wait()
        got.append(pool.take((2, 2, 3, 10, 4)))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(g is not None for g in got) == 1


@pytest.mark.parametrize("length", [1, 31, 32, 33])
def test_capacity_is_what_was_asked_rounded_to_a_chunk(length):
    c = new_cache()
    c.reserve(length)
    assert c.capacity == -(-length // cache.CHUNK) * cache.CHUNK
