"""`max-gpt2 serve`: GPT-2 behind an OpenAI-compatible HTTP API (/v1/completions, /v1/models,
/health, Prometheus /metrics), served by MAX Serve with max-gpt2's architecture.

What it adds to a bare `max serve --custom-architectures max_gpt2.serve`:
- the loopback interface unless told otherwise (MAX binds 0.0.0.0), and the metrics server
  on its own port beside the API (MAX's default, 8001, collides with a second server);
- no outbound telemetry (OTEL_SDK_DISABLED=true; `/metrics` stays on);
- any checkpoint max-gpt2 reads: MAX Serve reads a Hugging Face folder of safetensors whose
  config.json names GPT2LMHeadModel, so anything else is converted into one first (once,
  kept in our cache folder);
- weights in bfloat16 or int8 (`--dtype`, `--quantize`), as in every other command: MAX
  Serve's model worker narrows them as it loads (max_gpt2/serve/architecture.py);
- progress lines while the model loads and compiles, one line of error if it does not start.
"""

# Only the standard library at import: `max-gpt2 --help` builds this command's parser.

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

from max_gpt2.errors import ServeError
from max_gpt2.precision import Precision, add_precision_options, precision_from
from max_gpt2.progress import Status, Waiting

ARCHITECTURE = "GPT2LMHeadModel"
# How the served weights are held: "float32" (the default), "bfloat16" or "int8", as `--dtype`
# and `--quantize` say. Passed to MAX's model worker, which inherits the environment, because
# MAX Serve's own --quantization-encoding has no int8 of ours and would also narrow the
# key/value cache and the activations, which our kernels keep in float32.
PRECISION_ENV = "MAX_GPT2_WEIGHTS"
# Modules MAX Serve needs that the plain `max` wheel does not bring: their absence means the extra is missing.
SERVE_MODULES = ("pydantic_settings", "fastapi", "uvicorn", "sse_starlette", "prometheus_client")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2", metavar="ID_OR_PATH",
                   help="a Hugging Face id, a local folder, or any checkpoint file max-gpt2 reads (default: gpt2)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="the API's port (default: 8000)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="the Prometheus /metrics port (default: the API's port + 1)")
    p.add_argument("--max-batch-size", type=int, metavar="N",
                   help="most requests decoded together (default: chosen by MAX Serve)")
    add_precision_options(p)
    p.add_argument("--verbose", action="store_true", help="show MAX Serve's whole log while it starts")
    p.add_argument("max_serve_args", nargs=argparse.REMAINDER, metavar="-- MAX_SERVE_OPTION",
                   help="options after `--` go to `max serve` as they are (see `max serve --help`)")


def run(args) -> int:
    for port, name in ((args.port, "--port"), (args.metrics_port, "--metrics-port")):
        if port is not None and not 0 < port < 65536:
            raise ServeError(f"{name} {port} is not a port: give a number from 1 to 65535")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise ServeError(f"--max-batch-size {args.max_batch_size} must be at least 1")
    precision = precision_from(args)
    require_serve_extra()
    status = Status()
    model = servable_folder(args.model, status, precision)
    command = max_serve_command(model, args)
    env = dict(os.environ, OTEL_SDK_DISABLED="true", MAX_SERVE_METRICS_ENDPOINT_PORT=str(args.metrics_port or args.port + 1))
    env[PRECISION_ENV] = precision.quantize or precision.dtype
    return supervise(command, env, status, f"http://{_host(args.host)}:{args.port}", verbose=args.verbose)


def require_serve_extra() -> None:
    import importlib.util

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ServeError(f"max-gpt2 serve needs MAX Serve, which this environment lacks ({', '.join(missing)}): "
                         "pip install 'max-gpt2[serve]' (in its own environment: it pins transformers)")


