"""Building MAX graphs from our modules, and keeping them compiled.

The one place that knows how MAX wants a module made before it is compiled.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def building(device=None):
    """Modules made inside are only described, not initialised, on `device` (default: the CPU),
    in float32, ready for `Module.compile(..., weights=...)`.

    Made eagerly, a GPT-2's random initialisation alone takes minutes; described lazily it
    costs nothing, and the checkpoint's weights are bound when the graph compiles.
    """
    import max.experimental.functional as F
    from max.driver import CPU
    from max.dtype import DType
    from max.experimental.tensor import default_device, default_dtype

    with F.lazy(), default_device(device if device is not None else CPU()), default_dtype(DType.float32):
        yield
