"""The machine the code runs on: which CPU it is, and how fast it streams memory.

One place for these facts: compiled-graph files are keyed by the CPU's identity (code compiled
for one instruction set must not be loaded on another), and bench reports the CPU's name and
its read bandwidth, the bound on decoding one sequence.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path

# x86 and Arm name their CPU and its instruction-set features differently in /proc/cpuinfo.
IDENTITY_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU part", "CPU architecture")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return []


@functools.cache
def cpu_identity() -> str:
    """The CPU compiled code is for: its model and instruction-set features from /proc/cpuinfo
    (each distinct line once), else what platform says."""
    found = "\n".join(dict.fromkeys(x for x in _cpuinfo() if x.startswith(IDENTITY_FIELDS)))
    return found or f"{platform.machine()} {platform.processor()} {platform.platform()}"


def cpu_name() -> str:
    """The CPU's model name, for people (an Arm /proc/cpuinfo has none: the architecture then)."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_bandwidth(gib: float = 1.0, passes: int = 7) -> float:
    """GB/s of a streaming read on every core: numpy's max over slices of a large array, one
    thread per core (numpy releases the GIL inside a reduction), best of several passes."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    cores = os.cpu_count() or 1
    data = np.ones(int(gib * 2**30) // 4, dtype=np.float32)  # written once, so every page is real
    pieces = np.array_split(data, cores * 8)
    best = float("inf")
    with ThreadPoolExecutor(cores) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.max, pieces))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9
