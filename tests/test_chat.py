"""The prompt loop, driven as a person would: through a real pseudo-terminal, and through a pipe."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from max_gpt2.chat import Session
from max_gpt2.errors import GPT2Error
from max_gpt2.sampling import Sampling

CLI = str(Path(sys.executable).with_name("max-gpt2"))
PROMPT = "› "
STATS = re.compile(r"\d+ tokens · [\d.]+ tokens/s · first token \d+ ms")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"}


def spawn(hub, *options):
    child = pexpect.spawn(CLI, ["chat", "--model", str(hub.path), "--max-new-tokens", "16", *options],
                          env=ENV, encoding="utf-8", timeout=300, dimensions=(40, 200))
    child.expect_exact(PROMPT)
    return child


@pytest.fixture
def repl(hub):
    child = spawn(hub)
    yield child
    child.close(force=True)


def ask(child, line):
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def answer(child, line):
    """The text of an answer, without its figures."""
    return STATS.split(ask(child, line))[0]


def test_answers_stream_with_a_stats_line_and_settings_commands_work(repl):
    out = ask(repl, "The meaning of life is")
    assert "The meaning of life is" in out and STATS.search(out), out
    assert "temperature 0.7" in ask(repl, "/temp 0.7")
    assert "top-k 40" in ask(repl, "/topk 40")
    assert "top-p 0.9" in ask(repl, "/topp 0.9")
    assert "seed 1" in ask(repl, "/seed 1")
    assert "up to 5 new tokens" in ask(repl, "/max 5")
    assert "greedy" in ask(repl, "/greedy")
    assert "/temp T" in ask(repl, "/help")
    first, second = answer(repl, "Hello there"), answer(repl, "Hello there")
    assert first == second and len(first) > len("Hello there") + 5  # greedy is deterministic
    repl.sendline("quit")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("/topk abc", "error: /topk takes a whole number, not 'abc'"),
        ("/topp 2", "error: top_p must be in (0, 1]"),
        ("/temp -1", "error: temperature must be >= 0"),
        ("/max 0", "error: max_new_tokens must be a whole number >= 1, got 0"),
        ("/seed -1", "error: seed must be a whole number >= 0, got -1"),  # was taken, then ended the loop
        ("/temp inf", "error: temperature must be >= 0 and finite (0 is greedy), got inf"),
        ("/bogus", "error: unknown command /bogus"),
        ("word " * 300, "tokens; GPT-2 reads at most 128: shorten it"),
    ],
)
def test_bad_input_is_explained_and_the_session_goes_on(repl, line, message):
    assert message in ask(repl, line)
    assert STATS.search(ask(repl, "Still here?"))


def test_ctrl_c_stops_a_generation_and_the_session_goes_on(hub):
    repl = spawn(hub, "--sliding-window")
    ask(repl, "/max 100000")  # with --sliding-window this runs until stopped
    repl.sendline("Once upon a time")
    repl.expect(r"Once upon a time\S*\s*\S+\s*\S+")  # text streams in before the answer ends
    repl.sendintr()
    repl.expect_exact("[stopped]")
    repl.expect_exact(PROMPT)
    ask(repl, "/max 5")
    assert STATS.search(ask(repl, "Still here?"))
    repl.close(force=True)


def test_a_full_context_is_announced(hub):
    child = spawn(hub, "--max-new-tokens", "500")
    full = "[the context is full (128 tokens); start with --sliding-window to keep going]"
    assert full in ask(child, "Hello")
    assert "up to 99999999999 new tokens" in ask(child, "/max 99999999999")
    assert full in ask(child, "Hello")
    child.close(force=True)


def test_empty_line_asks_again_and_ctrl_d_leaves(repl):
    repl.sendline("")
    repl.expect_exact(PROMPT)
    repl.sendeof()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_ctrl_c_at_the_prompt_leaves(repl):
    repl.sendintr()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_piped_stdin_prints_each_result_and_exits_0(hub):
    lines = b"The meaning of life is\n\n/greedy\nThe meaning of life is\n\xff\xfe not utf-8\nHi\n"
    result = subprocess.run([CLI, "--model", str(hub.path), "--max-new-tokens", "12", "--seed", "3"],
                            input=lines, capture_output=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    sampled = hub.model.generate("The meaning of life is", 12, do_sample=True, temperature=0.8, top_k=50,
                                 top_p=0.95, seed=3)  # the chat's default settings
    greedy = [hub.model.generate(p, 12) for p in ("The meaning of life is", "Hi")]
    # One continuation per prompt; the blank line, the command and the bad line print none.
    assert result.stdout.decode() == f"{sampled}\n{greedy[0]}\n{greedy[1]}\n"
    assert "error: that line is not UTF-8 text" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


# Every setting at its edges, through Session (what the prompt loop calls for a /command).
@pytest.mark.parametrize(
    "line, message",
    [
        ("/seed -1", "seed must be a whole number >= 0, got -1"),
        ("/seed 2**70", "/seed takes a whole number, not '2**70'"),
        ("/seed 1.5", "/seed takes a whole number, not '1.5'"),
        ("/temp nan", "temperature must be >= 0 and finite (0 is greedy), got nan"),
        ("/temp inf", "temperature must be >= 0 and finite (0 is greedy), got inf"),
        ("/temp 1e999", "temperature must be >= 0 and finite (0 is greedy), got inf"),
        ("/temp -0.1", "temperature must be >= 0 and finite (0 is greedy), got -0.1"),
        ("/temp", "/temp needs a value, e.g. /temp 0.7"),
        ("/topk 1.5", "/topk takes a whole number, not '1.5'"),
        ("/topk -1", "top_k must be a whole number >= 0 (0 turns it off), got -1"),
        ("/topp 0", "top_p must be in (0, 1] (1 turns it off), got 0.0"),
        ("/topp nan", "top_p must be in (0, 1] (1 turns it off), got nan"),
        ("/topp inf", "top_p must be in (0, 1] (1 turns it off), got inf"),
        ("/topp -inf", "top_p must be in (0, 1] (1 turns it off), got -inf"),
        ("/max 0", "max_new_tokens must be a whole number >= 1, got 0"),
        ("/max -3", "max_new_tokens must be a whole number >= 1, got -3"),
        ("/max 1e3", "/max takes a whole number, not '1e3'"),
        ("/max inf", "/max takes a whole number, not 'inf'"),
        ("/", "unknown command /; /help lists them"),
    ],
)
def test_a_bad_setting_is_refused_and_the_settings_stay(line, message):
    session = Session(Sampling(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, seed=3), 100)
    before = session.describe()
    with pytest.raises(GPT2Error) as raised:
        session.command(line)
    assert str(raised.value) == message
    assert session.describe() == before


@pytest.mark.parametrize(
    "line, shown",
    [
        ("/seed 1180591620717411303424", "seed 1180591620717411303424"),  # 2**70
        ("/seed 0", "seed 0"),
        ("/topk 1000000000", "top-k 1000000000"),
        ("/temp 1e-300", "temperature 1e-300"),
        ("/max 99999999999", "up to 99999999999 new tokens"),
    ],
)
def test_a_large_or_tiny_valid_setting_is_taken(line, shown):
    assert shown in Session(Sampling(), 100).command(line)


def test_extreme_valid_settings_sample_real_tokens():
    """A tiny temperature is greedy in effect, not NaN; a huge top_k is no limit; a 2**70 seed seeds.
    No numpy warning either: it would print in the middle of an answer."""
    import warnings

    import numpy as np

    logits = np.array([[300.0, 100.0, 299.0, -50.0]], np.float32)
    for settings in (Sampling(do_sample=True, temperature=1e-310, seed=2**70), Sampling(do_sample=True, top_k=10**9, seed=0)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            token = int(settings.sampler()(logits)[0])
        assert token in (0, 2)


def test_every_graph_is_compiled_before_the_first_prompt(repl):
    """No compile progress inside an answer: the prompt loop compiles prefill and decode at start."""
    out = ask(repl, "The meaning of life is")
    assert STATS.search(out) and "compil" not in out, out
