"""The command line as users meet it: real processes, one clear line for every mistake."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Always pass env=: importing MAX puts PYTHONEXECUTABLE in this process's real environment (not
# in os.environ), and a child that inherits it starts outside our virtual environment.
CLI = [str(Path(sys.executable).with_name("max-gpt2"))]


def run(*args, stdin=None, env=None, timeout=600):
    return subprocess.run(CLI + list(args), input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def assert_one_clear_error(result, *fragments):
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("max-gpt2: error: "), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_help_lists_the_commands():
    out = run("--help").stdout
    for command in ("chat", "generate", "verify"):
        assert command in out


def test_verify_passes_and_says_so(hub):
    result = run("verify", "--model", str(hub.path))
    assert result.returncode == 0, result.stderr
    assert "OK: MAX and transformers agree" in result.stdout and "✓ greedy tokens" in result.stdout


def test_verify_exits_1_when_the_loader_skips_the_c_proj_transpose(hub):
    """The sabotage verify exists for: a loader that forgets to transpose the square attn.c_proj."""
    code = (
        "import sys, max_gpt2.checkpoints.mapping as m; m.CONV1D = tuple(c for c in m.CONV1D if c != 'attn.c_proj');"
        "from max_gpt2.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run([sys.executable, "-c", code, "verify", "--model", str(hub.path)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "✗ max |Δlogit|" in result.stdout and "FAILED" in result.stdout


def test_generate_prints_the_continuation(hub):
    result = run("generate", "--model", str(hub.path), "--prompt", "The meaning of life is", "--greedy",
                 "--max-new-tokens", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hub.model.generate("The meaning of life is", 20) + "\n"


def test_generate_with_a_seed_is_reproducible(hub):
    args = ("generate", "--model", str(hub.path), "--prompt", "Hi", "--seed", "5", "--max-new-tokens", "16")
    assert run(*args).stdout == run(*args).stdout


# Every generation option at its edges: (command line options, the same values through the
# Python API). None: argparse refuses the text itself. Each must fail before the model loads:
# --model names no checkpoint, so a check that came after loading would report that instead.
BAD_OPTIONS = [
    (["--seed", "-1"], dict(seed=-1)),
    (["--seed", "2**70"], None),
    (["--seed", "1.5"], None),
    (["--temperature", "-1"], dict(temperature=-1.0)),
    (["--temperature", "nan"], dict(temperature=float("nan"))),
    (["--temperature", "inf"], dict(temperature=float("inf"))),
    (["--temperature", "1e999"], dict(temperature=float("inf"))),
    (["--temperature", "warm"], None),
    (["--top-k", "-3"], dict(top_k=-3)),
    (["--top-k", "1.5"], None),
    (["--top-p", "0"], dict(top_p=0.0)),
    (["--top-p", "1.5"], dict(top_p=1.5)),
    (["--top-p", "nan"], dict(top_p=float("nan"))),
    (["--top-p", "inf"], dict(top_p=float("inf"))),
    (["--top-p=-inf"], dict(top_p=float("-inf"))),  # "--top-p -inf" reads -inf as an option
    (["--max-new-tokens", "0"], dict(max_new_tokens=0)),
    (["--max-new-tokens", "-5"], dict(max_new_tokens=-5)),
    (["--max-new-tokens", "1e3"], None),
    (["--device", "tpu"], None),
    (["--no-such-option"], None),
]


def api_error(kwargs) -> str:
    """The sentence the Python API raises for these values."""
    from max_gpt2.errors import GPT2Error
    from max_gpt2.sampling import Sampling, check_max_new_tokens

    kwargs = dict(kwargs)
    with pytest.raises(GPT2Error) as raised:
        check_max_new_tokens(kwargs.pop("max_new_tokens", 1))
        Sampling(do_sample=True, **kwargs)
    return str(raised.value)


@pytest.mark.parametrize("command", ["chat", "generate"])
@pytest.mark.parametrize("args, api", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_before_loading(command, args, api):
    prompt = ["--prompt", "x"] if command == "generate" else []
    result = run(command, "--model", "/nonexistent", *prompt, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    if api is None:
        assert line.startswith(f"max-gpt2: error: argument {args[0]}") or "unrecognized" in line, line
        assert line.endswith(" --help')"), line
    else:
        assert line == f"max-gpt2: error: {api_error(api)}"


def test_an_empty_prompt_is_refused_before_loading():
    assert_one_clear_error(run("generate", "--model", "/nonexistent", "--prompt", ""), "--prompt is empty")


@pytest.mark.parametrize("args, fragment", [
    (["generate"], "the following arguments are required: --prompt"),
    (["verify", "--model", "/nonexistent", "--seed", "1"], "unrecognized arguments: --seed 1"),
    (["chat", "--max-new-tokens"], "argument --max-new-tokens: expected one argument"),
])
def test_a_mistake_in_the_arguments_is_one_line(args, fragment):
    result = run(*args)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert_one_clear_error(result, fragment)


def test_a_large_max_new_tokens_stops_at_the_context(hub):
    result = run("generate", "--model", str(hub.path), "--prompt", "Hi", "--greedy", "--max-new-tokens", str(10**12))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hub.model.generate("Hi", hub.config.n_positions) + "\n"


def test_a_prompt_that_is_not_utf8_is_one_line(hub):
    result = subprocess.run([*CLI, "generate", "--model", str(hub.path), "--prompt", b"caf\xe9"], capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_clear_error(result, "the text is not valid Unicode: character 3 is U+DCE9")


def test_nonexistent_path():
    assert_one_clear_error(run("verify", "--model", "./no/such/checkpoint"), "no such file or folder: ./no/such/checkpoint")


def test_hub_id_while_offline(tmp_path):
    assert_one_clear_error(run("generate", "--model", "gpt2-large", "--prompt", "x", env={"HF_HOME": str(tmp_path)}),
                           "'gpt2-large' is not in the Hugging Face cache", "HF_HUB_OFFLINE is set")


def test_truncated_safetensors(hub, tmp_path):
    data = (hub.path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    (tmp_path / "config.json").write_text((hub.path / "config.json").read_text())
    assert_one_clear_error(run("verify", "--model", str(tmp_path)), "may be truncated")


def test_config_and_weights_disagree(edited_hub):
    folder = edited_hub(lambda t: None)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 192, "n_head": 12}))
    assert_one_clear_error(run("verify", "--model", str(folder)), "config says vocab_size=50257, n_embd=192 but wte is [50257, 96]")


def test_missing_tensor(edited_hub):
    assert_one_clear_error(run("verify", "--model", str(edited_hub(lambda t: t.pop("ln_f.weight")))),
                           "missing transformer.ln_f.weight")


def test_unexpected_tensor(edited_hub):
    extra = lambda t: t.update({"h.0.mlp.gate.weight": np.zeros((1,), np.float32)})  # noqa: E731
    assert_one_clear_error(run("verify", "--model", str(edited_hub(extra))), "unexpected transformer.h.0.mlp.gate.weight")


def test_pickle_that_would_run_code_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    code = f"""
import torch
class Exploit:
    def __reduce__(self):
        return (exec, ("open({str(marker)!r}, 'w').write('pwned')",))
