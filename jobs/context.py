"""What a running job may know about its own execution.

Job code calls ``current_execution()`` to get its execution id (a natural idempotency
key), fire time and attempt number. Set by the executor around each run.
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


_current: ContextVar[ExecutionContext | None] = ContextVar("current_execution", default=None)


def current_execution() -> ExecutionContext | None:
    """The execution the calling job code runs as, or None outside a run."""
    return _current.get()


def running_as(context: ExecutionContext):
    """Set the current execution; returns a token for ``finished``."""
    return _current.set(context)


def finished(token) -> None:
    _current.reset(token)
