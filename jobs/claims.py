"""The SQL that carries the scheduler's concurrency story, in one place.

Claiming, recording results, and recovering abandoned work. Each statement is
parameterised and says why it is safe when many nodes run it at once. Every "now" is
PostgreSQL's `now()` / `clock_timestamp()`, never a node's clock.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from psycopg import Cursor as PsycopgCursor
from psycopg.types.datetime import TimestamptzLoader

from jobs import schedule
from jobs.models import job_lock_name

if TYPE_CHECKING:
    from locks.leases import Lease

# Locks up to N due triggers of unpaused jobs. SKIP LOCKED makes concurrent nodes take
# disjoint batches instead of queueing behind each other; the lock is held until the
# transaction that records the fires and advances next_fire_at commits, so no other
# node can see the old next_fire_at once this one has acted on it.
# Uses trigger_due_idx.
SELECT_DUE_TRIGGERS = """
SELECT t.id, t.job_id, t.kind, t.cron, t.timezone, t.interval, t.run_at, t.start_at,
       t.end_at, t.misfire_policy, t.misfire_grace, t.next_fire_at,
       j.id, j.name, j.target, j.timeout, j.max_attempts, j.retry_backoff, j.recover,
       j.concurrency_policy, j.executor, j.celery_task, j.queue, now()
FROM jobs_trigger t
JOIN jobs_job j ON j.id = t.job_id
WHERE t.next_fire_at <= now() AND NOT t.paused AND NOT j.paused
ORDER BY t.next_fire_at
LIMIT %s
FOR UPDATE OF t SKIP LOCKED
"""

# The same for the triggers of celery jobs only: a node with no free thread still
# publishes those. The jobs are looked up first (SELECT_CELERY_JOBS) and named by id:
# with their ids as values the planner sees how few triggers they have and reads them by
# the job_id index; joined, it judged by all jobs' triggers and walked the due index past
# every overdue inline trigger (a whole backlog, on every loop of a full node). No celery
# job, no query.
SELECT_CELERY_JOBS = "SELECT id FROM jobs_job WHERE executor = 'celery' AND NOT paused"
SELECT_DUE_CELERY_TRIGGERS = SELECT_DUE_TRIGGERS.replace(
    "WHERE t.next_fire_at <= now()",
    "WHERE t.job_id = ANY(%s) AND j.executor = 'celery' AND t.next_fire_at <= now()",
)

# One row per fire time. The partial unique index one_execution_per_fire is the
# idempotency key: whatever two nodes race on, a fire time is recorded at most once.
# Fires this node will start at once (for a free thread, or quick runs it expects to start
# within SCHEDULER_START_WINDOW: see StartPlan) are recorded already running (the claim is
# their start confirmation: see CONFIRM_START); the others it claims ahead of a thread are
# recorded dispatched to it; skipped fires are recorded finished.
INSERT_FIRES = """
INSERT INTO jobs_execution
    (job_id, trigger_id, scheduled_for, origin, state, attempt, args, kwargs, node,
     created_at, run_after, dispatched_at, started_at, finished_at, error, traceback, note,
     fence)
SELECT v.job_id, v.trigger_id, v.scheduled_for, 'schedule', v.state, 1, j.args, j.kwargs,
       CASE WHEN v.state = 'skipped' THEN '' ELSE %b END,
       now(), now(),
       CASE WHEN v.state <> 'skipped' THEN now() END,
       CASE WHEN v.state = 'running' THEN clock_timestamp() END,
       CASE WHEN v.state = 'skipped' THEN now() END,
       '', '', v.note,
       CASE WHEN v.state = 'running' THEN nextval('jobs_execution_fence_seq') END
FROM unnest(%b::bigint[], %b::bigint[], %b::timestamptz[], %b::text[], %b::text[])
     AS v(job_id, trigger_id, scheduled_for, state, note)
JOIN jobs_job j ON j.id = v.job_id
ON CONFLICT (trigger_id, scheduled_for) WHERE origin = 'schedule' DO NOTHING
RETURNING id, job_id, trigger_id, scheduled_for, state, attempt, args, kwargs, fence
"""

ADVANCE_TRIGGERS = """
UPDATE jobs_trigger t
SET next_fire_at = v.next_fire_at,
    last_fire_at = COALESCE(v.last_fire_at, t.last_fire_at)
FROM unnest(%b::bigint[], %b::timestamptz[], %b::timestamptz[])
     AS v(id, next_fire_at, last_fire_at)
