"""Surviving a lost database connection in the node's and workers' threads.

A connection can drop at any statement: PostgreSQL restarts or crashes, an operator
terminates the backend, the network breaks. Django then raises OperationalError or
InterfaceError and the connection object is unusable until closed. These helpers close
it and try again on a fresh one, so a step that must happen (releasing a lock, writing
a result) is retried rather than lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

log = logging.getLogger("jobs.reconnect")

# Errors that mean "the database connection is gone": close it and try again later.
CONNECTION_ERRORS = (OperationalError, InterfaceError)

T = TypeVar("T")

# For the connections of nodes and workers. Their statements are prepared and planned
# once per connection, and a plan made while jobs_execution was nearly empty (a new
# install, a burst after a quiet start) scanned the whole table on every later run until
# its statistics changed: a worker's claim and result read about 31,000 rows each at
# 40,000 executions. Their statements are built around indexes (tests/jobs/test_indexes.py
# names them); where no index applies, PostgreSQL still scans.
SCHEDULER_CONNECTION_OPTIONS = "-c enable_seqscan=off"


def use_scheduler_connection_options() -> None:
    """Open this process's connections from now on as a node's or worker's (see above).

    A connection already open keeps its options: close it after this call where one may
    be (run_scheduler does). Not in a Celery pool process, whose connections came with
    the fork: closing one there would end the parent's too (Celery's Django fixup drops
    them without a word to the server).
    """
    for database in settings.DATABASES.values():
        options = database.setdefault("OPTIONS", {})
        current = options.get("options", "")
        if SCHEDULER_CONNECTION_OPTIONS not in current:
            options["options"] = f"{current} {SCHEDULER_CONNECTION_OPTIONS}".strip()


def forget_connection() -> None:
    """Drop this thread's broken connection; the next query opens a new one."""
    try:
        connection.close()
    except Exception:  # closing a dead connection may itself fail; it is gone either way
        log.debug("closing a broken connection failed", exc_info=True)


def retry_on_disconnect(
    action: Callable[[], T],
    what: str,
    *,
    attempts: int | None = None,
    stopping: threading.Event | None = None,
    max_delay: float = 1.0,
) -> T:
    """Run ``action``, retrying on a fresh connection while the connection is lost.

    The first retry is immediate (a terminated backend is usually the only problem),
    then the wait doubles up to ``max_delay``. Gives up, raising the last error, after
    ``attempts`` tries, or once ``stopping`` is set; with neither, retries until the
    database answers. ``action`` must be safe to repeat: its effect either committed
    or it did not, and a second run must do no harm in both cases.
    """
    delay = 0.0
    tried = 0
    while True:
        try:
            return action()
        except CONNECTION_ERRORS as e:
            tried += 1
            forget_connection()
            if (attempts is not None and tried >= attempts) or (stopping and stopping.is_set()):
                raise
            if tried == 1 or tried % 10 == 0:
                log.warning("%s: database connection lost (%s); retrying", what, e)
            if stopping is not None:
                stopping.wait(delay)
            else:
                time.sleep(delay)
            delay = min(max(delay * 2, 0.05), max_delay)
