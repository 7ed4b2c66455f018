"""pixi.toml is the users' interface; the Makefile is its pip twin. Neither may lose a task."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pixi_tasks() -> dict[str, str]:
    return tomllib.loads((ROOT / "pixi.toml").read_text())["tasks"]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split())
    steps = set(re.search(r"^STEPS := (.*)$", text, re.M).group(1).split())
    return (phony - {"$(STEPS)", "setup"}) | steps


def test_every_pixi_task_has_a_make_target_and_back():
    assert set(pixi_tasks()) == make_targets()


def test_every_make_target_has_a_recipe():
    text = (ROOT / "Makefile").read_text()
    for target in make_targets() - set(re.search(r"^STEPS := (.*)$", text, re.M).group(1).split()):
        assert re.search(rf"^{re.escape(target)}:", text, re.M), target


def test_step_tasks_run_the_same_checker():
    for name, cmd in pixi_tasks().items():
        if re.fullmatch(r"s\d\d", name):
            assert cmd == f"python -m checks {name[1:]}"
    assert "$(PY) -m checks $(@:s%=%)" in (ROOT / "Makefile").read_text()


def test_check_all_and_my_gpt2_run_the_same_python_in_both():
    text = (ROOT / "Makefile").read_text()
    for name in ("check-all", "my-gpt2"):
        command = pixi_tasks()[name].removeprefix("python ")
        assert re.search(rf"^{name}:.*\n\t\$\(PY\) {re.escape(command)}$", text, re.M), name


def test_both_test_tasks_end_with_the_serving_tests():
    """The serving tests run in .venv-serve (MAX Serve pins transformers), from either tool."""
    assert pixi_tasks()["test"].endswith("&& make test-serve")
    assert re.search(r"^test:.*\n\t\$\(PY\) -m pytest\n\t\$\(MAKE\) test-serve$", (ROOT / "Makefile").read_text(), re.M)


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)


def test_the_oldest_python_is_promised_the_same_everywhere():
    """README, pyproject and pixi name one oldest Python, and it can run this suite (tomllib)."""
    readme = re.search(r"Python (3\.\d+) or newer", (ROOT / "README.md").read_text()).group(1)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())["dependencies"]["python"]
    assert pyproject == f">={readme}" and pixi.split(",")[0] == f">={readme}", (readme, pyproject, pixi)
    assert tuple(map(int, readme.split("."))) >= (3, 11), "tests/test_tasks.py imports tomllib, new in 3.11"