WHERE t.id = v.id
"""

# Both writes of a claim in one statement (one round trip): the fires, and the triggers
# advanced. A data-modifying CTE runs to completion whether or not it is read.
INSERT_FIRES_AND_ADVANCE = (
    "WITH advanced AS (" + ADVANCE_TRIGGERS.strip() + ")\n" + INSERT_FIRES.strip()
)

# Statements with %b placeholders bind their parameters server side in binary: run them
# with binary_cursor().

# Pending executions (manual runs, reruns, retries, recoveries) whose time has come,
# locked with SKIP LOCKED so each is handed to exactly one node; the node then takes the
# ones it can start (TAKE_PENDING) and leaves the rest, unlocked at commit, to others.
# Uses execution_pending_idx.
SELECT_PENDING = """
SELECT p.id, j.executor, p.job_id FROM jobs_execution p
JOIN jobs_job j ON j.id = p.job_id
WHERE p.state = 'pending' AND p.run_after <= now() AND (%s OR j.executor = 'celery')
ORDER BY p.run_after
LIMIT %s
FOR UPDATE OF p SKIP LOCKED
"""

# The rows were locked by SELECT_PENDING in the same transaction. Those the node starts
# at once are recorded running (the claim confirms their start), the others dispatched.
TAKE_PENDING = """
UPDATE jobs_execution e
SET state = CASE WHEN e.id = ANY(%(start)s) THEN 'running' ELSE 'dispatched' END,
    node = %(node)s, dispatched_at = now(),
    started_at = CASE WHEN e.id = ANY(%(start)s) THEN clock_timestamp() END,
    fence = CASE WHEN e.id = ANY(%(start)s) THEN nextval('jobs_execution_fence_seq') END
WHERE e.id = ANY(%(ids)s) AND e.state = 'pending'
RETURNING e.id, e.job_id, e.trigger_id, e.scheduled_for, e.state, e.attempt, e.args, e.kwargs,
          e.fence
"""

# Ownership before a run starts: a node hands a claimed run to a thread only once this
# UPDATE has returned its id. The node guard fails when the run is no longer this node's
# (it was declared dead and the run went back to pending, maybe to another node), the
# state guard when something ended it first (abandoned, cancelled): the row lock orders
# this statement and theirs, so whichever commits first wins and the other sees it.
# 'running' is accepted too: runs this node claimed as running but has not started (it
# re-checks them after a pause), and runs whose earlier confirmation committed without
# the answer reaching the node.
# Uses the primary key only: the guard is wrapped in IS TRUE, which no index condition
# can use. Written plainly, PostgreSQL may read the rows by node through
# execution_unfinished_idx, and with statistics gathered while the node had few
# unfinished runs it did: every statement read all the node's queued celery runs.
CONFIRM_START = """
UPDATE jobs_execution e
SET state = 'running', started_at = clock_timestamp(),
    fence = nextval('jobs_execution_fence_seq')
WHERE e.id = ANY(%b) AND (e.node = %b AND e.state IN ('dispatched', 'running')) IS TRUE
RETURNING e.id, e.fence
"""

JOB_SETTINGS = """
SELECT id, name, target, timeout, max_attempts, retry_backoff, recover, concurrency_policy,
       executor, celery_task, queue
FROM jobs_job WHERE id = ANY(%s)
"""

# Results are written in batches, with times computed by the database from how long
# ago (by the node's monotonic clock) each run started and finished: database time
# without a round trip per event. The state and node guard means a run that was
# already declared timed out or abandoned (its node thought dead) is never overwritten.
# The guard is written as in CONFIRM_START: the rows are found by the primary key (with
# sequential scans off, as on nodes' and workers' connections: jobs.reconnect).
RECORD_RESULTS = """
UPDATE jobs_execution e
SET state = v.state,
    result = v.result,
    started_at = CASE WHEN v.started_ago IS NULL THEN NULL ELSE COALESCE(
        e.started_at, clock_timestamp() - make_interval(secs => v.started_ago)) END,
    finished_at = CASE WHEN v.finished_ago IS NULL THEN NULL
                       ELSE clock_timestamp() - make_interval(secs => v.finished_ago) END,
    error = v.error,
    traceback = v.traceback,
    note = CASE WHEN v.note = '' THEN e.note WHEN e.note = '' THEN v.note
                ELSE e.note || E'\n' || v.note END
FROM unnest(%b::bigint[], %b::text[], %b::float8[], %b::float8[], %b::text[], %b::text[],
            %b::text[], %b::jsonb[])
     AS v(id, state, started_ago, finished_ago, error, traceback, note, result)
WHERE e.id = v.id AND (e.node = %b AND e.state IN ('dispatched', 'running')) IS TRUE
RETURNING e.id
"""

# The same for one result (a Celery worker's): a row of scalars instead of arrays. The
# prepared statement's generic plan cannot know how long the arrays are and judged the
# worker's one-element writes by many rows: PostgreSQL kept planning them on every run.
RECORD_ONE_RESULT = RECORD_RESULTS.replace(
    """unnest(%b::bigint[], %b::text[], %b::float8[], %b::float8[], %b::text[], %b::text[],
            %b::text[], %b::jsonb[])""",
    """(SELECT %b::bigint, %b::text, %b::float8, %b::float8, %b::text, %b::text, %b::text,
             %b::jsonb)""",
)

# What a run reported while it went on, written with the recorder's next batch. Log
# lines are numbered by the run itself; a batch retried after a lost answer adds nothing.
INSERT_LOG_LINES = """
INSERT INTO jobs_executionlogline (execution_id, seq, at, level, message)
SELECT v.id, v.seq, clock_timestamp() - make_interval(secs => v.ago), v.level, v.message
FROM unnest(%s::bigint[], %s::int[], %s::float8[], %s::text[], %s::text[])
     AS v(id, seq, ago, level, message)
