"""What a running job may know about its own execution.

Job code calls ``current()`` for its execution id (a natural idempotency key), fire
time, attempt and fencing token. The executor sets it around each run.

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

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime


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


_current: ContextVar[ExecutionContext | None] = ContextVar("current_execution", default=None)


def current() -> ExecutionContext | None:
    """The execution the calling job code runs as, or None outside a run."""
    return _current.get()


# The name used before current() existed.
current_execution = current


def running_as(context: ExecutionContext):
    """Set the current execution; returns a token for ``finished``."""
    return _current.set(context)


def finished(token) -> None:
    _current.reset(token)
