"""A scheduler node's Prometheus metrics, served by ``run_scheduler --metrics-port``.

The metrics live in their own registry, so a node's endpoint shows the node (and its
process), never the web process's request metrics. The ``record_*`` helpers are what
the node calls; they only touch values already in memory (no database, no node lock),
so the claim loop and the recorder stay as fast as without them. The cluster-wide view
(nodes, backlog, locks) is the web process's job: controlplane/metrics.py.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from jobs.claims import Claimed, Result, Run
    from jobs.node import Node

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Per-job series are labelled job_name, not job: Prometheus sets `job` on every series
# to the scrape job, and would rename ours to exported_job.
FIRES = Counter(
    "scheduler_fires",
    "Fire times this node recorded and dispatched (skipped misfires are not fires).",
    ["job_name"],
    registry=REGISTRY,
)
FIRE_LAG = Histogram(
    "scheduler_fire_lag_seconds",
    "Seconds from a fire's scheduled time to the database time of the claim that fired it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
CLAIM_BATCH = Histogram(
    "scheduler_claim_batch_size",
    "Triggers (kind=due) or pending executions (kind=pending) taken per claim transaction.",
    ["kind"],
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
    registry=REGISTRY,
)
CLAIM_DURATION = Histogram(
    "scheduler_claim_duration_seconds",
    "Seconds per claim transaction, as seen by the node (round trips included).",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
FINISHED = Counter(
    "scheduler_executions_finished",
    "Executions this node ran to a final state, as written by its recorder.",
    ["job_name", "state"],
    registry=REGISTRY,
)
MISFIRES = Counter(
    "scheduler_misfires",
    "Fire times missed by more than their grace: skipped (skip), folded into one run "
    "(fire_once), or run late (fire_all).",
    ["policy"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "scheduler_retries",
    "Retry executions queued after a failed or timed-out attempt.",
    ["job_name"],
    registry=REGISTRY,
)
RECOVERIES = Counter(
    "scheduler_recoveries",
    "Recovery executions queued for runs abandoned by a dead node or silent worker (by this node).",
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "scheduler_inflight_runs",
    "Runs claimed by this node that have not finished (queued for a thread or running).",
    registry=REGISTRY,
)
INFLIGHT_LIMIT = Gauge(
    "scheduler_inflight_limit",
    "Most inline runs this node holds at once: its threads plus SCHEDULER_PREFETCH.",
    registry=REGISTRY,
)
INTERNAL_ERRORS = Counter(
    "scheduler_internal_errors",
    "Unexpected errors caught in the node's own threads (runner, recorder, second claimer, "
    "history pruner) and in Celery workers, each logged (with the execution id where there "
    "is one); a run is still recorded.",
    ["thread"],
    registry=REGISTRY,
)
START_CONFIRMATIONS = Histogram(
    "scheduler_start_confirmation_size",
    "Runs whose start one CONFIRM_START confirmed (runs claimed ahead of a free thread; "
    "the threads starting runs at the same moment share one).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
RUN_PROGRESS = Gauge(
    "scheduler_run_progress_ratio",
    "Progress (done / total) last reported by a run of this job going on on this node "
    "(jobs.context.progress); absent while none reports a total.",
    ["job_name"],
    registry=REGISTRY,
)
RUNS_DROPPED = Counter(
    "scheduler_runs_dropped",
    "Claimed runs this node did not start because it no longer owned them (it was "
    "declared dead, or the run ended elsewhere); the cluster runs them.",
    registry=REGISTRY,
)
IS_LEADER = Gauge(
    "scheduler_is_leader",
    "1 while this node holds the leader lease (and runs the cluster's maintenance).",
    registry=REGISTRY,
)
NODE_INFO = Info("scheduler_node", "The node this endpoint belongs to.", registry=REGISTRY)

FINAL_STATES = ("succeeded", "failed", "timed_out", "skipped")

# Known label values start at zero, so rate() and increase() see their first event.
for _policy in ("skip", "fire_once", "fire_all"):
    MISFIRES.labels(_policy)
for _thread in ("runner", "recorder", "claimer", "pruner"):
    INTERNAL_ERRORS.labels(_thread)
for _kind in ("due", "pending"):
    CLAIM_BATCH.labels(_kind)
    CLAIM_DURATION.labels(_kind)


def serve(node: Node, port: int, addr: str = "127.0.0.1") -> WSGIServer:
    """Serve this registry over HTTP from a daemon thread; returns the server."""
    NODE_INFO.info({"node_id": node.node_id, "version": node.version})
    INFLIGHT_LIMIT.set(node.threads + node.prefetch_max)
    # Read at scrape time: nothing to keep up to date on the node's own paths.
    INFLIGHT.set_function(lambda: len(node.inflight))
    IS_LEADER.set_function(lambda: float(node.leadership.is_leader))
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server


def record_claim_due(claimed: Claimed, seconds: float) -> None:
    """One claim of due triggers: its size, duration, fires, their lag and misfires."""
    CLAIM_BATCH.labels("due").observe(claimed.triggers)
    CLAIM_DURATION.labels("due").observe(seconds)
    if claimed.claimed_at is not None:
        for run in claimed.runs:
            FIRE_LAG.observe((claimed.claimed_at - run.scheduled_for).total_seconds())
    for job, count in Tally(run.job.name for run in claimed.runs).items():
        FIRES.labels(job).inc(count)
    _count_misfires(claimed)


def _count_misfires(claimed: Claimed) -> None:
    if claimed.skipped:
        MISFIRES.labels("skip").inc(claimed.skipped)
    if claimed.coalesced:
        MISFIRES.labels("fire_once").inc(claimed.coalesced)
    if claimed.caught_up:
        MISFIRES.labels("fire_all").inc(claimed.caught_up)


def record_claim_pending(size: int, seconds: float) -> None:
    """One claim of pending executions (manual runs, retries, recoveries)."""
    CLAIM_BATCH.labels("pending").observe(size)
    CLAIM_DURATION.labels("pending").observe(seconds)


def record_results(results: list[Result], applied: set[int], runs: dict[int, Run]) -> None:
    """Count the final states (and the retries they queued) the recorder just wrote.

    ``applied`` holds the ids whose write took effect: a late result for a run already
    timed out or abandoned changed nothing and is not counted. ``runs`` is the node's
    in-flight map, read without its lock (single dict reads are atomic).
    """
    finished: Tally[tuple[str, str]] = Tally()
    retried: Tally[str] = Tally()
    for result in results:
        if result.state not in FINAL_STATES or result.execution_id not in applied:
            continue
        run = runs.get(result.execution_id)
        job = run.job.name if run is not None and run.job is not None else ""
        finished[job, result.state] += 1
        if result.retry_delay is not None:
            retried[job] += 1
    for (job, state), count in finished.items():
        FINISHED.labels(job, state).inc(count)
    for job, count in retried.items():
        RETRIES.labels(job).inc(count)


def record_recoveries(count: int) -> None:
    if count:
        RECOVERIES.inc(count)


def record_internal_error(thread: str) -> None:
    INTERNAL_ERRORS.labels(thread).inc()


def record_dropped(count: int) -> None:
    if count:
        RUNS_DROPPED.inc(count)


def record_start_confirmation(size: int) -> None:
    START_CONFIRMATIONS.observe(size)


def record_progress(job_name: str, done: float, total: float | None) -> None:
    if total:
        RUN_PROGRESS.labels(job_name).set(min(done / total, 1.0))


def forget_progress(job_name: str) -> None:
    try:
        RUN_PROGRESS.remove(job_name)
    except KeyError:
        pass  # it never reported a total