ON CONFLICT (execution_id, seq) DO NOTHING
"""

# The latest progress of runs still this owner's. Only unindexed columns change. The guard
# is in IS TRUE as in CONFIRM_START: the rows are found by the primary key, not by reading
# all of the owner's unfinished runs.
RECORD_PROGRESS = """
UPDATE jobs_execution e
SET progress_done = v.done, progress_total = v.total, progress_message = v.message,
    progress_at = clock_timestamp() - make_interval(secs => v.ago)
FROM unnest(%s::bigint[], %s::float8[], %s::float8[], %s::text[], %s::float8[])
     AS v(id, done, total, message, ago)
WHERE e.id = v.id AND (e.node = %s AND e.state = 'running') IS TRUE
"""

INSERT_EVENTS = """
INSERT INTO jobs_executionevent (execution_id, at, kind, actor, message)
SELECT v.id, clock_timestamp() - make_interval(secs => v.ago), v.kind, v.actor, v.message
FROM unnest(%s::bigint[], %s::float8[], %s::text[], %s::text[], %s::text[])
     AS v(id, ago, kind, actor, message)
"""

# The first loss of a run's job lock is kept on the execution (the events say the rest).
MARK_LOCK_LOST = """
UPDATE jobs_execution SET lock_lost_at = clock_timestamp()
WHERE id = ANY(%s) AND lock_lost_at IS NULL
"""

# Tells the node or worker running execution N (the payload) that it has news: a cancel
# request, or its job lock was force released. They also poll, so a lost NOTIFY only
# delays the news to the next heartbeat.
RUN_SIGNAL_CHANNEL = "jobs_run_signal"
NOTIFY_RUN_SIGNAL = f"SELECT pg_notify('{RUN_SIGNAL_CHANNEL}', %s)"

# A node's running runs that were asked to stop or lost their job lock (force released
# by an operator): the node tells the jobs (jobs.context). Uses execution_unfinished_idx.
WATCH_RUNS = """
SELECT id, cancel_requested_at IS NOT NULL, cancel_requested_by, cancel_reason,
       lock_lost_at IS NOT NULL
FROM jobs_execution
WHERE node = %s AND state = 'running'
  AND (cancel_requested_at IS NOT NULL OR lock_lost_at IS NOT NULL)
"""

# Runs asked to stop that have not, past the grace: recorded cancelled now. The owner's
# late result is refused by RECORD_RESULTS's state guard. Uses execution_unfinished_idx.
CANCEL_OVERDUE = """
UPDATE jobs_execution e
SET state = 'cancelled', finished_at = now(),
    error = format('cancelled by %%s: %%s (the run did not stop within %%ss of the request)',
                   e.cancel_requested_by, e.cancel_reason, %(grace)s::float8)
FROM jobs_job j
WHERE j.id = e.job_id AND e.state = 'running'
  AND e.cancel_requested_at < now() - make_interval(secs => %(grace)s)
RETURNING e.id, j.executor, e.node
"""

# Each retry is its own execution, linked to the first attempt, pending until its
# backoff has passed since the failed attempt finished (database time).
INSERT_RETRIES = """
INSERT INTO jobs_execution
    (job_id, trigger_id, scheduled_for, origin, state, attempt, args, kwargs, node,
     retry_of_id, requested_by_id, created_at, run_after, error, traceback, note)
SELECT e.job_id, e.trigger_id, e.scheduled_for, 'retry', 'pending', e.attempt + 1,
       e.args, e.kwargs, '', COALESCE(e.retry_of_id, e.id), e.requested_by_id,
       now(), COALESCE(e.finished_at, now()) + make_interval(secs => v.delay), '', '',
       format('attempt %%s of %%s, after %%ss backoff', e.attempt + 1, v.max_attempts,
              round(v.delay::numeric, 1))
FROM unnest(%s::bigint[], %s::float8[], %s::int[]) AS v(id, delay, max_attempts)
JOIN jobs_execution e ON e.id = v.id
"""

# Runs this node claimed but never started (it is stopping, or the claim's answer was
# lost with the connection) go back to pending for any node; the node guard keeps it
# from touching anything it no longer owns. Only the node knows these never started, so
# it names them: 'running' rows among them were claimed as running but not yet begun.
RETURN_TO_PENDING = """
UPDATE jobs_execution
SET state = 'pending', node = '', dispatched_at = NULL, started_at = NULL
WHERE id = ANY(%s) AND node = %s AND state IN ('dispatched', 'running')
"""

# Unfinished executions of nodes that died (or of this node, for runs still going at
# the end of its shutdown grace) are abandoned; jobs that ask for recovery get a new
# pending execution linked to the abandoned one.
ABANDON_EXECUTIONS = """
WITH abandoned AS (
    UPDATE jobs_execution
    SET state = 'abandoned', finished_at = now(), error = %s
    WHERE node = ANY(%s) AND state IN ('dispatched', 'running')
      AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))
      AND NOT (state = 'dispatched' AND published_at IS NOT NULL)
    RETURNING id, job_id, trigger_id, scheduled_for, attempt, args, kwargs, node
)
INSERT INTO jobs_execution
    (job_id, trigger_id, scheduled_for, origin, state, attempt, args, kwargs, node,
     rerun_of_id, created_at, run_after, error, traceback, note)
