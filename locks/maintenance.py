"""Operator and housekeeping actions on locks: stale detection, cleanup, force release."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from controlplane import audit, durations
from locks.leases import NOTIFY_RELEASED, LockError

# A held lock is stale when its holder can no longer release it: the lease ran out,
# the node holding it is dead or stopped, or the execution holding it has finished.
# The first matching reason is reported. Uses lock_held_idx.
STALE_LOCKS = """
SELECT name, holder, token, locked_at, locked_until, execution_id, reason FROM (
    SELECT l.name, l.holder, l.token, l.locked_at, l.locked_until, l.execution_id,
        CASE
            WHEN n.state IN ('dead', 'stopped')
                THEN format('holder node %%s is %%s', n.id, n.state)
            WHEN e.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'abandoned',
                             'skipped')
                THEN format('held for execution #%%s, which is %%s', e.id, e.state)
            -- Worded in Python (_worded), in the dashboard's one duration format.
            WHEN l.locked_until < now()
                THEN format('expired %%s', extract(epoch FROM now() - l.locked_until))
        END AS reason
    FROM locks_lock l
    LEFT JOIN locks_schedulernode n ON n.id = l.holder
    LEFT JOIN jobs_execution e ON e.id = l.execution_id
    WHERE l.holder <> ''
) held
WHERE reason IS NOT NULL AND (%(names)s::text[] IS NULL OR name = ANY(%(names)s::text[]))
ORDER BY locked_at
"""

# Bumping the token is what makes a forced release safe: the old holder's extend and
# release carry the old token and now fail with LockLost instead of touching the row.
# The row lock (FOR UPDATE) serialises two operators forcing the same lock.
SELECT_HELD_FOR_UPDATE = """
SELECT holder, token, locked_at, locked_until, execution_id, locked_until > now()
FROM locks_lock WHERE name = %s FOR UPDATE
"""

FORCE_RELEASE = """
UPDATE locks_lock
SET holder = '', execution_id = NULL, locked_until = now(), token = token + 1
WHERE name = %s
RETURNING token
"""


# A lock released from under a running execution: the execution records when, by whom
# and why (its page shows it), and its node or worker is told (jobs.context.lock_lost).
# The guard is in IS TRUE so that the row is found by the primary key, not by reading
# every unfinished run (see jobs.claims.CLAIM_ON_WORKER).
RECORD_LOCK_LOSS = """
WITH running AS (
    UPDATE jobs_execution SET lock_lost_at = COALESCE(lock_lost_at, now())
    WHERE id = %(id)s AND (state = 'running') IS TRUE
    RETURNING id
)
INSERT INTO jobs_executionevent (execution_id, at, kind, actor, message)
SELECT id, now(), 'lock_lost', %(by)s, %(message)s FROM running
RETURNING execution_id
"""

# jobs.claims.NOTIFY_RUN_SIGNAL (the locks app does not import the jobs app).
NOTIFY_RUN_SIGNAL = "SELECT pg_notify('jobs_run_signal', %s)"


def _tell_holder(cursor, execution_id: int | None, by, message: str) -> None:
    if execution_id is None:
        return
    actor = audit.actor_of(by)[1]
    cursor.execute(RECORD_LOCK_LOSS, {"id": execution_id, "by": actor, "message": message})
    if cursor.fetchone() is not None:
        cursor.execute(NOTIFY_RUN_SIGNAL, [str(execution_id)])


class LockNotHeld(LockError):
    """A force release of a lock that nobody holds."""


class UnknownLock(LockError):
    """No lock of that name exists."""


@dataclass(frozen=True)
class StaleLock:
    name: str
    holder: str
    token: int
    locked_at: datetime
    locked_until: datetime
    execution_id: int | None
    reason: str


def stale_locks(names: list[str] | None = None) -> list[StaleLock]:
    """Held locks whose holder can no longer release them, each with the reason."""
    with connection.cursor() as cursor:
        cursor.execute(STALE_LOCKS, {"names": names})
        return [StaleLock(*row[:-1], _worded(row[-1])) for row in cursor.fetchall()]


def _worded(reason: str) -> str:
    """ "expired <seconds>" from STALE_LOCKS as "expired 1m 30s ago and never released"."""
    kind, _, seconds = reason.partition(" ")
    if kind != "expired":
        return reason
    return f"expired {durations.ago(int(float(seconds)))} and never released"


def force_release(name: str, by, reason: str) -> dict:
    """Free a held lock now, fencing off its holder; audited. Returns the before/after."""
    if not reason or not reason.strip():
        raise ValueError("a reason is required to force-release a lock")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SELECT_HELD_FOR_UPDATE, [name])
        row = cursor.fetchone()
        if row is None:
            raise UnknownLock(f"there is no lock named {name!r}")
        holder, token, locked_at, locked_until, execution_id, valid = row
        if not holder and not valid:
            raise LockNotHeld(f"lock {name!r} is not held (token {token})")
        cursor.execute(FORCE_RELEASE, [name])
        new_token = cursor.fetchone()[0]
        cursor.execute(NOTIFY_RELEASED, {"name": name})
        _tell_holder(cursor, execution_id, by, f"{name} force released: {reason}")
        before = {
            "holder": holder, "token": token, "execution_id": execution_id,
            "locked_at": locked_at.isoformat(), "locked_until": locked_until.isoformat(),
        }  # fmt: skip
        after = {"holder": "", "token": new_token}
        audit.record(by, "lock.force_release", "lock", name, reason, before, after)
    return {"before": before, "after": after}


def cleanup_stale_locks(by, reason: str = "stale lock cleanup") -> list[StaleLock]:
    """Release every stale lock (bumping its token), auditing each; returns what it freed."""
    freed = []
    with transaction.atomic(), connection.cursor() as cursor:
        for stale in stale_locks():
            # Re-check under the row lock: the holder may have released or extended it.
            cursor.execute(SELECT_HELD_FOR_UPDATE, [stale.name])
            row = cursor.fetchone()
            if row is None or row[1] != stale.token:
                continue
            still_stale = stale_locks([stale.name])
            if not still_stale:
                continue
            cursor.execute(FORCE_RELEASE, [stale.name])
            new_token = cursor.fetchone()[0]
            cursor.execute(NOTIFY_RELEASED, {"name": stale.name})
            why = f"{stale.name} released as stale ({still_stale[0].reason}): {reason}"
            _tell_holder(cursor, stale.execution_id, by, why)
            before = {
                "holder": stale.holder, "token": stale.token,
                "execution_id": stale.execution_id, "stale_reason": still_stale[0].reason,
            }  # fmt: skip
            audit.record(
                by, "lock.cleanup_stale", "lock", stale.name, reason, before,
                {"holder": "", "token": new_token},
            )  # fmt: skip
            freed.append(still_stale[0])
    return freed


# Frees the locks of holders that can no longer release them (a dead node, an abandoned
# execution), bumping each token to fence the old holder off. The self-join reads each
# row as it was before this UPDATE, for the audit's "before".
RELEASE_LOCKS_WHERE = """
UPDATE locks_lock l
SET holder = '', execution_id = NULL, locked_until = now(), token = l.token + 1
FROM locks_lock old
WHERE old.name = l.name AND ({condition})
RETURNING l.name, old.holder, old.token, old.execution_id
"""


def release_locks_of(holders: list[str], by, reason: str) -> list[str]:
    """Free every lock held by these (dead) holders, fencing them off; audited."""
    return _release_where("l.holder = ANY(%s)", holders, "lock.release_dead_holder", by, reason)


def release_locks_of_executions(execution_ids: list[int], by, reason: str) -> list[str]:
    """Free the locks held for these (abandoned) executions, fencing their holders."""
    return _release_where(
        "l.execution_id = ANY(%s)", execution_ids, "lock.release_abandoned", by, reason
    )


def _release_where(condition: str, values: list, action: str, by, reason: str) -> list[str]:
    if not values:
        return []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RELEASE_LOCKS_WHERE.format(condition=condition), [values])
        released = cursor.fetchall()
        for name, holder, token, execution_id in released:
            cursor.execute(NOTIFY_RELEASED, {"name": name})
            _tell_holder(cursor, execution_id, by, f"{name} released: {reason}")
            audit.record(
                by, action, "lock", name, reason,
                {"holder": holder, "token": token, "execution_id": execution_id},
                {"holder": "", "token": token + 1},
            )  # fmt: skip
    return [name for name, *_ in released]
