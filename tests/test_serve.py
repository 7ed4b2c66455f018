"""`max-gpt2 serve` through the official `openai` client, against a server this module starts on
127.0.0.1 at free ports: completions, streaming, stop strings, seeded sampling, greedy equal to
transformers alone and in a batch with other requests, and faults the server must survive.

MAX Serve needs the `serve` extra, which pins transformers, so it lives in its own environment
(see the README); where it is missing these tests are skipped. One server (the ODD config,
compiled once by MAX and cached) serves every test.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("pydantic_settings", reason="MAX Serve is not installed: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="MAX Serve is not installed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install -e '.[serve]'")

from max_gpt2.reference import ODD, make_checkpoint, reference_greedy  # noqa: E402

MODEL = "odd-gpt2"  # what the test server calls its model
MAX_REQUEST_BYTES = 1 << 20
START_TIMEOUT = 1200  # a first start compiles the model and the sampler: minutes on a busy 2-core CPU
PROMPTS = ["Hello, my dog is", "The", "Once upon a time there was a little robot who lived",
           "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24", "Paris is"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`max-gpt2 serve` in a subprocess, its stderr collected for the failure messages."""

    def __init__(self, model_path, max_batch_size: int = 4, options: tuple[str, ...] = ()) -> None:
        self.port, metrics = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        command = [sys.executable, "-m", "max_gpt2.cli", "serve", "--model", str(model_path), "--port", str(self.port),
                   "--metrics-port", str(metrics), "--max-batch-size", str(max_batch_size), *options,
                   "--", "--served-model-name", MODEL]
        self.log: list[str] = []
        # A small body limit (MAX Serve's default is 100 MiB) so the oversize-body test sends little.
        env = dict(os.environ, MAX_SERVE_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES))
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            if "serving GPT-2 at" in line:
                self.ready.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready.wait(1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("max-gpt2 serve did not start:\n" + "".join(self.log[-40:]))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the launcher stops MAX Serve's process group
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The ODD model in the Hub's layout: its config.json names no architecture, so the
    launcher converts it, as it would any checkpoint MAX Serve cannot read as it is."""
    path = tmp_path_factory.mktemp("serve-odd")
    reference = make_checkpoint(path, ODD, "hub", seed=0)
    return path, reference


@pytest.fixture(scope="module")
def server(checkpoint):
    # Room for more requests in one decode batch than max_gpt2.decode.FEW_ROWS, so that the
    # load test also runs the projections of a large batch (MAX's matmul, in our kernels).
    s = Server(checkpoint[0], max_batch_size=32)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint[0]))


def greedy(client, prompt: str, max_tokens: int) -> str:
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return response.choices[0].text


def reference_text(checkpoint, tokenizer, prompt: str, max_tokens: int) -> str:
    """transformers' greedy continuation, cut where the server stops: at GPT-2's end of text."""
    ids = reference_greedy(checkpoint[1], tokenizer(prompt)["input_ids"], max_tokens)
    if ODD.eos_token_id in ids:
        ids = ids[: ids.index(ODD.eos_token_id)]
    return tokenizer.decode(ids)


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def status_of_upload(port: int, path: str, body: bytes) -> int:
    """The status a server answers a POST of `body` with, also when it answers before the body
    is all sent and closes (as MAX Serve does past its size limit): urllib then fails on the
    broken pipe, but the answer is already in the socket."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: the status line is already on its way
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # the close that follows the answer
    return int(answer.split(b" ", 2)[1])


# --- what users get ---------------------------------------------------------------------------


def test_greedy_completion_equals_transformers(client, checkpoint, tokenizer):
    response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0)
    assert response.choices[0].text == reference_text(checkpoint, tokenizer, PROMPTS[0], 16)
    assert response.usage.prompt_tokens == len(tokenizer(PROMPTS[0])["input_ids"])


def test_streamed_pieces_join_to_the_whole_completion(client):
    whole = greedy(client, PROMPTS[2], 20)
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model=MODEL, prompt=PROMPTS[2], max_tokens=20, temperature=0, stream=True) if chunk.choices]
    assert len(pieces) > 1, "the completion came in one piece: not streamed"
    assert "".join(pieces) == whole