SELECT a.job_id, a.trigger_id, a.scheduled_for, 'recovery', 'pending', a.attempt,
       a.args, a.kwargs, '', a.id, now(), now(), '', '',
       format('recovers #%%s, abandoned by %%s', a.id, a.node)
FROM abandoned a JOIN jobs_job j ON j.id = a.job_id
WHERE j.recover
RETURNING rerun_of_id
"""

# Celery runs: the row was committed as dispatched before the message was published;
# this marks the ones whose publish went through. Until then, a node's death returns them
# to pending (below) and another node publishes them: nothing is lost.
# Whatever state the row has reached by now (a fast worker may already have run it), its
# message did go out.
MARK_PUBLISHED = """
UPDATE jobs_execution SET published_at = now()
WHERE id = ANY(%s) AND published_at IS NULL
"""

# A message published again restarts the wait before the next republish. (IS TRUE: by the
# primary key, as in CLAIM_ON_WORKER.)
MARK_REPUBLISHED = """
UPDATE jobs_execution SET published_at = now()
WHERE id = ANY(%s) AND (state = 'dispatched') IS TRUE
"""

OWN_UNPUBLISHED = """
SELECT e.id, e.job_id, e.trigger_id, e.scheduled_for, e.state, e.attempt, e.args, e.kwargs,
       e.fence
FROM jobs_execution e JOIN jobs_job j ON j.id = e.job_id
WHERE e.node = %s AND e.state = 'dispatched' AND e.published_at IS NULL
  AND j.executor = 'celery'
"""

# A dead (or restarted) node's runs that never started go back to pending, whatever the
# job, so another node runs them: inline runs still dispatched (a run starts only after
# CONFIRM_START moved it to running) and celery runs never published. Must run before
# ABANDON_EXECUTIONS in the same transaction. Uses execution_unfinished_idx.
RETURN_UNSTARTED_TO_PENDING = """
UPDATE jobs_execution SET state = 'pending', node = '', dispatched_at = NULL
WHERE node = ANY(%s) AND state = 'dispatched' AND published_at IS NULL
"""

# A worker heartbeats the execution it runs; one silent for longer than the timeout
# (database time) lost its worker. Locked here, then abandoned (and recovered where the
# job asks) by ABANDON_EXECUTIONS in the same transaction; SKIP LOCKED passes over a run
# whose worker is writing its result right now. Only worker-run executions have a
# heartbeat_at. Uses execution_unfinished_idx.
SILENT_EXECUTIONS = """
SELECT id, node FROM jobs_execution
WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %s)
FOR UPDATE SKIP LOCKED
"""

# Published messages that no worker claimed for too long (lost by the broker) are
# published again; the worker's claim from `dispatched` makes a duplicate harmless.
STALE_PUBLISHED = """
SELECT e.id, j.queue, j.timeout FROM jobs_execution e JOIN jobs_job j ON j.id = e.job_id
WHERE e.state = 'dispatched' AND e.published_at < now() - make_interval(secs => %s)
ORDER BY e.published_at LIMIT 1000
"""

# Celery workers (jobs/worker.py).
# The run-once gate: only one delivery moves the row out of `dispatched`. With `adopt`, a
# worker retrying after its connection dropped also takes back a row its own lost claim
# moved to running (same worker id; the worker checks it is not running it already).
# The guard is wrapped in IS TRUE as in CONFIRM_START, so that the row is found by the
# primary key. Written plainly, it let PostgreSQL read execution_unfinished_idx whole,
# which statistics from a quiet moment say is empty: with a backlog of published runs,
# every claim read all of them (2,000 rows for one).
CLAIM_ON_WORKER = """
UPDATE jobs_execution e
SET state = 'running', node = %(worker)s, heartbeat_at = now(),
    started_at = CASE WHEN e.state = 'dispatched' THEN clock_timestamp() ELSE e.started_at END,
    fence = CASE WHEN e.state = 'dispatched' THEN nextval('jobs_execution_fence_seq')
                 ELSE e.fence END
FROM jobs_job j
WHERE e.id = %(id)s AND j.id = e.job_id
  AND (e.state = 'dispatched' OR (%(adopt)s AND e.state = 'running' AND e.node = %(worker)s))
      IS TRUE
RETURNING e.id, e.job_id, e.trigger_id, e.scheduled_for, e.attempt, e.args, e.kwargs,
          j.id, j.name, j.target, j.timeout, j.max_attempts, j.retry_backoff, j.recover,
          j.concurrency_policy, j.executor, j.celery_task, j.queue, e.fence
"""

# Only the worker running it may heartbeat it, and only while it is running; the answer
# also says whether the run was asked to stop or lost its job lock.
HEARTBEAT_EXECUTION = """
UPDATE jobs_execution SET heartbeat_at = now()
WHERE id = %s AND node = %s AND state = 'running'
RETURNING cancel_requested_at IS NOT NULL, cancel_requested_by, cancel_reason,
          lock_lost_at IS NOT NULL
