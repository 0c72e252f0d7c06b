"""The cluster's state as Prometheus gauges, read from the database at scrape time.

The web process serves them at /metrics beside django-prometheus's request metrics.
Every scrape runs one query (database time throughout), each part of it bounded by a
partial index or a small table, so a scrape costs the same at a million executions as
at a hundred. When the database cannot answer, the scrape still succeeds and says so
with ``scheduler_cluster_scrape_error 1``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from locks.leader import LEADER_LOCK

log = logging.getLogger("controlplane.metrics")

# A scrape must never hang on the database (a migration's table lock, an overloaded
# server): give up well inside Prometheus's default 10 s scrape timeout.
STATEMENT_TIMEOUT_MS = 5000

NODE_STATES = ("live", "overdue", "dead", "stopped")
EXECUTION_STATES = ("pending", "dispatched", "running")
LOCK_KINDS = ("leader", "job", "app")
STALE_REASONS = ("dead_holder", "finished_execution", "expired")

# One row. Each subquery reads a small set:
# - nodes: locks_schedulernode, one row per node start (no index needed);
# - pending: execution_pending_idx, an index-only scan of the pending rows;
# - unfinished: the dispatched and running rows only, through a partial index
#   (execution_unfinished_idx or execution_state_recent_idx, as the planner likes);
# - locks: lock_held_idx (held rows only), each joined by primary key to its holder
#   node and execution. The stale CASE is locks.maintenance.STALE_LOCKS's, as kinds;
#   a test keeps the two in step.
# "overdue" nodes are active but silent past the node timeout: dead in fact, not yet
# declared (nobody declares a death while no node is alive to lead).
CLUSTER_STATE = """
WITH nodes AS (
    SELECT
        count(*) FILTER (WHERE state = 'active'
                         AND last_heartbeat >= now() - make_interval(secs => %(timeout)s))
            AS live,
        count(*) FILTER (WHERE state = 'active'
                         AND last_heartbeat < now() - make_interval(secs => %(timeout)s))
            AS overdue,
        count(*) FILTER (WHERE state = 'dead') AS dead,
        count(*) FILTER (WHERE state = 'stopped') AS stopped
    FROM locks_schedulernode
),
pending AS (
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE run_after <= now()) AS due,
           COALESCE(extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now())),
                    0) AS oldest_due_age
    FROM jobs_execution WHERE state = 'pending'
),
unfinished AS (
    SELECT count(*) FILTER (WHERE state = 'dispatched') AS dispatched,
           count(*) FILTER (WHERE state = 'running') AS running
    FROM jobs_execution WHERE state IN ('dispatched', 'running')
),
held AS (
    SELECT l.locked_at,
        CASE WHEN l.name = %(leader)s THEN 'leader'
             WHEN l.name LIKE 'job:%%' THEN 'job'
             ELSE 'app' END AS kind,
        CASE
            WHEN n.state IN ('dead', 'stopped') THEN 'dead_holder'
            WHEN e.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'abandoned',
                             'skipped') THEN 'finished_execution'
            WHEN l.locked_until < now() THEN 'expired'
        END AS stale
    FROM locks_lock l
    LEFT JOIN locks_schedulernode n ON n.id = l.holder
    LEFT JOIN jobs_execution e ON e.id = l.execution_id
    WHERE l.holder <> ''
),
locks AS (
    SELECT
        count(*) FILTER (WHERE kind = 'leader') AS held_leader,
        count(*) FILTER (WHERE kind = 'job') AS held_job,
        count(*) FILTER (WHERE kind = 'app') AS held_app,
        COALESCE(extract(epoch FROM now() - min(locked_at) FILTER (WHERE kind = 'leader')), 0)
            AS oldest_leader,
        COALESCE(extract(epoch FROM now() - min(locked_at) FILTER (WHERE kind = 'job')), 0)
            AS oldest_job,
        COALESCE(extract(epoch FROM now() - min(locked_at) FILTER (WHERE kind = 'app')), 0)
            AS oldest_app,
        count(*) FILTER (WHERE stale = 'dead_holder') AS stale_dead_holder,
        count(*) FILTER (WHERE stale = 'finished_execution') AS stale_finished_execution,
        count(*) FILTER (WHERE stale = 'expired') AS stale_expired
    FROM held
)
SELECT * FROM nodes, pending, unfinished, locks
"""


def cluster_state(using: str = "default") -> dict[str, float]:
    """The cluster's nodes, backlog and locks, by column of CLUSTER_STATE."""
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        cursor.execute(
            CLUSTER_STATE,
            {"timeout": settings.SCHEDULER_NODE_TIMEOUT, "leader": LEADER_LOCK},
        )
        columns = [c.name for c in cursor.description]
        row = cursor.fetchone()
    return {name: float(value) for name, value in zip(columns, row, strict=True)}