torch.save({{"wte.weight": torch.zeros(2, 2), "x": Exploit()}}, {str(tmp_path / 'pytorch_model.bin')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    assert_one_clear_error(run("verify", "--model", str(tmp_path / "pytorch_model.bin")), "refused to load", "could run code")
    assert not marker.exists()


def test_a_checkpoint_without_a_tokenizer_for_text(hub, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(hub.path / "model.safetensors")
    (tmp_path / "config.json").write_text((hub.path / "config.json").read_text())
    assert_one_clear_error(run("generate", "--model", str(tmp_path), "--prompt", "hi"), "no tokenizer files", "--tokenizer")
    ok = run("generate", "--model", str(tmp_path), "--tokenizer", str(hub.path), "--prompt", "hi", "--greedy",
             "--max-new-tokens", "5")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("pydantic_settings") is not None,
                    reason="MAX Serve is installed here: `serve` would start it (tests/test_serve.py does)")
def test_serve_without_the_serve_extra_is_one_line_naming_it():
    assert_one_clear_error(run("serve", "--model", "/nonexistent"), "pip install 'max-gpt2[serve]'")


@pytest.mark.parametrize("args, fragment", [
    (["--port", "70000"], "--port 70000 is not a port"),
    (["--max-batch-size", "0"], "--max-batch-size 0 must be at least 1"),
    (["--dtype", "bfloat16", "--quantize", "int8"], "cannot be combined with dtype='bfloat16'"),
])
def test_a_bad_serve_option_is_one_line_before_anything_starts(args, fragment):
    assert_one_clear_error(run("serve", "--model", "/nonexistent", *args), fragment)
