"""Capturing what a run logs and prints into its own execution's log.

While a run goes on, its thread (on a node) or its task (on a Celery worker) is marked
with the run's ``RunOutput`` in a context variable. A logging handler on the root
logger and proxies in place of ``sys.stdout``/``sys.stderr`` send whatever is logged or
printed *in that context* to that RunOutput; everything else (other threads, other runs,
the engine's own work) goes where it always went. Threads do not inherit a context, so
output can never land in the wrong execution.

The engine writes the captured lines in batches (jobs.recorder) while the run goes on.
Each execution keeps at most SCHEDULER_LOG_LIMIT bytes of output; past that one marker
line says the rest was dropped. Secret values a run resolved are masked before anything
is kept.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from contextvars import ContextVar

MASK = "••••"
STDOUT, STDERR = "STDOUT", "STDERR"


class RunOutput:
    """One run's captured lines, waiting to be written: (seq, monotonic time, level, text)."""

    def __init__(self, execution_id: int, limit: int, secrets: list[str] = ()):
        self.execution_id = execution_id
        self.limit = limit
        # Longest first, so that a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.lock = threading.Lock()
        self.lines: list[tuple[int, float, str, str]] = []
        self.next_seq = 0
        self.kept = 0
        self.truncated = False
        self.partial: dict[str, str] = {}

    def add(self, level: str, text: str) -> None:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        # What PostgreSQL text cannot hold: U+0000, and lone surrogates.
        text = text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")
        size = len(text.encode("utf-8", "replace"))
        with self.lock:
            if self.truncated:
                return
            if self.kept + size > self.limit:
                self.truncated = True
                text, level = (
                    f"[log truncated: this run's output passed SCHEDULER_LOG_LIMIT "
                    f"({self.limit} bytes); the rest was not kept]",
                    "WARNING",
                )
            self.kept += size
            self.lines.append((self.next_seq, time.monotonic(), level, text))
            self.next_seq += 1

    def write(self, level: str, text: str) -> None:
        """Print output: whole lines are kept; a line without its newline waits for it."""
        with self.lock:
            text = self.partial.pop(level, "") + text
        *complete, rest = text.split("\n")
        for line in complete:
            self.add(level, line)
        if rest:
            with self.lock:
                self.partial[level] = rest

    def close(self) -> None:
        """The run ended: keep what was printed without a final newline."""
        with self.lock:
            partial, self.partial = self.partial, {}
        for level, text in partial.items():
            self.add(level, text)

    def take(self) -> list[tuple[int, float, str, str]]:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines


_output: ContextVar[RunOutput | None] = ContextVar("run_output", default=None)


def capturing(output: RunOutput):
    """Send this context's logging and printing to ``output``; returns a token for ``done``."""
    return _output.set(output)


def done(token) -> None:
    _output.reset(token)


class _RunLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        output = _output.get()
        if output is None:
            return
        try:
            output.add(record.levelname, self.format(record))
        except Exception:
            self.handleError(record)


class _RoutingStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: a run's writes go to its RunOutput."""

    def __init__(self, original, level: str):
        self.original = original
        self.level = level

    def write(self, text: str) -> int:
        output = _output.get()
        if output is None:
            return self.original.write(text)
        output.write(self.level, text)
        return len(text)

    def flush(self) -> None:
        if _output.get() is None:
            self.original.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name):
        # fileno, encoding, isatty, buffer...: whatever the original stream has.
        return getattr(self.original, name)


_installed = threading.Lock()


def install() -> None:
    """Route runs' logging and printing (idempotent; once per process is enough)."""
    with _installed:
        root = logging.getLogger()
        if not any(isinstance(h, _RunLogHandler) for h in root.handlers):
            handler = _RunLogHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            root.addHandler(handler)
        if not isinstance(sys.stdout, _RoutingStream):
            sys.stdout = _RoutingStream(sys.stdout, STDOUT)
        if not isinstance(sys.stderr, _RoutingStream):
            sys.stderr = _RoutingStream(sys.stderr, STDERR)