"""

# How long an idle node may sleep: until the earliest due trigger or pending execution.
# Computed by the database so a node's own clock never matters. The same round trip
# tells whether any job runs on Celery: a node whose threads are busy still claims those
# (publishing needs no thread), see claim_due_triggers.
SECONDS_UNTIL_DUE = """
SELECT extract(epoch FROM LEAST(
    (SELECT t.next_fire_at FROM jobs_trigger t JOIN jobs_job j ON j.id = t.job_id
     WHERE NOT t.paused AND t.next_fire_at IS NOT NULL AND NOT j.paused
     ORDER BY t.next_fire_at LIMIT 1),
    (SELECT p.run_after FROM jobs_execution p
     WHERE p.state = 'pending'
     ORDER BY p.run_after LIMIT 1)
) - clock_timestamp()),
EXISTS (SELECT 1 FROM jobs_job WHERE executor = 'celery')
"""

# After a lost connection: this node's unfinished rows, to find claims that committed
# although their answer never arrived. Published celery runs belong to their worker.
# Uses execution_unfinished_idx.
OWN_UNFINISHED = """
SELECT id FROM jobs_execution
WHERE node = %s AND state IN ('dispatched', 'running') AND published_at IS NULL
"""


@dataclass
class Run:
    """One execution handed to this node, with what it needs to run."""

    id: int
    job_id: int
    trigger_id: int | None
    scheduled_for: datetime
    attempt: int
    args: list
    kwargs: dict
    job: JobSettings | None = None
    #: As claimed: "running" (the claim confirmed its start) or "dispatched" (claimed
    #: further ahead of a thread, or for Celery: confirm_start before running it).
    state: str = "dispatched"
    #: The fencing token of this start (see Execution.fence); set once the start is confirmed.
    fence: int | None = None


@dataclass(frozen=True)
class JobSettings:
    id: int
    name: str
    target: str
    timeout: int | None
    max_attempts: int
    retry_backoff: float
    recover: bool
    concurrency_policy: str
    executor: str = "inline"
    celery_task: str = ""
    queue: str = "scheduler"

    @property
    def lock_name(self) -> str:
        return job_lock_name(self.id)

    @property
    def lock_lease(self) -> float:
        """Seconds of the job lock's lease for a `forbid` run (kept alive while it runs)."""
        return self.timeout + 5 if self.timeout else settings.SCHEDULER_JOB_LOCK_LEASE


@dataclass
class Claimed:
    runs: list[Run] = field(default_factory=list)
    triggers: int = 0
    fired: int = 0
    skipped: int = 0
    coalesced: int = 0
    #: Missed fire times run anyway (policy fire_all); for the node's misfire metric.
    caught_up: int = 0
    #: Due triggers locked but left for later (or another node): no thread to run them.
    left: int = 0
    #: The claim transaction's now(): a fire's lag is this minus its scheduled_for.
    claimed_at: datetime | None = None


def _load_timestamps_in_c(cursor) -> None:
    """Load timestamptz with psycopg's own loader (C) on this psycopg cursor: Django's is a
    pure-Python subclass of it that only sets the connection's time zone, UTC, which the
    session's TimeZone (UTC, set by Django) gives as well. 5x faster; a claim loads
    hundreds of timestamps."""
    cursor.adapters.register_loader("timestamptz", TimestamptzLoader)


