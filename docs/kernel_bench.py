"""The measurements behind docs/benchmarks.md's account of the targets: GPT-2 124M's projections
on their own, MAX's matmul against our matrix-vector kernel, and the machine's limits.

    .venv/bin/python docs/kernel_bench.py            # about 2 minutes
    .venv/bin/python docs/kernel_bench.py --quick    # tiny sizes, to check that it runs

Prints, for 1 and 8 rows (decode at batch 1 and 8): the 48 projections of the 12 blocks in a
chain (340 MB of weights) and the tied head (154 MB), each as MAX's `x @ W.T + b` and as
`max_gpt2.model.matvec`, in ms and GB/s of weights read; the streaming read bandwidth (as bench
measures it); and the GFLOP/s of one prefill-sized matmul (512 x 768 x 3072) in MAX and in torch.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from max.driver import CPU
from max.dtype import DType
from max.experimental import compilation
from max.experimental.tensor import Tensor, TensorType

from max_gpt2.decode import matvec
from max_gpt2.machine import memory_bandwidth

@dataclass(frozen=True)
class Sizes:
    layers: int = 12
    width: int = 768  # C
    vocab: int = 50257
    prefill: int = 512  # rows of the prefill-sized matmul
    bandwidth_gib: float = 1.0
    reps: int = 20

    @property
    def shapes(self):  # c_attn, attn.c_proj, c_fc, mlp.c_proj: [out, in]
        c = self.width
        return [(3 * c, c), (c, c), (4 * c, c), (c, 4 * c)]


GPT2_124M = Sizes()
QUICK = Sizes(layers=2, width=64, vocab=1000, prefill=32, bandwidth_gib=0.0625, reps=2)


def best_ms(run, buffers, reps) -> float:
    for _ in range(3):
        run.execute_raw(*buffers)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run.execute_raw(*buffers)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def chain(project, layers: int, c: int):
    """The blocks' projections in sequence, with the residual adds: what a decode step's weights cost."""

    def run(x, *weights):
        ws, bs = weights[: len(weights) // 2], weights[len(weights) // 2:]
        for layer in range(layers):
            w = ws[4 * layer: 4 * layer + 4]
            b = bs[4 * layer: 4 * layer + 4]
            qkv = project(x, w[0], b[0])
            x = x + project(qkv[:, :c], w[1], b[1])
            x = x + project(project(x, w[2], b[2]), w[3], b[3])
        return x

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    sizes = QUICK if parser.parse_args(argv).quick else GPT2_124M
    C, V, reps = sizes.width, sizes.vocab, sizes.reps
    device = CPU()
    rng = np.random.default_rng(0)
    # torch first, before MAX's threads exist: the two thread pools slow each other.
    a = rng.standard_normal((sizes.prefill, C), dtype=np.float32)
    w = rng.standard_normal((4 * C, C), dtype=np.float32)
    flop = 2 * sizes.prefill * C * 4 * C
    label = f"prefill-sized matmul {sizes.prefill} x {C} x {4 * C}"
    import torch

    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    times = []
    for _ in range(reps + 3):
        start = time.perf_counter()
        ta @ tw.T
        times.append(time.perf_counter() - start)
    print(f"{label}, torch: {flop / min(times[3:]) / 1e9:5.1f} GFLOP/s")

    weights = [rng.standard_normal(s, dtype=np.float32) * 0.02 for _ in range(sizes.layers) for s in sizes.shapes]
    biases = [rng.standard_normal(s[0], dtype=np.float32) * 0.02 for _ in range(sizes.layers) for s in sizes.shapes]
    wte = rng.standard_normal((V, C), dtype=np.float32) * 0.02
    block_bytes = sum(w.nbytes for w in weights)
    kinds = {"MAX matmul": lambda x, w, b: x @ w.T + b, "our matvec": matvec}

    # One graph per kind of projection and part, its number of rows symbolic, as in decode.
    f32 = lambda *shape: TensorType(DType.float32, shape, device=device)  # noqa: E731
    graphs = {
        name: (compilation.compile(chain(project, sizes.layers, C))(f32("rows", C), *(f32(*a.shape) for a in [*weights, *biases])),
               compilation.compile(lambda h, w, p=project: p(h, w, None) if p is matvec else h @ w.T)(f32("rows", C), f32(V, C)))
        for name, project in kinds.items()
    }
    for rows in (1, 8):
        x = rng.standard_normal((rows, C), dtype=np.float32)
        buffers = [Tensor.from_dlpack(a).driver_tensor for a in [x, *weights, *biases]]
        head_buffers = [Tensor.from_dlpack(a).driver_tensor for a in (x, wte)]
        for name, (run, head) in graphs.items():
            ms = best_ms(run, buffers, reps)
            print(f"{rows} row(s), {4 * sizes.layers} projections, {name}: {ms:6.2f} ms = {block_bytes / ms / 1e6:5.1f} GB/s")
            ms = best_ms(head, head_buffers, reps)
            print(f"{rows} row(s), head [{V}, {C}], {name}: {ms:6.2f} ms = {wte.nbytes / ms / 1e6:5.1f} GB/s")

    print(f"streaming read (bench's roofline): {memory_bandwidth(sizes.bandwidth_gib):.1f} GB/s")

    run = compilation.compile(lambda x, w: x @ w.T)(*(TensorType(DType.float32, t.shape, device=device) for t in (a, w)))
    ms = best_ms(run, [Tensor.from_dlpack(t).driver_tensor for t in (a, w)], reps)
    print(f"{label}, MAX:   {flop / ms / 1e6:5.1f} GFLOP/s")


if __name__ == "__main__":
    main()