class ClusterCollector(Collector):
    """Yields the cluster gauges, computed from the database on each collect()."""

    def __init__(self, using: str = "default"):
        self.using = using

    def describe(self) -> list[GaugeMetricFamily]:
        # Without describe(), registering would run collect(), and so the query.
        return [*self._families(None), *self._scrape_families(0.0, 0.0)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.perf_counter()
        try:
            state = cluster_state(self.using)
        except DatabaseError as e:
            log.warning("cluster metrics: the database did not answer: %s", e)
            yield from self._scrape_families(1.0, time.perf_counter() - started)
            return
        yield from self._families(state)
        yield from self._scrape_families(0.0, time.perf_counter() - started)

    def _families(self, s: dict[str, float] | None) -> list[GaugeMetricFamily]:
        """The gauge families, with samples from ``s`` (none when ``s`` is None)."""
        nodes = GaugeMetricFamily(
            "scheduler_cluster_nodes",
            "Scheduler nodes by state: live (heartbeating), overdue (active but silent past "
            "SCHEDULER_NODE_TIMEOUT, not yet declared dead), dead (declared), stopped.",
            labels=["state"],
        )
        executions = GaugeMetricFamily(
            "scheduler_cluster_executions",
            "Unfinished executions by state (pending includes retries still in backoff).",
            labels=["state"],
        )
        due = GaugeMetricFamily(
            "scheduler_cluster_pending_due",
            "Pending executions whose run_after has passed: runnable, waiting for a node.",
        )
        pending_age = GaugeMetricFamily(
            "scheduler_cluster_pending_oldest_age_seconds",
            "Seconds since the run_after of the oldest runnable pending execution (0: none).",
        )
        held = GaugeMetricFamily(
            "scheduler_cluster_locks_held",
            "Held locks by kind: the leader lease, job locks of forbid jobs, app locks.",
            labels=["kind"],
        )
        held_age = GaugeMetricFamily(
            "scheduler_cluster_locks_oldest_held_age_seconds",
            "Seconds since the oldest held lock of each kind was acquired (0: none held).",
            labels=["kind"],
        )
        stale = GaugeMetricFamily(
            "scheduler_cluster_locks_stale",
            "Held locks whose holder can no longer release them, by reason: the holder node "
            "is dead or stopped, its execution finished, or the lease expired.",
            labels=["reason"],
        )
        if s is not None:
            for state in NODE_STATES:
                nodes.add_metric([state], s[state])
            for state in EXECUTION_STATES:
                executions.add_metric([state], s[state])
            due.add_metric([], s["due"])
            pending_age.add_metric([], s["oldest_due_age"])
            for kind in LOCK_KINDS:
                held.add_metric([kind], s[f"held_{kind}"])
                held_age.add_metric([kind], s[f"oldest_{kind}"])
            for reason in STALE_REASONS:
                stale.add_metric([reason], s[f"stale_{reason}"])
        return [nodes, executions, due, pending_age, held, held_age, stale]

    def _scrape_families(self, error: float, seconds: float) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "scheduler_cluster_scrape_error",
                "1 when the cluster gauges could not be read from the database, else 0.",
                value=error,
            ),
            GaugeMetricFamily(
                "scheduler_cluster_scrape_duration_seconds",
                "Seconds spent reading the cluster gauges from the database.",
                value=seconds,
            ),
        ]


_registered: ClusterCollector | None = None


def register_cluster_collector() -> ClusterCollector:
    """Add the cluster gauges to the registry /metrics serves, once per process."""
    global _registered
    if _registered is None:
        _registered = ClusterCollector()
        REGISTRY.register(_registered)
    return _registered
