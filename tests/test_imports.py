"""Starting `max-gpt2` costs no MAX: the package and the command line import it only when a
command needs a model, so `import max_gpt2` and `--help` return at once."""

import json
import os
import subprocess
import sys

import pytest

import max_gpt2

# A fresh interpreter: this test process has imported MAX long ago (conftest, other tests).
SCRIPT = """
import contextlib, io, json, sys
import max_gpt2
from max_gpt2 import cli

cli.parser()
helps = {}
for argv in (["--help"], ["bench", "--help"], ["serve", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            cli.main(argv)
        except SystemExit:
            pass
    helps[" ".join(argv)] = out.getvalue()
print(json.dumps({"modules": sorted(sys.modules), "helps": helps}))
"""


def fresh_start() -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_import_and_help_import_no_max_torch_or_numpy():
    start = fresh_start()
    loaded = set(start["modules"])
    for heavy in ("max", "torch", "transformers", "numpy", "max_gpt2.engine"):
        assert heavy not in loaded, f"{heavy} is imported by `import max_gpt2` or `max-gpt2 --help`"
    # The bench command's parser comes from its light modules; its runner, engines and plot wait
    # for the command to run.
    bench = {m for m in loaded if m.startswith("max_gpt2.bench")}
    assert bench <= {"max_gpt2.bench", "max_gpt2.bench.arguments"}, bench
    # ... and the help is still all there.
    assert "chat" in start["helps"]["--help"] and "bench" in start["helps"]["--help"]
    bench_help = start["helps"]["bench --help"]
    for text in ("--engines", "--quick", "--plot", "max-compiled-kv", "torch-compile", "roofline"):
        assert text in bench_help, text
    # `serve`'s parser comes from its launcher alone: MAX Serve's architecture loads in the server.
    assert {m for m in loaded if m.startswith("max_gpt2.serve")} <= {"max_gpt2.serve", "max_gpt2.serve.launch"}
    assert "--max-batch-size" in start["helps"]["serve --help"]


@pytest.mark.parametrize("name", max_gpt2.__all__)
def test_every_public_name_resolves(name):
    value = getattr(max_gpt2, name)
    assert getattr(value, "__name__", None) == name


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'GPT3'"):
        max_gpt2.GPT3  # noqa: B018
