"""The Celery executor, node side: publish "run execution N" messages.

The execution row is already committed (state ``dispatched``) when this runs, so a
crash before or during publishing loses nothing: the unpublished rows go back to
pending (jobs.claims.RETURN_UNPUBLISHED_TO_PENDING) and another node publishes them.
The execution id is the Celery task id.
"""

from __future__ import annotations

import logging

from jobs.claims import Run

log = logging.getLogger("jobs.celery")

TASK = "jobs.run_execution"
# Seconds past the job's timeout (Celery's soft limit, which marks the run timed out)
# at which Celery kills the worker process outright.
HARD_LIMIT_MARGIN = 30


def publish(runs: list[Run]) -> list[int]:
    """Publish one message per run; returns the ids published (stops at a broker error)."""
    from controlplane.celery import app

    published = []
    try:
        with app.producer_or_acquire() as producer:
            for run in runs:
                app.send_task(TASK, args=[run.id], producer=producer, **_options(
                    run.id, run.job.queue, run.job.timeout))  # fmt: skip
                published.append(run.id)
    except Exception:
        log.exception("could not publish %s of %s celery run(s); they will be published again",
                      len(runs) - len(published), len(runs))  # fmt: skip
    return published


def republish(rows: list[tuple[int, str, int | None]]) -> list[int]:
    """Publish (id, queue, timeout) rows again; returns the ids published."""
    from controlplane.celery import app

    published = []
    try:
        with app.producer_or_acquire() as producer:
            for execution_id, queue, timeout in rows:
                app.send_task(TASK, args=[execution_id], producer=producer,
                              **_options(execution_id, queue, timeout))  # fmt: skip
                published.append(execution_id)
    except Exception:
        log.exception("could not publish celery runs again")
    return published


def _options(execution_id: int, queue: str, timeout: int | None) -> dict:
    options = {"task_id": str(execution_id), "queue": queue}
    if timeout:
        options["soft_time_limit"] = timeout
        options["time_limit"] = timeout + HARD_LIMIT_MARGIN
    return options


def terminate(execution_ids: list[int]) -> None:
    """Terminate the worker processes running these executions (cancelled past the grace).

    A revoke with terminate: the worker child running the task is killed, and a message
    not delivered yet is dropped. Best effort: a broker that is down is logged.
    """
    from controlplane.celery import app

    try:
        app.control.revoke([str(i) for i in execution_ids], terminate=True, signal="SIGKILL")
    except Exception:
        log.exception("could not ask the workers to terminate runs %s", execution_ids)