def servable_folder(source: str, say, precision: Precision = Precision()) -> Path:
    """A folder MAX Serve can load with our architecture: the checkpoint's own when it is one,
    else the checkpoint converted into one (kept in our cache, found again next time)."""
    from max_gpt2.engine import expected_shapes
    from max_gpt2.weights import adapt, check, resolve

    say(f"reading {source}")
    found = resolve(source)
    # Checked here, where a mistake is one line, rather than in MAX Serve's worker, where it is a traceback.
    check(adapt(found.tensors, found.config), expected_shapes(found.config), found.config, found.source)
    precision.check(found.config)
    folder = found.path if found.path is not None and found.path.is_dir() else found.folder
    if found.format == "huggingface" and folder is not None and _servable(folder):
        return folder
    from max_gpt2.convert import convert
    from max_gpt2.graphs import cache_folder

    base = cache_folder() or Path.home() / ".cache" / "max-gpt2"
    target = base / "serve" / f"{Path(str(source)).name or 'model'}-{_digest(found.path or source)}"
    if not _servable(target):
        say(Waiting(f"converting {source} to a Hugging Face folder MAX Serve reads ({target})"))
        convert(source, target, force=True)
    return target


def _servable(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return weights and isinstance(config, dict) and ARCHITECTURE in (config.get("architectures") or [])


def _digest(path) -> str:
    """Names a conversion by its source and the source's files' sizes and times, so an edited checkpoint converts anew."""
    path = Path(path)
    digest = hashlib.sha256(str(path.resolve() if path.exists() else path).encode())
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def max_serve_command(model: Path, args) -> list[str]:
    # "folder:module" puts our package's folder on MAX's import path, which its spawned model
    # worker inherits; a module name alone is not found there from an editable install.
    package_root = Path(__file__).resolve().parents[2]
    extra = list(args.max_serve_args or [])
    extra = extra[1:] if extra[:1] == ["--"] else extra
    command = [sys.executable, "-m", "max._entrypoints.pipelines", "serve", "--model", str(model),
               "--custom-architectures", f"{package_root}:max_gpt2.serve", "--devices", "cpu",
               "--host", args.host, "--port", str(args.port)]
    if "--served-model-name" not in extra:
        # Clients name the model as the user did (`gpt2`), not by the folder it was converted into.
        command += ["--served-model-name", args.model]
    if args.max_batch_size is not None:
        command += ["--max-batch-size", str(args.max_batch_size)]
    return command + extra


# MAX Serve's log lines that mark the start of a long step, and what we say for each.
PHASES = (
    ("Starting server", "starting MAX Serve"),
    ("Initializing model pipeline", "loading GPT-2 into MAX Serve's model worker"),
    ("Building, compiling", "compiling GPT-2 (minutes the first time; MAX caches it after)"),
)
READY = "Server ready on"


def supervise(command: list[str], env: dict, status, url: str, *, verbose: bool = False) -> int:
    """Runs MAX Serve, shows progress until it is ready, then passes its log through until it
    exits. Ctrl-C or SIGTERM stops it, workers included."""
    signal.signal(signal.SIGTERM, _interrupt)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, start_new_session=True)
    recent: deque[str] = deque(maxlen=40)
    ready, said = False, set()
    try:
        for line in process.stdout:
            if ready or verbose:
                sys.stderr.write(line)
                sys.stderr.flush()
            if ready:
                continue
            recent.append(line)
            if READY in line:
                ready = True
                status(f"serving GPT-2 at {url}/v1 (OpenAI API); health: {url}/health; Ctrl-C stops")
                continue
            for mark, message in PHASES:
                if mark in line and message not in said:  # MAX logs some steps once per graph
                    said.add(message)
                    status(Waiting(message))
        code = process.wait()
    except KeyboardInterrupt:
        status.close()
        _stop(process)
        return 130
    status.close()
    if not ready:
        tail = "".join(recent).rstrip()
        sys.stderr.write(f"{tail}\n")
        raise ServeError(f"MAX Serve stopped before it was ready (exit {code}); its last lines are above")
    return code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    """Stops MAX Serve and its workers (its own process group), politely first."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