def test_a_stop_string_ends_the_completion_but_max_serve_leaves_it_in_the_text(client):
    """OpenAI's API returns the text before the stop string; MAX Serve 26.7 stops generating once
    the string has appeared, but returns it, sometimes with one token more (README: Serve).
    Cutting at the string's first occurrence gives what OpenAI's API would."""
    whole = greedy(client, PROMPTS[0], 24)
    stop = whole[len(whole) // 2:][:4]
    for stream in (False, True):
        response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                             stop=[stop], stream=stream)
        chunks = list(response) if stream else [response]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert stop in text and len(text) < len(whole)  # stopped, with the string left in
        assert text[: text.index(stop)] == whole[: whole.index(stop)]


def test_a_list_of_prompts_gets_one_choice_each_in_order(client):
    response = client.completions.create(model=MODEL, prompt=PROMPTS[:3], max_tokens=6, temperature=0)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.text for c in response.choices] == [greedy(client, p, 6) for p in PROMPTS[:3]]


def test_max_serve_ignores_logprobs_echo_and_n(client):
    """What MAX Serve 26.7 does not do, silently (README: Serve): no log probabilities, no echo
    of the prompt, one choice whatever `n` asks."""
    plain = greedy(client, PROMPTS[0], 5)
    response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=5, temperature=0, logprobs=2,
                                         echo=True, n=2)
    assert [c.text for c in response.choices] == [plain]
    assert not response.choices[0].logprobs.token_logprobs


def test_a_seed_reproduces_a_sample_and_another_seed_changes_it(client):
    def sample(seed):
        return client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=16, temperature=1.0, top_p=0.95,
                                         seed=seed).choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10)), "three other seeds all gave the same sample"


def test_each_request_in_a_concurrent_batch_is_greedy_equal_to_itself_alone(client, checkpoint, tokenizer):
    lengths = [6, 30, 11, 3, 19]
    alone = [greedy(client, p, n) for p, n in zip(PROMPTS, lengths)]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(greedy, [client] * len(PROMPTS), PROMPTS, lengths))
    assert together == alone
    assert alone == [reference_text(checkpoint, tokenizer, p, n) for p, n in zip(PROMPTS, lengths)]


def test_models_health_and_metrics_answer(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
        assert response.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        assert "maxserve_" in response.read().decode()


def test_32_streaming_clients_each_get_their_single_request_greedy_result(client):
    """A load test, bounded: 32 clients at once, two streamed requests each, prompts and
    lengths varied; every request completes and equals the same request sent alone."""
    work = [(PROMPTS[i % len(PROMPTS)], 4 + (7 * i) % 23) for i in range(8)]
    alone = {w: greedy(client, *w) for w in work}

    def streamed(prompt, max_tokens):
        chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           stream=True)
        return "".join(c.choices[0].text for c in chunks if c.choices)

    def one_client(i):
        return [(w, streamed(*w)) for w in (work[i % 8], work[(i * 3 + 1) % 8])]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = [r for rs in pool.map(one_client, range(32), timeout=600) for r in rs]
    assert len(results) == 64
    assert [text for _, text in results] == [alone[w] for w, _ in results]


def test_memory_after_1000_requests_is_within_50_mb_of_memory_after_100(server, client):
    """A leak per request (a cache page, a context, a tokenizer buffer not given back) shows
    as memory that grows with the request count; the first 100 requests warm everything up."""
    import psutil  # MAX itself requires it: where MAX Serve runs, it is there

    def rss() -> int:
        launcher = psutil.Process(server.process.pid)
        return sum(p.memory_info().rss for p in [launcher, *launcher.children(recursive=True)])

    def requests(count: int) -> None:
        work = [(PROMPTS[i % len(PROMPTS)], 1 + i % 8) for i in range(count)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert all(pool.map(lambda w: greedy(client, *w) is not None, work, timeout=900))

    requests(100)
    after_100 = rss()
    requests(900)
    assert rss() - after_100 < 50 * 2**20, f"{(rss() - after_100) / 2**20:.1f} MB more after 900 more requests"


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"model": "odd-gpt2", "prompt": "Hi",',  # malformed JSON
    b'{"model": "odd-gpt2", "prompt": "Hi", "max_tokens": "many"}',  # a wrong type
    b'{"model": "odd-gpt2", "prompt": "Hi", "temperature": -1}',  # out of range
    b'{"model": "no-such-model", "prompt": "Hi"}',
], ids=["malformed-json", "wrong-type", "negative-temperature", "unknown-model"])
def test_a_bad_request_is_a_4xx_and_the_server_keeps_serving(server, client, body):
    status, _ = post(f"{server.url}/v1/completions", body)
    assert 400 <= status < 500
    assert server.alive()
    assert greedy(client, PROMPTS[4], 3)


