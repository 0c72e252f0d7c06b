"""Pruning old execution history (run by the leader)."""

from __future__ import annotations

import threading
import time

from django.db import connection, transaction

# Executions deleted per statement. Each batch is its own short transaction, so pruning
# a million old rows never holds its row locks (or delays vacuum) for long, and the
# claims running meanwhile are not kept waiting (see the bench's scale section).
PRUNE_BATCH_SIZE = 5000
# The share of its time a prune spends deleting: after each batch it rests
# (1 / PRUNE_DUTY - 1) times as long as the batch took. A batch is CPU-bound (its COMMIT
# checks the foreign keys of every deleted row): unpaced, pruning a million rows held one
# core of the database server for its whole run. (The nodes' fire lag beside it did not
# measurably change either way on a 2-core development machine: README, Benchmark.)
PRUNE_DUTY = 0.5

# Deletes one batch of finished executions older than the retention, with their log
# lines and events. Links into the batch from newer rows (retries, reruns, lock rows) are
# cleared first; links between rows of the batch need no care, since the foreign keys are
# checked at commit.
PRUNE_BATCH = """
WITH old AS (
    SELECT id FROM jobs_execution
    WHERE created_at < now() - make_interval(days => %(days)s)
      AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'abandoned', 'skipped')
    ORDER BY created_at
    LIMIT %(batch)s
),
retries AS (
    UPDATE jobs_execution SET retry_of_id = NULL
    WHERE retry_of_id IN (SELECT id FROM old) AND id NOT IN (SELECT id FROM old)
),
reruns AS (
    UPDATE jobs_execution SET rerun_of_id = NULL
    WHERE rerun_of_id IN (SELECT id FROM old) AND id NOT IN (SELECT id FROM old)
),
held AS (
    UPDATE locks_lock SET execution_id = NULL WHERE execution_id IN (SELECT id FROM old)
),
log_lines AS (
    DELETE FROM jobs_executionlogline WHERE execution_id IN (SELECT id FROM old)
),
events AS (
    DELETE FROM jobs_executionevent WHERE execution_id IN (SELECT id FROM old)
)
DELETE FROM jobs_execution WHERE id IN (SELECT id FROM old)
"""


def prune_history(
    retention_days: int,
    batch: int = PRUNE_BATCH_SIZE,
    max_batches: int | None = None,
    duty: float = PRUNE_DUTY,
    stop: threading.Event | None = None,
) -> int:
    """Delete finished executions older than ``retention_days``, ``batch`` per statement,
    each statement in a transaction of its own and followed by a rest (see PRUNE_DUTY),
    until none is left, ``max_batches`` were deleted or ``stop`` is set. Returns how many
    were deleted. Call it outside a transaction: inside one, the batches would all commit
    together and hold every lock until then."""
    stop = stop or threading.Event()
    deleted = 0
    batches = 0
    while not stop.is_set():
        began = time.monotonic()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(PRUNE_BATCH, {"days": retention_days, "batch": batch})
            count = cursor.rowcount
        deleted += count
        batches += 1
        if count < batch or batches == max_batches:
            break
        # An Event's wait, not time.sleep: ``stop`` ends the rest at once.
        stop.wait((time.monotonic() - began) * (1 / duty - 1))
    return deleted


# The rollup's minute rows serve the last day's counts and a job's 24-hour charts, its
# hour rows the 7-day trends: each kind kept for its own retention (the bucket indexes).
PRUNE_MINUTE_ROLLUP = """
DELETE FROM jobs_minuterollup WHERE bucket < now() - make_interval(hours => %(hours)s)
"""
PRUNE_HOUR_ROLLUP = """
DELETE FROM jobs_hourrollup WHERE bucket < now() - make_interval(days => %(days)s)
"""


def prune_rollup(minute_hours: int, hour_days: int) -> int:
    """Delete run-rollup rows past their retention; returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(PRUNE_MINUTE_ROLLUP, {"hours": minute_hours})
        deleted = cursor.rowcount
        cursor.execute(PRUNE_HOUR_ROLLUP, {"days": hour_days})
        return deleted + cursor.rowcount
