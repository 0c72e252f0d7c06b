"""Scheduler node liveness: registration, heartbeats, and declaring nodes dead.

Every "now" here is PostgreSQL's, so a node with a wrong clock is judged like any other.
"""

from __future__ import annotations

import time

from django.db import connection

REGISTER_NODE = """
INSERT INTO locks_schedulernode
    (id, hostname, pid, version, started_at, last_heartbeat, state, stopped_at, declared_dead_by)
VALUES (%s, %s, %s, %s, now(), now(), 'active', NULL, '')
ON CONFLICT (id) DO UPDATE SET
    hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, version = EXCLUDED.version,
    started_at = now(), last_heartbeat = now(), state = 'active',
    stopped_at = NULL, declared_dead_by = ''
"""

# Only an active node may heartbeat: a node that was declared dead must notice it
# (zero rows) rather than quietly come back to life with its work already recovered.
# The same round trip asks whether any other node has gone silent, so an idle node
# costs one query per heartbeat. Uses node_active_idx.
HEARTBEAT = """
WITH beat AS (
    UPDATE locks_schedulernode SET last_heartbeat = now()
    WHERE id = %s AND state = 'active'
    RETURNING id
)
SELECT (SELECT count(*) FROM beat),
       EXISTS (SELECT 1 FROM locks_schedulernode
               WHERE state = 'active' AND id <> %s
                 AND last_heartbeat < now() - make_interval(secs => %s))
"""

MARK_STOPPED = """
UPDATE locks_schedulernode SET state = 'stopped', stopped_at = now()
WHERE id = %s AND state = 'active'
"""

# A conditional UPDATE: when several live nodes notice the same silent node at once,
# the row lock makes the later ones re-check `state = 'active'` and find it already
# dead, so exactly one of them declares the death and recovers its executions.
MARK_DEAD_NODES = """
UPDATE locks_schedulernode
SET state = 'dead', stopped_at = now(), declared_dead_by = %s
WHERE state = 'active'
  AND last_heartbeat < now() - make_interval(secs => %s)
  AND id <> %s
RETURNING id
"""


def register_node(node_id: str, hostname: str, pid: int, version: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(REGISTER_NODE, [node_id, hostname, pid, version])


def heartbeat(node_id: str, timeout_seconds: float) -> tuple[bool, bool]:
    """Refresh the node's heartbeat.

    Returns (still active, some other node is past the timeout).
    """
    with connection.cursor() as cursor:
        cursor.execute(HEARTBEAT, [node_id, node_id, timeout_seconds])
        beat, overdue = cursor.fetchone()
    return beat == 1, overdue


def mark_stopped(node_id: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(MARK_STOPPED, [node_id])


def mark_dead_nodes(by_node_id: str, timeout_seconds: float) -> list[str]:
    """Declare dead every active node silent for longer than the timeout; return their ids.

    Call inside the transaction that also recovers their executions.
    """
    with connection.cursor() as cursor:
        cursor.execute(MARK_DEAD_NODES, [by_node_id, timeout_seconds, by_node_id])
        return [row[0] for row in cursor.fetchall()]


class LivenessLease:
    """How long this process may act as a live owner of its work, on its own clock.

    Another node declares this one dead once its ``last_heartbeat`` is ``timeout``
    seconds old in database time. ``renew`` takes the monotonic time at which the
    successful heartbeat was *sent*: the row's ``now()`` is no earlier than that, so until
    ``sent + timeout`` nobody can have declared this node dead. The lease stops short of
    that by ``margin``, for clocks that run at slightly different rates and for the
    moment between checking the lease and acting on it. A process that was paused or cut
    off past the lease must ask the database (a heartbeat) before it starts anything.
    The monotonic clock keeps running while a process is stopped, and no wall-clock step
    moves it.
    """

    def __init__(self, timeout: float, margin: float):
        if margin >= timeout:
            raise ValueError("the liveness margin must be shorter than the timeout")
        self.length = timeout - margin
        self.valid_until = float("-inf")
        #: Counts the times the lease was lost (the process was declared dead): whatever
        #: was confirmed under an earlier generation must be confirmed again.
        self.generation = 0

    def renew(self, sent_at: float) -> None:
        self.valid_until = max(self.valid_until, sent_at + self.length)

    def expire(self) -> None:
        """The process was declared dead: nothing it confirmed before still holds."""
        self.valid_until = float("-inf")
        self.generation += 1

    def fresh(self) -> bool:
        return time.monotonic() < self.valid_until

    def remaining(self) -> float:
        return self.valid_until - time.monotonic()


def liveness_margin(timeout: float, heartbeat_interval: float) -> float:
    """The safety margin of a lease: two heartbeats, but at most a third of the timeout."""
    return min(2 * heartbeat_interval, timeout / 3)
