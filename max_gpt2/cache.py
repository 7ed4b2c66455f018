"""The key/value cache of a generation, and the pool that lends a finished one's memory to the next.

Plain numpy, no MAX: the engine wraps the arrays as MAX tensors (on a CPU, the same memory), so
what is stored here is what the decode graph reads.

Layout: keys and values are [layers, batch, heads, capacity, head_dim]. A batch of prompts of
different lengths is left-padded; `key_mask` [batch, length] holds 0 for a real position and
PAD_BIAS for padding, and is added to the attention scores. Capacity beyond the length is
reserved room, hidden the same way, so a generation allocates once, at prefill.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# exp(-1e9 - max) is exactly 0 in float32. At or below the attention kernel's HIDDEN (-1e8,
# kernels/attention.mojo), so the kernel skips those positions without reading them. Finite,
# unlike the causal mask: a padding query must still see something, or its row of softmax is
# NaN and, through 0 * NaN in later layers' values, poisons the real rows.
PAD_BIAS = -1e9
CHUNK = 32  # capacity is a multiple of this (or the context length), so growing is rare
POOL_LIMIT = 512 * 2**20  # bytes of keys and values the pool keeps, at most


def prompt_inputs(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded token ids [batch, width], each token's position (counted from its own row's
    start, so a padded row gets the tokens it would get alone), and the key mask."""
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    real = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        real[i, width - len(r):] = True
    positions = np.maximum(real.cumsum(axis=1) - 1, 0)
    return ids, positions, np.where(real, 0.0, PAD_BIAS).astype(np.float32)


@dataclass
class KVCache:
    """One generation's keys and values, and which cached positions are real."""

    shape: tuple[int, int, int]  # (layers, heads, head_dim)
    max_length: int  # the model's context (n_positions): no cache is ever longer
    key_mask: np.ndarray  # [batch, length]: 0 real, PAD_BIAS padding
    next_position: np.ndarray  # [batch]: the position of each row's next token
    k: np.ndarray | None = None  # [layers, batch, heads, capacity, head_dim]
    v: np.ndarray | None = None
    device: tuple | None = None  # k and v as the engine's device tensors; None until made

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def length(self) -> int:
        return self.key_mask.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    def reserve(self, length: int, pool: CachePool | None = None) -> None:
        """Makes room for `length` positions, from the pool's memory if it has some that fits.
        Growing copies every position cached so far into new memory, which is why generation
        reserves all it needs at once."""
        if self.capacity >= length:
            return
        capacity = min(-(-length // CHUNK) * CHUNK, max(length, self.max_length))
        layers, heads, head_dim = self.shape
        shape = (layers, self.batch, heads, capacity, head_dim)
        if self.k is None and pool is not None and (memory := pool.take(shape)) is not None:
            self.k, self.v, self.device = memory
            return
        # Whatever an earlier generation left in pooled memory is hidden by the mask, as unused
        # room is here: new memory need not be zeroed for correctness, but zeros cost nothing.
        k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        if self.k is not None:
            k[:, :, :, :self.capacity] = self.k
            v[:, :, :, :self.capacity] = self.v
        self.k, self.v, self.device = k, v, None

    def store_prompt(self, k: np.ndarray, v: np.ndarray) -> None:
        """The prefill's keys and values [layers, batch, heads, width, head_dim], from position 0."""
        self.k[:, :, :, :k.shape[3]] = k
        self.v[:, :, :, :v.shape[3]] = v

    def decode_mask(self) -> np.ndarray:
        """The key mask a decode step reads: [batch, capacity + 1], the cached positions as they
        are, unused room hidden like padding, and the new token's own column last."""
        mask = np.full((self.batch, self.capacity + 1), PAD_BIAS, np.float32)
        mask[:, :self.length] = self.key_mask
        mask[:, -1] = 0.0
        return mask

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Stores one decode step's keys and values [layers, batch, heads, head_dim] in place."""
        p = self.length
        self.k[:, :, :, p] = k
        self.v[:, :, :, p] = v
        self.key_mask = np.concatenate([self.key_mask, np.zeros((self.batch, 1), np.float32)], axis=1)
        self.next_position = self.next_position + 1


class CachePool:
    """Lends a finished generation's cache memory to the next one of the same batch size.

    New memory is mapped in as it is first written, which costs a generation's prefill time
    again at large batches; reused memory is already mapped. One pair of arrays is kept: for a
    batch size, the one with the most room; for another batch size, the latest. None larger
    than `limit` bytes. Thread-safe: two generations never get the same memory.
    """

    def __init__(self, limit: int = POOL_LIMIT) -> None:
        self.limit = limit
        self._kept: tuple | None = None  # (k, v, device)
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> tuple | None:
        """Memory for a cache of `shape` (batch and sizes equal, capacity at least), or None."""
        with self._lock:
            kept = self._kept
            if kept is None or kept[0].shape[:3] != shape[:3] or kept[0].shape[3] < shape[3]:
                return None
            self._kept = None
            return kept

    def give(self, cache: KVCache) -> None:
        """Takes a finished cache's memory. The cache keeps none of it: giving it again gives
        nothing, so memory that another generation took from the pool is never lent twice."""
        memory, cache.k, cache.v, cache.device = (cache.k, cache.v, cache.device), None, None, None
        k, v, _ = memory
        if k is None or k.nbytes + v.nbytes > self.limit:
            return
        with self._lock:
            kept = self._kept
            if kept is None or kept[0].shape[:3] != k.shape[:3] or kept[0].shape[3] <= k.shape[3]:
                self._kept = memory

    def clear(self) -> None:
        with self._lock:
            self._kept = None

    @property
    def kept_bytes(self) -> int:
        kept = self._kept
        return 0 if kept is None else kept[0].nbytes + kept[1].nbytes
