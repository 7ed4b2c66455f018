"""Progress messages for long waits, shared by every command, and a bar for work of known length.

The library reports progress through a plain callback, `progress(message)`, so `print` works.
A message that starts a wait (a compile, a download) is a `Waiting`: still a `str`, so a plain
callback prints it, but `Status` shows it with a ticking clock until the next message, so a
first run never looks frozen.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time


class Waiting(str):
    """A progress message that starts a wait of unknown length; the next message ends it."""


class Status:
    """Progress lines on stderr (`· message`); a `Waiting` ticks a clock on a terminal."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._stop: threading.Event | None = None
        self._ticker: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        self._end_ticker()
        if isinstance(message, Waiting) and self.stream.isatty():
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, args=(str(message), self._stop), daemon=True)
            self._ticker.start()
        else:
            print(f"· {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """Ends a ticking clock, if one runs."""
        self._end_ticker()

    def _tick(self, message: str, stop: threading.Event) -> None:
        start = time.monotonic()
        width = shutil.get_terminal_size().columns - 12  # room for the clock; a wrapped line would not redraw
        if len(message) > width:
            message = message[: width - 1] + "…"
        while True:
            self.stream.write(f"\r\x1b[2K· {message} {time.monotonic() - start:.0f}s")
            self.stream.flush()
            if stop.wait(1.0):
                break
        self.stream.write("\n")
        self.stream.flush()

    def _end_ticker(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._ticker.join()
            self._stop = self._ticker = None


class Bar:
    """Progress over a known number of steps on stderr: rich's bar on a terminal; elsewhere (a
    log, a pipe) a plain line at every tenth, so the log is not flooded."""

    def __init__(self, description: str, stream=None) -> None:
        self.description = description
        self.stream = stream or sys.stderr
        self._rich = None
        self._task = None
        self._shown = -1  # the last tenth printed, off a terminal

    def __enter__(self) -> Bar:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                  console=Console(file=self.stream))
            self._rich.start()
        return self

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if self._rich is not None:
            if self._task is None:
                self._task = self._rich.add_task(self.description, total=total, note=note)
            self._rich.update(self._task, completed=done, total=total, note=note)
        elif (tenth := 10 * done // total) > self._shown:
            self._shown = tenth
            print(f"· {self.description} {done}/{total}" + (f": {note}" if note else ""), file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
