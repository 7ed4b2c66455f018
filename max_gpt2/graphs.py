"""Building MAX graphs from our modules, and keeping them compiled: the one module that touches
MAX's internals (its cache folder, its compiler's session, the `mojo` tool).

- `building`: how a module is made for compiling (lazily, on a device, float32).
- `kernel_library`: our Mojo kernels (kernels/*.mojo) built once into a .mojoc, kept by content.
- `compile_module`: a module compiled through `store()`, a session that keeps every compiled graph
  as a file (a MEF) and loads it next time. MAX's own compile cache makes a graph it has seen
  quicker to compile, not quick: it runs the front of the graph compiler before it can look the
  graph up (seconds a graph); a MEF file loads in milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from max_gpt2.errors import KernelBuildError

KERNELS = Path(__file__).parent / "kernels"
GRAPH_FILES_KEPT = 32  # compiled graphs kept on disk, the least recently used dropped first
_first_use = threading.Lock()  # functools.cache alone lets two threads' first calls both run


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


def compile_module(module_cls, config, input_types, weights, *, device=None, precision=None, **options):
    """`module_cls(config, **options)` compiled for `input_types` with `weights` bound, through
    the graph-file store; its weights held as `precision` says (max_gpt2/narrow.py), if given."""
    from max_gpt2.narrow import narrow

    with building(device):
        module = module_cls(config, **options)
        if precision is not None:
            narrow(module, precision)
    return module.compile(*input_types, weights=weights, session=store())


def cache_folder() -> Path | None:
    """Our folder beside MAX's compile cache (it follows XDG_CACHE_HOME), or None if MAX has none."""
    from max import _core

    cache = _core.engine.max_cache_dir()
    return Path(cache).parent / "max-gpt2" if cache else None


# --- the kernel library -----------------------------------------------------------------------


def kernel_library(sources: Path = KERNELS) -> Path:
    """The Mojo package in `sources` built into a .mojoc named by a digest of its files.

    MAX can take the source folder itself, but it rebuilds it in every process, and a graph with
    a freshly built library is slow to load even when the compiled graph is cached. Without a
    cache folder the library is built into a private temporary folder that lives as long as the
    process.
    """
    from max import _core

    sources = Path(sources)
    files = sorted(sources.glob("*.mojo"))
    digest = hashlib.sha256(_core.__version__.encode())
    for source in files:
        digest.update(source.name.encode() + source.read_bytes())
    folder = cache_folder() or Path(_private_folder())
    library = folder / f"max_gpt2_kernels_{digest.hexdigest()[:16]}.mojoc"
    with _first_use:  # one build in this process; others wait for it
        if library.exists():
            return library
        folder.mkdir(parents=True, exist_ok=True)
        # Built under its final name (the compiler records it) in a private folder, then moved
        # into place at once, so a concurrent process never reads half a file, and a failed
        # build leaves nothing behind.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".staging-") as staging:
            built = Path(staging) / library.name
            _run_mojo(["precompile", str(sources), "-o", str(built)], sources)
            os.replace(built, library)
    return library


def _run_mojo(args: list[str], sources: Path) -> None:
    from mojo.paths import subprocess_run_mojo

    try:
        done = subprocess_run_mojo(args, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"could not run the mojo compiler to build {sources}: {e}") from None
    if done.returncode != 0:
        output = (done.stderr or "") + (done.stdout or "")
        raise KernelBuildError(f"the Mojo kernels in {sources} did not build:\n{output.strip()}")


@functools.cache
def _private_folder() -> str:
    folder = tempfile.mkdtemp(prefix="max-gpt2-")
    import atexit

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


# --- compiled graphs kept as files ------------------------------------------------------------


def store():
    with _first_use:
        return _store()


@functools.cache
def _store():
    """MAX's session, keeping every graph it compiles as a file named by a digest of everything
    the compiled code depends on: the graph's full text (every operation, shape and parameter,
    and our kernel library's path, which holds a digest of the kernels' source), the compile
    options and MAX's debug settings, MAX's version, the CPU and the devices. A graph that
    differs in any of them names another file. Weights are not in the file: they are bound when
    it loads.
    """
    from max import driver
    from max.engine import InferenceSession

    class GraphStore(InferenceSession):
        # MAX's Module.compile(session=...) calls this; tests/test_parity.py fails if it stops.
        def compile_reusing_mefs(self, model, **options):
            text = repr(model)
            if "mo.call" in text:  # a subgraph's body is not in the text, so it could not be told apart
                return super().compile_reusing_mefs(model, **options)
            path = graph_file(model.name, text, self._setting(options))
            if path is not None and path.is_file():
                try:
                    compiled = self.compile(path)
                    path.touch()  # recently used: kept when older files are dropped
                    return compiled
                except Exception:  # noqa: BLE001  unreadable (a MAX upgrade mid-run?): compile anew
                    pass
            compiled = super().compile_reusing_mefs(model, **options)
            if path is not None:
                keep(compiled, path)
            return compiled

        def _setting(self, options) -> str:
            debug = {k: str(getattr(self.debug, k)) for k in dir(self.debug) if not k.startswith("_")
                     and not callable(getattr(self.debug, k))}
            env = {k: v for k, v in os.environ.items() if k.startswith(("MODULAR_", "MAX_"))
                   and k != "MODULAR_DERIVED_PATH"}  # that one is the folder the file is in
            devices = [f"{d} {'' if d.is_host else d.architecture_name}" for d in self.devices]
            return repr((sorted(options.items()), sorted(debug.items()), sorted(env.items()), devices))

    # The devices of MAX's own session (max.experimental): every one found, and the host CPU.
    specs = driver.scan_available_devices()
    if driver.DeviceSpec.cpu() not in specs:
        specs.append(driver.DeviceSpec.cpu())
    return GraphStore(devices=driver.load_devices(specs))


def graph_file(name: str, text: str, setting: str) -> Path | None:
    """Where a compiled graph is kept; None if MAX has no cache folder."""
    from max import _core

    from max_gpt2.machine import cpu_identity

    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256()
    for part in (_core.__version__, cpu_identity(), setting, text):
        digest.update(part.encode() + b"\0")
    return folder / "graphs" / f"{''.join(c if c.isalnum() else '_' for c in name)}-{digest.hexdigest()[:32]}.mef"


def keep(compiled, path: Path, most: int | None = None) -> None:
    """Writes a compiled graph to its file, then drops the least recently used files beyond
    `most` (GRAPH_FILES_KEPT): each MAX upgrade or kernel change names new files, and the old
    ones would otherwise stay forever. A file that cannot be written is only not kept."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        compiled.export_mef(partial)
        os.replace(partial, path)  # at once: a concurrent process never reads half a file
    except Exception:  # noqa: BLE001  a full or read-only disk: the compiled graph still runs
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
        return
    files = sorted(path.parent.glob("*.mef"), key=_mtime, reverse=True)
    for old in files[GRAPH_FILES_KEPT if most is None else most:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