def test_a_prompt_over_the_context_is_a_4xx_naming_the_limit(server, client):
    body = json.dumps({"model": MODEL, "prompt": "word " * (ODD.n_positions + 10), "max_tokens": 4}).encode()
    status, text = post(f"{server.url}/v1/completions", body)
    assert status == 400
    assert str(ODD.n_positions) in text
    assert greedy(client, PROMPTS[4], 3)


def test_a_huge_max_tokens_stops_at_the_context(client, tokenizer):
    response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=10**6, temperature=0)
    assert response.usage.prompt_tokens + response.usage.completion_tokens <= ODD.n_positions


def test_chat_without_a_chat_template_is_refused_with_a_4xx(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert greedy(client, PROMPTS[4], 3)


def test_clients_dropping_mid_stream_leave_the_server_serving_correctly(server, client):
    for _ in range(4):
        stream = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=100, temperature=0, stream=True)
        next(iter(stream))
        stream.close()  # the client goes away with most of its tokens still to come
    alone = [greedy(client, p, 8) for p in PROMPTS[:4]]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(greedy, [client] * 4, PROMPTS[:4], [8] * 4)) == alone
    assert server.alive()


def test_an_oversize_body_is_refused_and_the_server_keeps_serving(server, client):
    body = json.dumps({"model": MODEL, "prompt": "x" * (2 * MAX_REQUEST_BYTES), "max_tokens": 1}).encode()
    assert status_of_upload(server.port, "/v1/completions", body) == 413
    assert greedy(client, PROMPTS[4], 3)


def test_a_checkpoint_that_does_not_fit_is_one_line_before_max_serve_starts(checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint[0], bad)
    config = json.loads((bad / "config.json").read_text())
    # A folder MAX Serve would take as it is (it names the architecture), with one layer too many.
    (bad / "config.json").write_text(json.dumps({**config, "n_layer": ODD.n_layer + 1,
                                                 "architectures": ["GPT2LMHeadModel"]}))
    result = subprocess.run([sys.executable, "-m", "max_gpt2.cli", "serve", "--model", str(bad), "--port",
                             str(free_port())], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("max-gpt2: error: ")
    assert "missing transformer.h.3." in result.stderr and "MAX Serve" not in result.stderr


# --- prefix caching ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_context(tmp_path_factory):
    """ODD with room for a prompt past one cache page (MAX's pages hold 128 tokens), so that a
    repeated prompt can take its first page from the prefix cache."""
    import dataclasses

    config = dataclasses.replace(ODD, n_positions=256)
    path = tmp_path_factory.mktemp("serve-long")
    reference = make_checkpoint(path, config, "hub", seed=0)
    s = Server(path, max_batch_size=2)
    try:
        s.wait_ready()
        yield s, path, reference
    finally:
        s.stop()


def test_a_prefix_cache_hit_continues_exactly_as_without_it(long_context):
    """GPT-2's positions are learned: the tokens after a cached prefix must be embedded at their
    true positions, which come from the cache's lengths."""
    from transformers import AutoTokenizer

    server, path, reference = long_context
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    prompt = " ".join(f"item {i}," for i in range(60))  # about 180 tokens: one full page and more
    ids = tokenizer(prompt)["input_ids"]
    assert 128 < len(ids) < 230, len(ids)
    expected = reference_greedy(reference, ids, 12)
    if ODD.eos_token_id in expected:
        expected = expected[: expected.index(ODD.eos_token_id)]
    texts = [greedy(client, prompt, 12) for _ in range(2)]
    assert texts == [tokenizer.decode(expected)] * 2

    def hits() -> float:  # MAX Serve's Prometheus counter, updated a moment after it answers
        with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
            text = response.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(r"^maxserve_cache_hits_tokens_total\S* (\S+)$", text, re.M))

    deadline = time.monotonic() + 30
    while hits() < 128 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hits() >= 128, "the second request did not take its first page (128 tokens) from the prefix cache"
