"""What machine this is, as far as compiled code and benchmark reports care."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_identity() -> str:
    """The CPU compiled code is for: its model and instruction-set features from /proc/cpuinfo
    (x86 and Arm name them differently), else what `platform` says."""
    import platform

    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part", "CPU architecture")
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    found = "\n".join(dict.fromkeys(x for x in lines if x.startswith(keys)))
    return found or f"{platform.machine()} {platform.processor()} {platform.platform()}"
