"""What a running job may know about its own execution, and tell the scheduler.

Inside a run (on a node's thread or a Celery worker), job code can:

- ``current()``: the execution id (a natural idempotency key), job name, fire time,
  attempt and fencing token;
- ``progress(done, total=None, message="")``: report how far it is (the latest value
  wins; it is written at most about once a second, and shown live);
- ``cancelled()`` / ``check_cancelled()``: see whether an operator asked the run to stop
  (``check_cancelled`` raises ``Cancelled``, which ends the run as ``cancelled``);
- ``lock_lost()``: see whether a ``forbid`` job's lock was taken from the run (force
  released, expired or taken over), so it can stop before it overlaps the next run;
- log with ``logging`` or ``print``: every line lands in the execution's own log.

Outside a run these answer harmlessly (None, False, nothing reported), so job code can
be called from a test or a shell as it is.

The fencing token protects downstream systems from a stale runner: a node that was
paused, partitioned or declared dead may still be running a job whose execution has
since been started again elsewhere. Every start of every run draws a new token from one
database sequence, so the current runner's token is larger than any earlier runner's.
A downstream store that keeps the largest token it has accepted and refuses smaller ones
cannot be overwritten by the stale runner::

    ctx = jobs.context.current()
    cursor.execute(
        "UPDATE report SET body = %s, fence = %s WHERE day = %s AND fence < %s",
        [body, ctx.fencing_token, day, ctx.fencing_token],
    )
    if cursor.rowcount == 0:
        raise RuntimeError("a newer run of this report owns it now")
"""

from __future__ import annotations

import math
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

# Longest progress message kept (Execution.progress_message).
PROGRESS_MESSAGE_MAX = 500


class Cancelled(Exception):
    """Raised by ``check_cancelled()`` once the run was asked to stop."""


class Flag:
    """Set once by one thread, checked by others: all the engine needs of a
    threading.Event (nothing waits on these), at a twentieth of its cost to make (a run
    makes two, on the node's claim path)."""

    __slots__ = ("_set",)

    def __init__(self):
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass
class RunSignals:
    """What the engine tells a running job, and what the job reports back.

    Shared between the job's thread and the engine's threads (the node's listener and
    recorder, a worker's heartbeat): flags and a lock, nothing else.
    """

    cancel: Flag = field(default_factory=Flag)
    #: Who asked the run to stop, and why (set with ``cancel``).
    cancel_by: str = ""
    cancel_reason: str = ""
    lock_lost: Flag = field(default_factory=Flag)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The latest progress report: (done, total, message, monotonic time), or None.
    progress: tuple[float, float | None, str, float] | None = None
    #: Whether ``progress`` changed since the engine last took it.
    progress_new: bool = False

    def report_progress(self, done: float, total: float | None, message: str) -> None:
        with self.lock:
            self.progress = (done, total, message, time.monotonic())
            self.progress_new = True

    def take_progress(self) -> tuple[float, float | None, str, float] | None:
        """The latest report if it is new since the last take (for the engine)."""
        with self.lock:
            if not self.progress_new:
                return None
            self.progress_new = False
            return self.progress

    def request_cancel(self, by: str, reason: str) -> None:
        self.cancel_by, self.cancel_reason = by, reason
        self.cancel.set()


@dataclass(frozen=True)
class ExecutionContext:
    execution_id: int
    job_name: str
    scheduled_for: datetime
    attempt: int
    #: Larger for every later start of any run (see the module docstring).
    fencing_token: int | None = None
    #: The job lock's own token while a `forbid` run holds it (None otherwise).
    lock_token: int | None = None
    signals: RunSignals = field(default_factory=RunSignals, compare=False, repr=False)


_current: ContextVar[ExecutionContext | None] = ContextVar("current_execution", default=None)


def current() -> ExecutionContext | None:
    """The execution the calling job code runs as, or None outside a run."""
    return _current.get()


# The name used before current() existed.
current_execution = current


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report progress: ``done`` of ``total`` (or of an unknown total), with a message.

    Cheap to call often: only the latest report is kept, and the engine writes it at most
    about once a second. Raises ValueError for a negative or non-finite number.
    """
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"progress {name} must be a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"progress {name} must be a finite number, not negative")
    context = current()
    if context is not None:
        text = str(message)[:PROGRESS_MESSAGE_MAX]
        context.signals.report_progress(float(done), None if total is None else float(total), text)


def cancelled() -> bool:
    """Whether an operator asked this run to stop."""
    context = current()
    return context is not None and context.signals.cancel.is_set()


def check_cancelled() -> None:
    """Raise Cancelled if an operator asked this run to stop (a point to stop cleanly)."""
    context = current()
    if context is not None and context.signals.cancel.is_set():
        signals = context.signals
        raise Cancelled(f"cancelled by {signals.cancel_by}: {signals.cancel_reason}")


def lock_lost() -> bool:
    """Whether this run's job lock (a `forbid` job's) was taken from it."""
    context = current()
    return context is not None and context.signals.lock_lost.is_set()


def running_as(context: ExecutionContext):
    """Set the current execution; returns a token for ``finished``."""
    return _current.set(context)


def finished(token) -> None:
    _current.reset(token)
