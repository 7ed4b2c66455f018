"""One engine in a process of its own: `Worker`, the bench's end, and `serve`, the process's.

The protocol: a task is one line of JSON on the worker's stdin; its reply one line of JSON on a
pipe of its own (MAX and torch may print to stdout, which goes to a log), with the process's
peak resident memory added.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


class Worker:
    """A worker process (`python -m max_gpt2.bench.worker`) for one engine, or for the memory
    read (engine None), kept alive: `call` runs one task and returns its reply.

    Between its tasks the process is stopped (SIGSTOP), so that it takes no CPU from the engine
    being measured: once MAX has run a graph, a thread of its runtime keeps waking, and an idle
    process would take a share of a core from whichever engine runs (docs/benchmarks.md,
    "Design decisions").

    A task that overruns its time (`timeout` for any one task, or what is left of `budget`, the
    engine's whole allowance) kills the process and its session (the engine and any compile
    workers); the engine is then done, and `status` says why. `peak_rss_mb` is the process's own
    high-water mark (VmHWM): wait4's ru_maxrss would start from the parent's RSS, inherited at exec.
    The process dies with the bench, however the bench ends.
    """

    def __init__(self, engine: str | None, model: str, scratch: Path, *, env=None, budget: float = float("inf"),
                 timeout: float, tag: str = "") -> None:
        self.engine, self.budget, self.total, self.timeout = engine, budget, budget, timeout
        self.status, self.peak_rss_mb = "ok", 0.0
        self.log = scratch / f"{engine or 'bandwidth'}{tag}.log"
        read, write = os.pipe()
        # env= always: importing MAX puts PYTHONEXECUTABLE in the real environment, and a child that
        # inherits it would start outside this virtual environment.
        child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
        child_env.pop("PYTHONEXECUTABLE", None)
        job = {"engine": engine, "model": model, "scratch": str(scratch), "reply_fd": write, "parent": os.getpid()}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "max_gpt2.bench.worker", json.dumps(job)],
                                         stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                         pass_fds=(write,), start_new_session=True)
        os.close(write)
        self.replies, self.pending = read, b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, task: dict) -> dict | None:
        """Runs one task; its reply, or None if the process is done (see status)."""
        if self.status != "ok":
            return None
        limit = min(self.timeout, self.budget)
        self._signal(signal.SIGCONT)
        start = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has died; the read below says how
        line = self._read_line(start + limit)
        self.budget -= time.monotonic() - start
        if line is None:
            if time.monotonic() < start + limit:  # it ended by itself
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                tail = [s for s in self.log.read_text(errors="replace").splitlines() if s.strip()][-1:]
                self.status = f"{task['task']}: failed ({tail[0][:160] if tail else f'exit {self.proc.returncode}'})"
            else:
                self.peak_rss_mb = max(self.peak_rss_mb, vm_hwm_mb(self.proc.pid))
                self.kill()
                which = (f"the {self.timeout:.0f} s limit for one task" if limit == self.timeout
                         else f"its {self.total:.0f} s time limit")
                self.status = f"{task['task']}: stopped at {which}"
            return None
        self._signal(signal.SIGSTOP)  # idle until its next task (see the class's docstring)
        reply = json.loads(line)
        self.peak_rss_mb = max(self.peak_rss_mb, reply.pop("peak_rss_mb"))
        return reply

    def close(self) -> None:
        """Lets the process finish (its stdin closes) and waits for it; kills it if it hangs."""
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self.proc.stdin.close()  # no more tasks: it returns
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        os.close(self.replies)

    def kill(self) -> None:
        """Ends the process and its session at once."""
        self._signal(signal.SIGKILL)
        self.proc.wait()

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([self.replies], [], [], min(left, 1.0))[0]:
                chunk = os.read(self.replies, 1 << 20)
                if not chunk:  # closed: the process has ended
                    return None
                self.pending += chunk
            elif self.proc.poll() is not None:
                return None
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # its own session: the engine and any compile workers
        except ProcessLookupError:
            pass


def vm_hwm_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory, MB (Linux); 0 where /proc is not there to say."""
    return _status_mb(pid, "VmHWM:")


def vm_rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory now, MB (Linux); 0 where /proc is not there to say."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int | str, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def serve(job: dict) -> int:
    """The worker process: takes tasks from stdin, one JSON line each, until it closes; answers
    each on the reply pipe."""
    _die_with_parent(job["parent"])
    os.set_inheritable(job["reply_fd"], False)  # not to compile workers: the pipe closes when this ends
    reply = os.fdopen(job["reply_fd"], "w")
    engine = None
    for line in sys.stdin:
        task = json.loads(line)
        if task["task"] == "load":
            from max_gpt2.bench.engines import engine_class

            engine = engine_class(job["engine"])(job["model"], Path(job["scratch"]))
            loaded = vm_rss_mb()  # the weights in, nothing compiled yet (a peer's includes its conversion)
            values = {"compile_s": engine.compile(), "rss_after_load_mb": loaded}
        elif task["task"] == "bandwidth":
            from max_gpt2.machine import memory_bandwidth

            values = {"bandwidth_gb_s": memory_bandwidth()}
        else:
            values = engine.run(task)
        reply.write(json.dumps({**values, "peak_rss_mb": vm_hwm_mb()}) + "\n")
        reply.flush()
    return 0


def _die_with_parent(parent: int) -> None:
    """A worker spends most of its life stopped, in a session of its own: if the bench dies
    without closing it (SIGTERM, SIGKILL, out of memory), nothing else would end it. On Linux
    the kernel kills it with its parent."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent was gone before the line above
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1])))
