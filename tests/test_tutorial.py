"""The tutorial's checkers prove what they claim: every one passes on solutions/, fails on the
untouched steps/ with its hint, and names the typical mistakes planted in copies of the solutions.

A solution is the package's own code, so a mistake is planted by taking the package's source
for that piece (its ANCHOR region in max_gpt2/model.py, or a function), changing one line, and
appending the result to a copy of the solution file: the copy then defines the broken piece.

Compiling is what costs: every checker run here goes through one `run()`, so all the MAX
modules (the solutions' and the planted ones') compile as one graph, once.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from checks.check import CHECKERS, checker, run
from checks.learner import ROOT, Code

STEPS = sorted(CHECKERS)


def _package_source():
    spec = importlib.util.spec_from_file_location("package_source", ROOT / "solutions" / "package_source.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _region(name: str) -> tuple[str, str]:
    return "max_gpt2.model", _package_source().anchor(name)[1]


def _function(module: str, name: str) -> tuple[str, str]:
    return module, inspect.getsource(getattr(importlib.import_module(module), name))


# name: (step, where the package has it, the line as it is, the line with the mistake, what the failure must say)
MISTAKES = {
    "relu_instead_of_tanh_gelu": (2, lambda: _region("feed_forward_network"),
                                  'return F.gelu(x, approximate="tanh")', "return F.relu(x)", "ReLU"),
    "exact_gelu_instead_of_tanh_gelu": (2, lambda: _region("feed_forward_network"),
                                        'return F.gelu(x, approximate="tanh")', "return F.gelu(x)", "exact (erf) GELU"),
    "mask_off_by_one": (3, lambda: _region("causal_mask"), "num_upper=0", "num_upper=1", "off by one"),
    "no_scale": (4, lambda: _region("multi_head_attention"), "self.scale /= math.sqrt(self.head_dim)",
                 "self.scale /= 1.0", "no 1/sqrt(head_dim) scale"),
    "heads_merged_in_wrong_order": (4, lambda: _region("multi_head_attention"),
                                    "x.transpose(1, 2).reshape([b, t, self.n_head * self.head_dim])",
                                    "x.reshape([b, t, self.n_head * self.head_dim])",
                                    "heads merged in the wrong order"),
    "post_ln_instead_of_pre_ln": (6, lambda: _region("transformer_block"),
                                  "x = x + self.attn(self.ln_1(x))\n        return x + self.mlp(self.ln_2(x))",
                                  "x = self.ln_1(x + self.attn(x))\n        return self.ln_2(x + self.mlp(x))",
                                  "post-LN"),
    "untied_head": (8, lambda: _region("language_model_head"), "if not config.tie_word_embeddings:", "if True:",
                    "untied head"),
    "c_proj_left_untransposed": (11, lambda: _function("max_gpt2.checkpoints.huggingface", "plan"),
                                 "elif name.endswith(conv1d_weights()) and value.ndim == 2:",
                                 'elif name.endswith(conv1d_weights()) and value.ndim == 2 and ".attn.c_proj." not in name:',
                                 "is attn.c_proj transposed?"),
}


def plant(folder, name: str) -> Code:
    """A copy of solutions/ whose solution for the mistake's step defines the piece with the mistake."""
    step, where, line, wrong, _ = MISTAKES[name]
    module, source = where()
    assert source.count(line) == 1, f"{name}: the package no longer has {line!r} once; update MISTAKES"
    shutil.copytree(ROOT / "solutions", folder, ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / f"solution_{step:02d}.py"
    header = f"\n\n# Planted mistake: {name}\nfrom {module} import *  # noqa: E402,F403\n\n"
    path.write_text(path.read_text() + header + source.replace(line, wrong))
    return Code.solutions(folder)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every checker on solutions/ and on the untouched steps/, and each mistake's checker on its
    planted copy: one run, one compile."""
    solutions, steps = Code.solutions(), Code.steps()
    planted = {name: plant(tmp_path_factory.mktemp(name) / "solutions", name) for name in MISTAKES}
    jobs = [(solutions, s) for s in STEPS] + [(steps, s) for s in STEPS]
    jobs += [(planted[name], MISTAKES[name][0]) for name in MISTAKES]
    out = run(jobs)
    keyed = {}
    for (code, step), result in zip(jobs, out):
        label = "solutions" if code is solutions else "steps" if code is steps else \
            next(n for n, c in planted.items() if c is code)
        keyed[label, step] = result
    return keyed


@pytest.mark.parametrize("step", STEPS)
def test_checker_passes_on_the_solution(results, step):
    result = results["solutions", step]
    assert result.ok, str(result)
    assert result.passed, "a checker that passes must say what it checked"


@pytest.mark.parametrize("step", STEPS)
def test_checker_fails_on_the_untouched_step_with_its_hint(results, step):
    result = results["steps", step]
    assert not result.ok
    failure = result.failure
    assert failure.todo.startswith(f"{step}.") and f"steps/step_{step:02d}.py" in failure.todo, str(result)
    assert failure.expected and failure.got and failure.hint, str(result)


@pytest.mark.parametrize("name", MISTAKES)
def test_planted_mistake_is_named_by_its_checker(results, name):
    step, *_, words = MISTAKES[name]
    result = results[name, step]
    assert not result.ok, f"the checker for step {step} passed code with the mistake {name}"
    assert words in str(result.failure), str(result)
    assert result.failure.hint, str(result)


def test_mistakes_give_other_numbers_than_the_reference():
    """The variants the checkers compare against, written out by hand with no mistake in them,
    are transformers' own results; so a match with a mistaken variant means that mistake."""
    from checks import s04_attention, s06_block, s07_model
    from checks.report import close

    assert close(s04_attention.attention(by_hand=True), s04_attention.attention())
    assert close(s06_block.block_output("pre-LN by hand"), s06_block.block_output())
    assert close(s07_model.hidden(by_hand=True), s07_model.hidden())
    for wrong, _ in s04_attention.forward_mistakes().values():
        assert not close(wrong, s04_attention.attention())


def _todos(step: int) -> list[str]:
    return re.findall(r"# TODO (\d+\.\d+)", (ROOT / "steps" / f"step_{step:02d}.py").read_text())


@pytest.mark.parametrize("step", STEPS)
def test_todos_run_in_reading_order_and_the_checker_cites_each(step):
    """A step's TODOs are N.1, N.2, ... down its file, each number once; its checker's messages
    cite exactly those (and, for a mistake made earlier, TODOs of earlier steps)."""
    todos = _todos(step)
    assert todos == [f"{step}.{i}" for i in range(1, len(todos) + 1)]
    cited = set(re.findall(r'"(\d+\.\d+)"', inspect.getsource(checker(step))))
    assert {t for t in cited if t.startswith(f"{step}.")} == set(todos)
    assert all(t in _todos(int(t.split(".")[0])) for t in cited if int(t.split(".")[0]) < step)


def _check(*args, solutions=False):
    env = {**os.environ, "SOLUTIONS": "1" if solutions else ""}
    return subprocess.run([sys.executable, "-m", "checks", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_check_all_on_the_untouched_steps_fails_every_step_and_names_the_next():
    done = _check("all")
    assert done.returncode == 1, done.stdout + done.stderr
    for step in STEPS:
        assert f"✗ step {step:02d}" in done.stdout and f"TODO:       {step}." in done.stdout
    assert "0 of 11 steps pass; next: step 01 (pixi run s01, or make s01)" in done.stdout


def test_solutions_env_checks_solutions_and_exits_0():
    done = _check("01", solutions=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ step 01" in done.stdout and "solutions/solution_01.py" in done.stdout
    assert _check("01").returncode == 1


def test_unknown_step_is_refused():
    done = _check("12")
    assert done.returncode != 0 and "no step 12" in done.stderr


@pytest.mark.parametrize("step", STEPS)
def test_running_a_solution_prints_the_package_code(step, monkeypatch, capsys):
    import runpy

    monkeypatch.syspath_prepend(str(ROOT / "solutions"))
    monkeypatch.setattr(sys, "argv", [f"solution_{step:02d}.py"])
    runpy.run_path(str(ROOT / "solutions" / f"solution_{step:02d}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("# max_gpt2/") and "def " in out


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory):
    from max_gpt2.reference import save_checkpoint
    from checks.common import reference

    return save_checkpoint(reference(), tmp_path_factory.mktemp("hub") / "gpt2-random", layout="hub")


def test_finished_program_answers_a_prompt(hub_checkpoint):
    """solutions/solution_11.py chat, driven like a person at the keyboard, gives the greedy
    continuation transformers gives."""
    pexpect = pytest.importorskip("pexpect")
    from max_gpt2.reference import gpt2_tokenizer_files, reference_greedy
    from max_gpt2.tokenizer import GPT2Tokenizer
    from checks.common import reference

    tokenizer = GPT2Tokenizer.from_files(*gpt2_tokenizer_files())
    prompt = "Once upon a time"
    want = tokenizer.decode(reference_greedy(reference(), tokenizer.encode(prompt), 5))
    child = pexpect.spawn(sys.executable, ["solutions/solution_11.py", "chat", str(hub_checkpoint), "--temperature",
                                           "0", "--max-new-tokens", "5"], cwd=str(ROOT), env=dict(os.environ),
                          encoding="utf-8", timeout=600)
    child.expect_exact("> ")
    child.sendline(prompt)
    child.expect_exact("> ")
    assert want.replace("\n", "\r\n").strip() in child.before
    child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_my_gpt2_runs_the_learners_step_11(hub_checkpoint):
    """`pixi run my-gpt2` runs steps/step_11.py; untouched, it stops at the first TODO."""
    done = subprocess.run([sys.executable, "steps/step_11.py", str(hub_checkpoint)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))  # see tests/test_cli.py: always env=
    assert done.returncode != 0 and "TODO 11.1" in done.stderr


def test_tolerance_tells_tanh_gelu_from_exact_gelu():
    from checks import s02_mlp
    from checks.report import close

    exact = s02_mlp.mistakes()["exact (erf) GELU instead of GPT-2's tanh approximation (gelu_new)"]
    assert not close(exact, s02_mlp.reference())
    assert np.isfinite(exact).all()
