"""bench's options, and the engines' names and roles: what the parser needs, nothing heavier."""

from __future__ import annotations

import argparse
import importlib.util

from max_gpt2.errors import GPT2Error

# The CPU engines users compare with, and the modules each needs (the `bench-peers` extra).
PEERS = {"ctranslate2-fp32": ("ctranslate2",), "onnxruntime-fp32": ("onnxruntime", "onnx"),
         "llama.cpp-f32": ("llama_cpp", "gguf")}
# The same engines with 8-bit weights, for the reduced-precision comparison.
PEERS_INT8 = {"ctranslate2-int8": ("ctranslate2",), "llama.cpp-q8_0": ("llama_cpp", "gguf")}
NARROW = ("max-gpt2-bf16", "max-gpt2-int8")  # ours with narrower weights
ENGINES = ("max-compiled-kv", *NARROW, "max-compiled-recompute", "max-eager", "torch-eager", "torch-compile", *PEERS,
           *PEERS_INT8)
COMPILED = ("max-compiled-kv", *NARROW, "max-compiled-recompute", "torch-compile")  # these have compile times
REFERENCE = "torch-eager"  # transformers itself: its greedy tokens are the ones to match
OURS = "max-compiled-kv"
# The targets compare ours with these: they run every round, the other engines in the first.
EVERY_ROUND = (OURS, *NARROW, REFERENCE, *PEERS, *PEERS_INT8)
DECODE_PROMPT = 16  # tokens in the prompt of the decode and batch workloads
MAX_BATCH = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH",
                   help="a GPT-2 checkpoint (folder, .safetensors or pytorch_model.bin; default: a seeded "
                        "random checkpoint at the 124M configuration, written to a temporary folder)")
    p.add_argument("--engines", default=",".join(ENGINES), metavar="LIST",
                   help=f"comma-separated, from {', '.join(ENGINES)} (default: all)")
    p.add_argument("--prompt-lengths", default="16,128,512", metavar="LIST",
                   help="prompt lengths for the prefill latency (default: 16,128,512)")
    p.add_argument("--new-tokens", type=int, default=128, metavar="N",
                   help="tokens generated at batch 1, for decode tokens/s (default: 128)")
    p.add_argument("--batch", type=int, default=8, metavar="B", help="the batch size of the throughput run (default: 8)")
    p.add_argument("--batch-new-tokens", type=int, default=64, metavar="N",
                   help="tokens generated per sequence in the throughput run (default: 64)")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="rounds of the workloads over the engines, kept loaded; ours, torch-eager and the peers "
                        "run in every round, the others in the first; figures are medians (default: 5; 2 with --quick)")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold-cache compile (each takes minutes); compile_s_cold is then null")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="seconds any one compile or workload of an engine may take (default: 600)")
    p.add_argument("--eager-timeout", type=float, metavar="S",
                   help="seconds max-eager may run, which needs minutes per forward; what finished is reported "
                        "(default: 120; 10 with --quick)")
    p.add_argument("--compile-timeout", type=float, default=300, metavar="S",
                   help="seconds each torch-compile process may run: the cold compile; the measured one's compile "
                        "and workloads (default: 300)")
    p.add_argument("--quick", action="store_true",
                   help="a check that bench works, not a measurement: prompt lengths 8,16, 8 new tokens, "
                        "no cold compile, max-eager time-boxed to 10 s")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw the engines side by side in a PNG")


def settle(args) -> tuple[list[str], list[int]]:
    """Fills in the defaults that depend on --quick and checks every option; the engines to run
    and the prompt lengths, in order."""
    engines = _engines(args.engines)
    if args.quick:
        args.prompt_lengths, args.new_tokens, args.batch_new_tokens, args.no_cold = "8,16", 8, 8, True
    if args.eager_timeout is None:
        args.eager_timeout = 10 if args.quick else 120
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    lengths = _lengths(args.prompt_lengths)
    if args.new_tokens < 2 or args.batch_new_tokens < 1 or args.batch < 1 or args.rounds < 1:
        raise GPT2Error("--new-tokens must be >= 2, --batch-new-tokens, --batch and --rounds >= 1")
    if args.batch > MAX_BATCH:
        raise GPT2Error(f"--batch must be at most {MAX_BATCH} (every engine keeps a cache of its context for each "
                        f"row), got {args.batch}")
    for name in ("timeout", "eager_timeout", "compile_timeout"):
        seconds = getattr(args, name)
        if not 0 < seconds < float("inf"):  # also refuses NaN
            raise GPT2Error(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {seconds}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise GPT2Error("--plot needs matplotlib: pip install 'max-gpt2[bench]'") from None
    return engines, lengths


def unavailable(engine: str) -> str | None:
    """Why an engine cannot run here (a one-line reason), or None if it can."""
    missing = [m for m in {**PEERS, **PEERS_INT8}.get(engine, ()) if importlib.util.find_spec(m) is None]
    if missing:
        return f"skipped: needs {' and '.join(missing)} (pip install 'max-gpt2[bench-peers]')"
    return None


def _engines(text: str) -> list[str]:
    names = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown or not names:
        raise GPT2Error(f"unknown engine {', '.join(unknown) or '(none)'}; choose from {', '.join(ENGINES)}")
    return list(dict.fromkeys(names))


def _lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise GPT2Error(f"--prompt-lengths must be whole numbers separated by commas, got {text!r}") from None
    if not lengths or lengths[0] < 1:
        raise GPT2Error(f"--prompt-lengths must be >= 1, got {text!r}")
    return lengths