@contextlib.contextmanager
def binary_cursor():
    """A psycopg cursor on this thread's Django connection (its transaction, Django's errors)
    that binds the %b parameters of the statements written for it server side, in binary.

    Django's cursor binds client side, quoting every element of every array into the SQL
    text in Python: 0.8 ms for a 100-fire claim's arrays, against 0.2 ms in binary. Lists
    must not mix types (ints with floats): binary arrays have one element type.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, PsycopgCursor(connection.connection) as cursor:
        _load_timestamps_in_c(cursor)
        yield cursor


def _ages(values: list[float | None], waited: list[float]) -> list[float | None]:
    """Seconds ago now, of times that were ``values`` seconds ago ``waited`` seconds ago;
    floats for a float8[] parameter bound in binary (an int among floats is refused)."""
    return [None if v is None else float(v) + w for v, w in zip(values, waited, strict=True)]


class DueTrigger(NamedTuple):
    """A due trigger as SELECT_DUE_TRIGGERS returns it (its first twelve columns): what
    schedule.plan_fires reads. A tuple, since a claim builds a hundred of them."""

    id: int
    job_id: int
    kind: str
    cron: str
    timezone: str
    interval: int | None
    run_at: datetime | None
    start_at: datetime | None
    end_at: datetime | None
    misfire_policy: str
    misfire_grace: int | None
    next_fire_at: datetime


def decode_json(value):
    # Django's psycopg backend leaves jsonb undecoded for JSONField to decode.
    if value == "[]":  # most runs' args and kwargs: no parser for them (claim path)
        return []
    if value == "{}":
        return {}
    return json.loads(value) if isinstance(value, str) else value


def _runs_from_rows(rows) -> list[Run]:
    return [
        Run(id=r[0], job_id=r[1], trigger_id=r[2], scheduled_for=r[3], attempt=r[5],
            args=decode_json(r[6]), kwargs=decode_json(r[7]), state=r[4], fence=r[8])
        for r in rows
        if r[4] in ("dispatched", "running")
    ]  # fmt: skip


def _attach_job_settings(cursor, runs: list[Run]) -> None:
    if not runs:
        return
    cursor.execute(JOB_SETTINGS, [sorted({r.job_id for r in runs})])
    jobs = {row[0]: JobSettings(*row) for row in cursor.fetchall()}
    for run in runs:
        run.job = jobs[run.job_id]


class _Fires:
    """The rows INSERT_FIRES takes, built up trigger by trigger."""

    def __init__(self) -> None:
        self.job_ids: list[int] = []
        self.trigger_ids: list[int] = []
        self.times: list[datetime] = []
        self.states: list[str] = []
        self.notes: list[str] = []

    def add(self, trigger, when: datetime, state: str, note: str) -> None:
        self.job_ids.append(trigger.job_id)
        self.trigger_ids.append(trigger.id)
        self.times.append(when)
        self.states.append(state)
        self.notes.append(note)

    def params(self, node_id: str) -> list:
        return [node_id, self.job_ids, self.trigger_ids, self.times, self.states, self.notes]


@dataclass
class StartPlan:
    """Which inline runs a claim records running: the claim is then their start confirmation
    (no second write), which it can be only for runs the node is about to start.

    First any runs for free threads; then runs of jobs the node knows to be quick, while
    their expected durations fit in ``budget``: the thread time the node expects to have
    within SCHEDULER_START_WINDOW, after the runs already queued. The rest are recorded
    dispatched and confirmed when a thread takes them (CONFIRM_START).
    """

    free: int
    budget: float = 0.0
    #: Each job's typical run duration, as the node has seen it.
    job_seconds: dict[int, float] = field(default_factory=dict)

    def take(self, job_id: int) -> bool:
        """Whether the next claimed run of this job is recorded running."""
        if self.free > 0:
            self.free -= 1
            return True
        expected = self.job_seconds.get(job_id)
        if expected is None or expected > self.budget:
            return False
        self.budget -= expected
        return True


def claim_due_triggers(
    node_id: str, limit: int, misfire_chunk: int, inline_room: int, starts: StartPlan
) -> Claimed:
    """Lock due triggers, record their fires (and misfires) and advance them, in one transaction.

    At most ``inline_room`` fires of inline jobs are taken (the node claims only what it
    can start soon), those ``starts`` takes recorded running; celery fires are
    not limited by the node's threads. With no inline room, only celery jobs' triggers
    are looked at. Due triggers beyond the room are left as they are (their row locks go
    with the commit) for a node with free threads.
    """
    claimed = Claimed()
    with transaction.atomic(), connection.cursor() as cursor:
        _load_timestamps_in_c(cursor.cursor)
        if inline_room > 0:
            cursor.execute(SELECT_DUE_TRIGGERS, [limit])
        else:
            cursor.execute(SELECT_CELERY_JOBS)
            celery_jobs = [row[0] for row in cursor.fetchall()]
            if not celery_jobs:
                return claimed
            cursor.execute(SELECT_DUE_CELERY_TRIGGERS, [celery_jobs, limit])
        rows = cursor.fetchall()
        if not rows:
            return claimed
        fires = _Fires()
        advance_ids, advance_next, advance_last = [], [], []
        jobs = {}
        for row in rows:
            trigger = DueTrigger._make(row[:12])
            # Built once per job: a claim's hundred fires are mostly of a few jobs.
            job = jobs.get(row[12])
            if job is None:
                job = jobs[row[12]] = JobSettings(*row[12:23])
            now = row[-1]
            inline = job.executor != "celery"
            if inline and inline_room <= 0:
                claimed.left += 1
                continue
            plan = schedule.plan_fires(trigger, now, misfire_chunk)
            if inline:
                plan = plan.with_at_most(inline_room)
                inline_room -= len(plan.fire)
            note = ""
            if plan.coalesced:
                note = f"misfire: coalesced {plan.coalesced} missed fire time(s) into this run"
            for when in plan.skip:
                fires.add(trigger, when, "skipped",
                          f"misfire: missed by more than the {trigger.misfire_grace}s grace "
                          "(policy skip)")  # fmt: skip
            for when in plan.fire:
                state = "running" if inline and starts.take(job.id) else "dispatched"
                fires.add(trigger, when, state, note)
            advance_ids.append(trigger.id)
            advance_next.append(plan.next_fire_at)
            advance_last.append(max(plan.fire) if plan.fire else None)
            claimed.coalesced += plan.coalesced
            if trigger.misfire_policy == "fire_all":
                late = now - timedelta(seconds=trigger.misfire_grace or 0)
                claimed.caught_up += sum(1 for when in plan.fire if when < late)
        claimed.triggers = len(advance_ids)
        claimed.claimed_at = rows[0][-1]
        advance = [advance_ids, advance_next, advance_last]
        with binary_cursor() as cursor:
            if fires.job_ids:
                cursor.execute(INSERT_FIRES_AND_ADVANCE, advance + fires.params(node_id))
                inserted = cursor.fetchall()
                claimed.runs = _runs_from_rows(inserted)
                claimed.fired = len(claimed.runs)
                claimed.skipped = sum(1 for r in inserted if r[4] == "skipped")
            elif advance_ids:  # e.g. triggers whose window ended: nothing to record
                cursor.execute(ADVANCE_TRIGGERS, advance)
        # The job's settings came with the triggers (no JOB_SETTINGS round trip).
        for run in claimed.runs:
            run.job = jobs[run.job_id]
    return claimed


def claim_on_worker(execution_id: int, worker: str, adopt: bool = False) -> Run | None:
    """Take a dispatched execution for a Celery worker, or None if it is not waiting."""
    with binary_cursor() as cursor:
        cursor.execute(CLAIM_ON_WORKER, {"id": execution_id, "worker": worker, "adopt": adopt})
        row = cursor.fetchone()
    if row is None:
        return None
    return Run(id=row[0], job_id=row[1], trigger_id=row[2], scheduled_for=row[3],
               attempt=row[4], args=decode_json(row[5]), kwargs=decode_json(row[6]),
               job=JobSettings(*row[7:18]), state="running", fence=row[18])  # fmt: skip


def claim_pending_executions(
    node_id: str, limit: int, inline_room: int, starts: StartPlan
) -> tuple[list[Run], int]:
    """Hand runnable pending executions to this node, within its room (as claim_due_triggers).

    Returns the runs and how many runnable ones were left for lack of room.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SELECT_PENDING, [inline_room > 0, limit])
        take, start, left = [], [], 0
        for execution_id, executor, job_id in cursor.fetchall():
            if executor == "celery":
                take.append(execution_id)
            elif inline_room > 0:
                take.append(execution_id)
                inline_room -= 1
                if starts.take(job_id):
                    start.append(execution_id)
            else:
                left += 1
        if not take:
            return [], left
        cursor.execute(TAKE_PENDING, {"ids": take, "start": start, "node": node_id})
        runs = _runs_from_rows(cursor.fetchall())
        _attach_job_settings(cursor, runs)
    return runs, left


