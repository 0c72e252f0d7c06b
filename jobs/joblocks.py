"""The job lock of a `forbid` job, as held by one run (on a node's thread or a worker).

Taking and releasing it survive a lost connection: both are retried on a fresh
connection, and both are safe to repeat (a take whose answer was lost is recognised by
its holder and execution; a second release of the same token changes nothing). A release
that still cannot reach the database goes with the run's result instead, released in
the transaction that records it (jobs.recorder.write_results).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from jobs.claims import JobSettings
from jobs.reconnect import CONNECTION_ERRORS, retry_on_disconnect
from locks import leases

log = logging.getLogger("jobs.joblocks")

# Tries of a release before it is left to the result's transaction.
RELEASE_ATTEMPTS = 3

LOCK_ROW = """
SELECT holder, execution_id, token, locked_at, locked_until FROM locks_lock WHERE name = %s
"""


@dataclass
class HeldJobLock:
    lease: leases.Lease
    keeper: leases.Keepalive


def take(
    job: JobSettings,
    holder: str,
    execution_id: int,
    stopping: threading.Event | None = None,
    on_lost: Callable[[leases.LockLost], None] | None = None,
) -> tuple[HeldJobLock | None, str]:
    """Take the job's lock for one run, kept alive while held.

    Returns (the held lock, "") or (None, a note saying who holds it). Retries while the
    connection is lost, until ``stopping`` is set. ``on_lost`` is called (from the
    keepalive's thread) if the lease is found lost while the run holds it.
    """

    def attempt():
        lease = leases.acquire(job.lock_name, holder, job.lock_lease, execution_id=execution_id)
        if lease is not None:
            return lease, None
        with connection.cursor() as cursor:
            cursor.execute(LOCK_ROW, [job.lock_name])
            return None, cursor.fetchone()

    lease, row = retry_on_disconnect(
        attempt, f"execution #{execution_id}: taking lock {job.lock_name}", stopping=stopping
    )
    if lease is None and row is not None and row[0] == holder and row[1] == execution_id:
        # An earlier try took it, but its answer was lost with the connection.
        lease = leases.Lease(job.lock_name, holder, row[2], row[3], row[4])
    if lease is None:
        other, other_execution = (row or ("", None))[:2]
        held_by = (other or "a releasing holder") + (
            f" for execution #{other_execution}" if other_execution else ""
        )
        return None, f"skipped: concurrency policy forbid; {job.lock_name} held by {held_by}"
    keeper = leases.Keepalive(lease, job.lock_lease, on_lost=on_lost)
    keeper.start()
    return HeldJobLock(lease, keeper), ""


def release(held: HeldJobLock, execution_id: int) -> tuple[str, leases.Lease | None]:
    """Release a run's job lock.

    Returns a note for the execution ("" when all went well) and, when the database
    could not be reached, the lease, to be released with the run's result.
    """
    held.keeper.stop()
    name = held.lease.name
    try:
        retry_on_disconnect(
            held.lease.release,
            f"execution #{execution_id}: releasing lock {name}",
            attempts=RELEASE_ATTEMPTS,
        )
    except leases.LockLost as e:
        log.warning("job lock of execution #%s was lost while it ran: %s", execution_id, e)
        return f"job lock lost while the run held it: {e}", None
    except CONNECTION_ERRORS as e:
        log.warning(
            "execution #%s: could not release lock %s (%s); it is released with the result",
            execution_id,
            name,
            e,
        )
        return f"the job lock's release failed ({e}); released with this result", held.lease
    if held.keeper.lost is not None:
        return f"job lock lost while the run held it: {held.keeper.lost}", None
    return "", None
