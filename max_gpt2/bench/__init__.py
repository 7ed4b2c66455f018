"""Our engine (float32, bfloat16, int8) against transformers and the CPU engines people choose
GPT-2 with, on one checkpoint, each engine in its own process.

Engines:
  max-compiled-kv         ours: the compiled step graph with a key/value cache (GPT2.generate_tokens)
  max-gpt2-bf16           the same with the weights in bfloat16 (from_pretrained(dtype="bfloat16"))
  max-gpt2-int8           the same with the weights in int8 (from_pretrained(quantize="int8"))
  max-compiled-recompute  the tutorial's design: the compiled full-sequence graph re-run over the
                          whole sequence for every new token
  max-eager               the same MAX modules called without compiling (time-boxed: very slow)
  torch-eager             transformers' generate with its key/value cache
  torch-compile           the same, with the model's forward under torch.compile (time-boxed)
  ctranslate2-fp32        CTranslate2's Generator on the checkpoint converted by its converter
  onnxruntime-fp32        ONNX Runtime on a decoder-with-past exported by torch.onnx
  llama.cpp-f32           llama.cpp (llama-cpp-python) on a float32 GGUF written as its converter does
  ctranslate2-int8        CTranslate2 with its int8 weights (compute type int8)
  llama.cpp-q8_0          llama.cpp on the GGUF in q8_0, its 8-bit format
The last five are the CPU engines people compare with; they need the bench-peers extra
(pip install 'max-gpt2[bench-peers]') and are skipped, with the reason, without it.

Workloads: prefill latency by prompt length; decode tokens/s over N new tokens at batch 1; time to
first token; tokens/s at batch 8; compile time with an empty (cold) and a filled (warm) compile
cache; resident memory after loading, and at its peak. Greedy tokens of every engine are checked against transformers, and
each engine's logits of one sequence, teacher-forced (transformers' greedy continuation), are
compared with transformers': top-1 agreement and the largest difference.
The roofline is the memory read bandwidth measured in the same run divided by the weight bytes
one decode step reads: the fastest any engine could decode one sequence on this machine.

The machine's speed drifts over minutes, so the engines stay loaded, each in its own process,
and the workloads go round them in rounds, seconds apart. Ours, torch-eager and the peers,
which the targets compare, run every round, the others the first; a figure is the median over
rounds, and a target the median of the rounds' ratios (against the best peer of each round).

Without --model, a seeded random checkpoint at GPT-2's real 124M configuration is written to a
temporary folder and benchmarked (speed does not depend on the weight values).
"""

# This module and `arguments` are all the command line imports to build its parser: light, no
# MAX, torch or numpy. The rest of the package loads when the command runs.
#
#   arguments  the options, and the engines' names and roles
#   runner     the command: checkpoint, rounds over the engine processes, the report
#   worker     one engine's process: both ends of its pipe (Worker in the bench, serve in the child)
#   engines    the engine adapters and the workloads they run
#   peers      CTranslate2, ONNX Runtime and llama.cpp as engines (the bench-peers extra)
#   stats      figures from the rounds: medians, ratios, the targets, the greedy-token check
#   report     the table on stdout
#   plot       the PNG

from __future__ import annotations

from max_gpt2.bench.arguments import add_arguments

__all__ = ["add_arguments", "run"]


def run(args) -> int:
    """`max-gpt2 bench`: runs the benchmark the parsed options describe."""
    from max_gpt2.bench.runner import run

    return run(args)