def heartbeat_execution(execution_id: int, worker: str) -> tuple[bool, str, str, bool] | None:
    """Refresh a worker-run execution's heartbeat; None once the worker no longer owns it,
    else (cancel requested, by whom, why, lock lost)."""
    with connection.cursor() as cursor:
        cursor.execute(HEARTBEAT_EXECUTION, [execution_id, worker])
        return cursor.fetchone()


def confirm_start(node_id: str, execution_ids: list[int]) -> dict[int, int]:
    """Move claimed runs to running while this node still owns them.

    Returns the ones it may start, with their fencing tokens.
    """
    if not execution_ids:
        return {}
    with binary_cursor() as cursor:
        cursor.execute(CONFIRM_START, [execution_ids, node_id])
        return dict(cursor.fetchall())


@dataclass
class Reports:
    """What runs reported while they went on, for the recorder's next write.

    Times are this process's monotonic clock, turned into database time when written.
    """

    #: (execution id, seq, at, level, message)
    log_lines: list[tuple[int, int, float, str, str]] = field(default_factory=list)
    #: (execution id, done, total, message, at)
    progress: list[tuple[int, float, float | None, str, float]] = field(default_factory=list)
    #: (execution id, at, kind, actor, message)
    events: list[tuple[int, float, str, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.log_lines or self.progress or self.events)

    def extend(self, other: Reports) -> None:
        self.log_lines += other.log_lines
        self.progress += other.progress
        self.events += other.events


@dataclass(frozen=True)
class Result:
    """How one run ended, as seen by the node that ran it."""

    execution_id: int
    state: str  # succeeded | failed | timed_out | skipped
    started_ago: float | None  # None: it never started (skipped)
    finished_ago: float | None
    error: str = ""
    traceback: str = ""
    retry_delay: float | None = None
    max_attempts: int = 1
    note: str = ""
    #: A job lock whose release failed with the connection: released in the transaction
    #: that records this result.
    release: Lease | None = None
    #: What the target returned, as JSON text (None: nothing kept).
    result: str | None = None
    #: What the run reported last (its final log lines and progress), written with it.
    reports: Reports | None = None


def record_reports(owner: str, reports: Reports) -> None:
    """Write what runs reported (log lines, progress, events); call inside a transaction."""
    now = time.monotonic()
    lines = [(i, seq, now - at, level, text) for i, seq, at, level, text in reports.log_lines]
    progress = [(i, done, total, text, now - at) for i, done, total, text, at in reports.progress]
    events = [(i, now - at, kind, actor, text) for i, at, kind, actor, text in reports.events]
    with connection.cursor() as cursor:
        if lines:
            cursor.execute(INSERT_LOG_LINES, _columns(lines))
        if progress:
            cursor.execute(RECORD_PROGRESS, [*_columns(progress), owner])
        if events:
            cursor.execute(INSERT_EVENTS, _columns(events))
            lost = sorted({e[0] for e in reports.events if e[2] == "lock_lost"})
            if lost:
                cursor.execute(MARK_LOCK_LOST, [lost])


def _columns(rows: list[tuple]) -> list[list]:
    """Rows as columns, for unnest()."""
    return [list(column) for column in zip(*rows, strict=True)]


def watch_runs(node_id: str) -> list[tuple[int, bool, str, str, bool]]:
    """This node's running runs asked to stop or that lost their job lock."""
    with connection.cursor() as cursor:
        cursor.execute(WATCH_RUNS, [node_id])
        return cursor.fetchall()


def cancel_overdue(grace_seconds: float) -> list[tuple[int, str, str]]:
    """Record as cancelled the runs that ignored a cancel request for longer than the
    grace; returns (id, executor, owner) of each. Call inside a transaction."""
    with connection.cursor() as cursor:
        cursor.execute(CANCEL_OVERDUE, {"grace": grace_seconds})
        return cursor.fetchall()


def record_results(
    node_id: str, results: list[Result], waited: list[float] | None = None
) -> set[int]:
    """Write a batch of results, each made ``waited`` seconds ago (default: just now);
    return the ids whose write took effect."""
    if not results:
        return set()
    waited = waited or [0.0] * len(results)
    # A batch with no retry to queue is one statement, atomic by itself: outside a
    # transaction it costs one round trip, not three (BEGIN, UPDATE, COMMIT). Inside one
    # (the recorder's, with reports or job locks to write), no savepoint: a failure here
    # fails the caller's transaction anyway, and SAVEPOINT and RELEASE would cost two more.
    retrying = any(r.retry_delay is not None for r in results)
    atomic = transaction.atomic(savepoint=False) if retrying else contextlib.nullcontext()
    with atomic:
        columns = [
            [r.execution_id for r in results],
            [r.state for r in results],
            _ages([r.started_ago for r in results], waited),
            _ages([r.finished_ago for r in results], waited),
            [r.error for r in results],
            [r.traceback for r in results],
            [r.note for r in results],
            [r.result for r in results],
        ]
        with binary_cursor() as cursor:
            if len(results) == 1:
                cursor.execute(RECORD_ONE_RESULT, [column[0] for column in columns] + [node_id])
            else:
                cursor.execute(RECORD_RESULTS, [*columns, node_id])
            applied = {row[0] for row in cursor.fetchall()}
        retries = [r for r in results if r.retry_delay is not None and r.execution_id in applied]
        if retries:
            with connection.cursor() as cursor:
                cursor.execute(
                    INSERT_RETRIES,
                    [
                        [r.execution_id for r in retries],
                        [r.retry_delay for r in retries],
                        [r.max_attempts for r in retries],
                    ],
                )
    return applied


def return_to_pending(node_id: str, execution_ids: list[int]) -> None:
    """Give back runs this node claimed and never started, for any node to run."""
    if execution_ids:
        with connection.cursor() as cursor:
            cursor.execute(RETURN_TO_PENDING, [execution_ids, node_id])


def abandon_executions(node_ids: list[str], reason: str, only_ids: list[int] | None = None) -> int:
    """Abandon the nodes' unfinished executions, queueing recoveries; return how many recovered."""
    with connection.cursor() as cursor:
        cursor.execute(ABANDON_EXECUTIONS, [reason, node_ids, only_ids, only_ids])
        return len(cursor.fetchall())


def seconds_until_due() -> tuple[float | None, bool]:
    """Seconds until the next due trigger or pending execution (negative if overdue), and
    whether any job runs on Celery."""
    with connection.cursor() as cursor:
        cursor.execute(SECONDS_UNTIL_DUE)
        value, celery_jobs = cursor.fetchone()
    return (None if value is None else float(value)), celery_jobs


def own_unfinished(node_id: str) -> list[int]:
    """Ids of this node's unfinished executions (not counting published celery runs)."""
    with connection.cursor() as cursor:
        cursor.execute(OWN_UNFINISHED, [node_id])
        return [row[0] for row in cursor.fetchall()]


def mark_published(execution_ids: list[int]) -> None:
    if execution_ids:
        with connection.cursor() as cursor:
            cursor.execute(MARK_PUBLISHED, [execution_ids])


def mark_republished(execution_ids: list[int]) -> None:
    if execution_ids:
        with connection.cursor() as cursor:
            cursor.execute(MARK_REPUBLISHED, [execution_ids])


def own_unpublished(node_id: str) -> list[Run]:
    """This node's celery runs whose publish failed (the broker was down)."""
    with connection.cursor() as cursor:
        cursor.execute(OWN_UNPUBLISHED, [node_id])
        runs = _runs_from_rows(cursor.fetchall())
        _attach_job_settings(cursor, runs)
    return runs


def return_unstarted_to_pending(node_ids: list[str]) -> int:
    """Runs these (dead or restarted) nodes claimed but never started go back to pending."""
    with connection.cursor() as cursor:
        cursor.execute(RETURN_UNSTARTED_TO_PENDING, [node_ids])
        return cursor.rowcount


def abandon_silent_executions(timeout_seconds: float) -> tuple[list[int], int]:
    """Abandon worker-run executions whose heartbeat stopped, queueing recoveries.

    Returns (their ids, how many recoveries). Call inside a transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute(SILENT_EXECUTIONS, [timeout_seconds])
        rows = cursor.fetchall()
    if not rows:
        return [], 0
    ids = [execution_id for execution_id, _ in rows]
    workers = sorted({worker for _, worker in rows})
    recovered = abandon_executions(workers, "abandoned: its worker stopped heartbeating", ids)
    return ids, recovered


def stale_published(after_seconds: float) -> list[tuple[int, str, int | None]]:
    """Published executions no worker has claimed for ``after_seconds``."""
    with connection.cursor() as cursor:
        cursor.execute(STALE_PUBLISHED, [after_seconds])
        return cursor.fetchall()
