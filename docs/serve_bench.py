"""The serving figures behind docs/benchmarks.md: `max-gpt2 serve` (MAX Serve with our
architecture) beside llama.cpp's own `llama-server`, on the same GPT-2 checkpoint, and our engine
without a server for scale. Run it in the serve environment, with nothing else running:

    .venv-serve/bin/python docs/serve_bench.py --model FOLDER --llama-server PATH --gguf FILE \
        [--narrow] [--gguf-q8 FILE]

FOLDER is a Hugging Face folder with tokenizer files; FILE the same weights as a float32 GGUF
(bench's llama.cpp-f32 engine writes one: `max_gpt2.bench.peers._write_gguf`); PATH a
`llama-server` built from llama.cpp's source (llama-cpp-python's sdist vendors it). Each server
gets 8 slots. `--narrow` adds our engine and our server with bfloat16 and with int8 weights
(warm starts only), `--gguf-q8` llama-server on the same weights in q8_0. Prints, for our engine and each server: one stream's decode tokens/s (128 tokens
after a 16-token prompt, greedy), 8 concurrent streams' tokens/s (64 tokens each, prefill
included), time until /health answers (cold: MAX's cache emptied; warm: again), and the
resident memory of the server's processes. A measurement script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "The history of the city begins in the year"  # a few English words; about 10 tokens
DECODE, BATCH, BATCH_TOKENS = 128, 8, 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (psutil: MAX requires it)."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


class Server:
    def __init__(self, command: list[str], port: int, env: dict) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)
        start = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        while not self._healthy():
            if self.proc.poll() is not None:
                sys.exit(f"{command[0]} exited; its log: {self.log.name}")
            time.sleep(0.25)
        self.seconds_to_healthy = time.perf_counter() - start

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def complete(self, model: str, max_tokens: int) -> tuple[int, list[float]]:
        """One greedy streamed completion: the tokens it returned, and when each chunk came."""
        body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                           "stream": True}).encode()
        request = urllib.request.Request(self.base + "/v1/completions", body, {"Content-Type": "application/json"})
        stamps = []
        with urllib.request.urlopen(request, timeout=600) as r:
            for line in r:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    if json.loads(line[6:])["choices"][0].get("text"):
                        stamps.append(time.perf_counter())
        return len(stamps), stamps

    def measure(self, model: str) -> dict:
        self.complete(model, 4)  # warm-up
        n, stamps = self.complete(model, DECODE)
        start = time.perf_counter()
        with ThreadPoolExecutor(BATCH) as pool:
            counts = [c for c, _ in pool.map(lambda _: self.complete(model, BATCH_TOKENS), range(BATCH))]
        wall = time.perf_counter() - start
        return {"one_stream_tokens_per_s": (n - 1) / (stamps[-1] - stamps[0]), "one_stream_tokens": n,
                f"{BATCH}_streams_tokens_per_s": sum(counts) / wall, "streams_tokens": counts,
                "seconds_to_healthy": round(self.seconds_to_healthy, 1), "rss_mb": round(tree_rss_mb(self.proc.pid))}

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=120)


# Our precisions: the engine's keyword arguments, and the server's options.
PRECISIONS = {"float32": ({}, []), "bfloat16": ({"dtype": "bfloat16"}, ["--dtype", "bfloat16"]),
              "int8": ({"quantize": "int8"}, ["--quantize", "int8"])}


def engine(model: str, precision: str = "float32") -> dict:
    """Our engine without a server, in a process of its own: the same two workloads in token ids."""
    code = f"""
import json, time, numpy as np
from max_gpt2 import GPT2
m = GPT2.from_pretrained({model!r}, **{PRECISIONS[precision][0]!r}); m.compile(logits=False)
ids = m.tokenizer.encode({PROMPT!r})
list(m.generate_tokens([ids], 4))
stamps = [time.perf_counter() for _ in m.generate_tokens([ids], {DECODE})]
start = time.perf_counter(); n = sum(1 for _ in m.generate_tokens([ids] * {BATCH}, {BATCH_TOKENS}))
print(json.dumps({{"one_stream_tokens_per_s": ({DECODE} - 1) / (stamps[-1] - stamps[0]),
                  "{BATCH}_streams_tokens_per_s": {BATCH} * n / (time.perf_counter() - start)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Hugging Face folder with tokenizer files")
    p.add_argument("--llama-server", required=True, help="the llama-server binary")
    p.add_argument("--gguf", required=True, help="the same weights as a float32 GGUF file")
    p.add_argument("--narrow", action="store_true", help="also our engine and server in bfloat16 and int8")
    p.add_argument("--gguf-q8", metavar="FILE", help="also llama-server on the same weights in q8_0")
    args = p.parse_args()
    precisions = list(PRECISIONS) if args.narrow else ["float32"]
    results = {f"engine (no server) {precision}": engine(args.model, precision) for precision in precisions}
    cli = [str(Path(sys.executable).parent / "max-gpt2"), "serve", "--model", args.model, "--max-batch-size", str(BATCH)]
    with tempfile.TemporaryDirectory(prefix="serve-bench-cache-") as cold:
        env = {**os.environ, "XDG_CACHE_HOME": cold}  # MAX's caches and ours, empty: a cold start
        for precision in precisions:  # a first start compiles (cold), a second is measured (warm)
            options = cli + PRECISIONS[precision][1]
            cold_seconds = 0.0
            for measured in (False, True):
                port = free_port()
                server = Server(options + ["--port", str(port), "--metrics-port", str(free_port())], port, env)
                if measured:
                    results[f"max-gpt2 serve {precision}"] = {**server.measure(args.model),
                                                              "cold_seconds_to_healthy": round(cold_seconds, 1)}
                cold_seconds = server.seconds_to_healthy
                server.stop()
    for name, gguf in (("f32", args.gguf), ("q8_0", args.gguf_q8)):
        if gguf is None:
            continue
        port = free_port()
        server = Server([args.llama_server, "-m", gguf, "--port", str(port), "--parallel", str(BATCH),
                         "-c", str(BATCH * 1024), "--threads", str(os.cpu_count()), "--no-webui"], port, dict(os.environ))
        results[f"llama-server {name}"] = server.measure(args.model)
        server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
