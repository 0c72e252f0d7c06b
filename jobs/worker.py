"""Running an execution on a Celery worker.

The node commits the execution (state ``dispatched``) before it publishes the message,
so a message always finds its row. Delivery is at least once (late acks); the run is
once: the worker claims the row with a conditional UPDATE from ``dispatched`` to
``running``, and a second delivery of the same message finds it running or finished and
runs nothing. While it runs, the worker heartbeats the row; if the worker dies, the
heartbeat goes stale and the leader marks the execution abandoned (and recovers it where
the job asks).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections, connection

from jobs import claims, context, registry
from jobs.claims import Result, Run
from jobs.retry import retry_delay
from jobs.secrets import resolve_secrets
from locks import leases

log = logging.getLogger("jobs.worker")


def worker_id(hostname: str | None = None) -> str:
    """This worker process's identity: what the dashboard shows as node and lock holder.

    ``hostname`` is Celery's name for the worker (``-n name@host``); the pid tells its
    pool processes apart.
    """
    return f"worker:{hostname or 'celery@' + socket.gethostname()}:{os.getpid()}"


class _Heartbeat(threading.Thread):
    def __init__(self, execution_id: int, worker: str):
        super().__init__(name=f"heartbeat:{execution_id}", daemon=True)
        self.execution_id = execution_id
        self.worker = worker
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.SCHEDULER_EXECUTION_HEARTBEAT):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(claims.HEARTBEAT_EXECUTION, [self.execution_id, self.worker])
                except Exception:  # a database hiccup: the next beat may succeed
                    log.exception("heartbeat of execution #%s failed", self.execution_id)
                    connection.close()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def run_execution(execution_id: int, hostname: str | None = None) -> str:
    """Run one execution on this worker; returns what happened (for logs and tests)."""
    worker = worker_id(hostname)
    close_old_connections()
    run = claims.claim_on_worker(execution_id, worker)
    if run is None:
        log.info("execution #%s is not waiting to run (a repeated delivery?): not running "
                 "it again", execution_id)  # fmt: skip
        return "not-claimed"
    job = run.job
    lease = None
    if job.concurrency_policy == "forbid":
        lease = leases.acquire(job.lock_name, worker, job.lock_lease, execution_id=run.id)
        if lease is None:
            _record(worker, Result(run.id, "skipped", None, 0.0,
                                   note=f"skipped: concurrency policy forbid; "
                                        f"{job.lock_name} is held"))  # fmt: skip
            return "skipped"
        keeper = leases.Keepalive(lease, job.lock_lease)
        keeper.start()
    heartbeat = _Heartbeat(run.id, worker)
    heartbeat.start()
    started = time.monotonic()
    state, error, tb = "succeeded", "", ""
    token = context.running_as(
        context.ExecutionContext(run.id, job.name, run.scheduled_for, run.attempt)
    )
    try:
        _call_target(run)
    except SoftTimeLimitExceeded:
        state, error = "timed_out", f"timed out after {job.timeout}s (Celery time limit)"
    except Exception as e:
        state, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
    finally:
        context.finished(token)
        heartbeat.stop()
        if lease is not None:
            keeper.stop()
            try:
                lease.release()
            except leases.LockLost as e:
                log.warning("job lock of execution #%s was lost while it ran: %s", run.id, e)
    ran_for = time.monotonic() - started
    delay = None
    if state != "succeeded":
        delay = retry_delay(run.attempt, job.max_attempts, job.retry_backoff)
    _record(worker, Result(run.id, state, ran_for, 0.0, error, tb, delay, job.max_attempts))
    return state


def _call_target(run: Run) -> None:
    args, kwargs = resolve_secrets(run.args, run.kwargs)
    if run.job.celery_task:
        # A task the workers know, by name: run here, in this worker, under this
        # execution's bookkeeping (one retry model: Celery's own retries are not used).
        from controlplane.celery import app

        task = app.tasks.get(run.job.celery_task)
        if task is None:
            raise LookupError(f"this worker knows no Celery task {run.job.celery_task!r}")
        task.apply(args=args, kwargs=kwargs, throw=True)
    else:
        registry.get_target(run.job.target).func(*args, **kwargs)


def _record(worker: str, result: Result) -> None:
    for attempt in range(5):
        try:
            claims.record_results(worker, [result])
            return
        except Exception:
            log.exception("could not record execution #%s (attempt %s)",
                          result.execution_id, attempt + 1)  # fmt: skip
            connection.close()
            time.sleep(0.5 * (attempt + 1))
