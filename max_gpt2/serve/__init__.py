"""GPT-2 on MAX Serve: our model as a `max serve` architecture, and `max-gpt2 serve`.

Written for MAX 26.7 (its ModuleV3 pipeline API: `ModuleV3PipelineModelWithKVCache`, the
ragged batch processor, `KVCacheInputs`); another MAX release may move these names.

- `network`: our modules (max_gpt2/model.py) over MAX's paged key/value cache, projecting
  through our engine's kernels (max_gpt2/decode.py's `matvec`), which take our matrix-vector
  product for a batch of few rows and MAX's matmul for more.
- `architecture`: what `max serve` needs around them: the config, the weight adapter (ours,
  max_gpt2/weights.py), the pipeline model, and the registration `GPT2LMHeadModel`.
- `launch`: the `max-gpt2 serve` command, which starts `max serve` with this architecture.

`max serve --custom-architectures max_gpt2.serve` imports this package and reads
`ARCHITECTURES`; it is made on first use, so `max-gpt2 serve --help` imports no MAX.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "ARCHITECTURES":
        from max_gpt2.serve.architecture import gpt2_arch

        return [gpt2_arch]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
