"""Running an execution on a Celery worker.

The node commits the execution (state ``dispatched``) before it publishes the message,
so a message always finds its row. Delivery is at least once (late acks); the run is
once: the worker claims the row with a conditional UPDATE from ``dispatched`` to
``running``, and a second delivery of the same message finds it running or finished and
runs nothing. While it runs, the worker heartbeats the row; if the worker dies, the
heartbeat goes stale and the leader marks the execution abandoned (and recovers it where
the job asks).

Ownership before action, as on a node: the claim and each successful heartbeat renew the
worker's liveness lease on the run. A worker paused or cut off past it (the leader may
have abandoned the run meanwhile) asks the database before it starts the target, and
every write it makes afterwards (heartbeat, result, lock release) is guarded by its
ownership, so a worker that lost the run changes nothing. A lost connection at any step
is retried; the result is retried until the database answers, with the heartbeat going
on so that the run stays this worker's meanwhile.
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
from django.db import close_old_connections, transaction

from jobs import capture, claims, joblocks, metrics, registry
from jobs.claims import Result, Run
from jobs.execute import LiveRun, call_target, failure, live_run, outcome_result
from jobs.reconnect import CONNECTION_ERRORS, forget_connection, retry_on_disconnect
from jobs.recorder import REPORT_EVERY, write_results
from locks.liveness import LivenessLease, liveness_margin

log = logging.getLogger("jobs.worker")

# Executions this process is running now, so that a retried claim never adopts one of
# them (a threads pool may receive a duplicate delivery while the first is running).
_running_here: set[int] = set()
_running_lock = threading.Lock()


def worker_id(hostname: str | None = None) -> str:
    """This worker process's identity: what the dashboard shows as node and lock holder.

    ``hostname`` is Celery's name for the worker (``-n name@host``); the pid tells its
    pool processes apart.
    """
    return f"worker:{hostname or 'celery@' + socket.gethostname()}:{os.getpid()}"


def execution_lease() -> LivenessLease:
    timeout = settings.SCHEDULER_EXECUTION_TIMEOUT
    return LivenessLease(timeout, liveness_margin(timeout, settings.SCHEDULER_EXECUTION_HEARTBEAT))


class _Beat:
    """One run's heartbeat: its row kept fresh (and the lease renewed), cancel requests and
    a lost job lock passed on, what it logs and reports written about once a second."""

    def __init__(self, live: LiveRun, worker: str, lease: LivenessLease):
        self.live = live
        self.worker = worker
        self.lease = lease
        self.lost = False
        self.next_beat = time.monotonic() + REPORT_EVERY

    def report(self) -> None:
        now = time.monotonic()
        reports = self.live.reports(now)
        if reports:
            with transaction.atomic():
                claims.record_reports(self.worker, reports)
        if now < self.next_beat:
            return
        self.next_beat = now + settings.SCHEDULER_EXECUTION_HEARTBEAT
        beat = claims.heartbeat_execution(self.live.run.id, self.worker)
        if beat is None:
            self.lost = True
            self.lease.expire()
            log.warning("execution #%s is no longer this worker's (abandoned or cancelled "
                        "while it ran)", self.live.run.id)  # fmt: skip
            return
        self.lease.renew(now)
        cancel, by, reason, lock_lost = beat
        if cancel and not self.live.signals.cancel.is_set():
            self.live.signals.request_cancel(by, reason)
        if lock_lost:
            self.live.signals.lock_lost.set()


class _Heartbeats(threading.Thread):
    """The heartbeats of the runs going on in this worker process, on one thread that lives
    as long as the process: a thread started and joined per run cost a no-op task a fifth
    of its time (the start waits for the new thread to get the interpreter)."""

    def __init__(self):
        super().__init__(name="heartbeats", daemon=True)
        self.lock = threading.Lock()
        self.beats: dict[int, _Beat] = {}
        # Waited on, never set: unlike time.sleep, a timed Event wait survives a clock set
        # back (the skewed-clock tests run workers under libfaketime).
        self.tick = threading.Event()

    def add(self, beat: _Beat) -> None:
        with self.lock:
            self.beats[beat.live.run.id] = beat

    def remove(self, beat: _Beat) -> None:
        with self.lock:
            self.beats.pop(beat.live.run.id, None)

    def run(self) -> None:
        while True:
            self.tick.wait(REPORT_EVERY)
            with self.lock:
                beats = [beat for beat in self.beats.values() if not beat.lost]
            for beat in beats:
                try:
                    beat.report()
                except Exception:  # a database hiccup: the next beat may succeed
                    log.warning("heartbeat of execution #%s failed", beat.live.run.id,
                                exc_info=True)  # fmt: skip
                    forget_connection()


_heartbeats: _Heartbeats | None = None
_heartbeats_lock = threading.Lock()


def _heartbeat(beat: _Beat) -> None:
    """Start ``beat`` on this process's heartbeat thread (started on first use: after the
    fork, in the pool process that runs tasks)."""
    global _heartbeats
    with _heartbeats_lock:
        if _heartbeats is None or not _heartbeats.is_alive():
            _heartbeats = _Heartbeats()
            _heartbeats.start()
        _heartbeats.add(beat)


def run_execution(execution_id: int, hostname: str | None = None) -> str:
    """Run one execution on this worker; returns what happened (for logs and tests)."""
    worker = worker_id(hostname)
    _close_stale_connection()
    lease = execution_lease()
    sent = time.monotonic()
    run = _claim(execution_id, worker)
    if run is None:
        log.info("execution #%s is not waiting to run (a repeated delivery?): not running "
                 "it again", execution_id)  # fmt: skip
        return "not-claimed"
    lease.renew(sent)
    with _running_lock:
        _running_here.add(run.id)
    capture.install()
    live = live_run(run)
    heartbeat = _Beat(live, worker, lease)
    _heartbeat(heartbeat)
    try:
        try:
            result = _run(live, worker, lease)
        except BaseException as e:
            # Nothing may end a claimed run unrecorded: log it with the execution, record it.
            log.exception("execution #%s: unexpected error in the worker", run.id)
            metrics.record_internal_error("worker")
            error = f"internal error: {type(e).__name__}: {e}"
            result = failure(run, "failed", 0.0, error, traceback.format_exc())
        if result is None:
            return "lost"
        _record(worker, live.with_last_reports(result))
        return result.state
    finally:
        _heartbeats.remove(heartbeat)
        with _running_lock:
            _running_here.discard(run.id)


def _claim(execution_id: int, worker: str) -> Run | None:
    try:
        return claims.claim_on_worker(execution_id, worker)
    except CONNECTION_ERRORS as e:
        log.warning(
            "execution #%s: connection lost while claiming it (%s); retrying", execution_id, e
        )
        forget_connection()
    with _running_lock:
        adopt = execution_id not in _running_here
    # The claim may have committed without its answer: a retry then takes back the row
    # this worker already moved to running.
    return retry_on_disconnect(
        lambda: claims.claim_on_worker(execution_id, worker, adopt=adopt),
        f"execution #{execution_id}: claiming it",
    )


def _run(live: LiveRun, worker: str, lease: LivenessLease) -> Result | None:
    run = live.run
    if not lease.fresh():
        # Paused or cut off since the claim, for long enough that the leader may have
        # abandoned the run: start it only if the database says it is still ours.
        sent = time.monotonic()
        still_ours = retry_on_disconnect(
            lambda: claims.heartbeat_execution(run.id, worker),
            f"execution #{run.id}: confirming ownership",
        )
        if still_ours is None:
            log.warning(
                "execution #%s was taken from this worker before it started; not running it", run.id
            )
            metrics.record_dropped(1)
            return None
        lease.renew(sent)
    job = run.job
    held = None
    if job.concurrency_policy == "forbid" and not live.signals.cancel.is_set():
        # A force release by an operator is recorded by the release itself; an expiry or
        # a takeover is found by the keepalive.
        held, note = joblocks.take(job, worker, run.id, on_lost=lambda e: live.lock_lost(worker, e))
        if held is None:
            return Result(run.id, "skipped", None, 0.0, note=note)
    try:
        outcome = call_target(
            live,
            lambda args, kwargs: _call_target(run, args, kwargs),
            held and held.lease.token,
            timeouts=(SoftTimeLimitExceeded,),
            timeout_error=f"timed out after {job.timeout}s (Celery time limit)",
        )
    finally:
        note, release = joblocks.release(held, run.id) if held is not None else ("", None)
    return outcome_result(run, outcome, note, release)


def _call_target(run: Run, args: list, kwargs: dict):
    if run.job.celery_task:
        # A task the workers know, by name: run here, in this worker, under this
        # execution's bookkeeping (one retry model: Celery's own retries are not used).
        from controlplane.celery import app

        task = app.tasks.get(run.job.celery_task)
        if task is None:
            raise LookupError(f"this worker knows no Celery task {run.job.celery_task!r}")
        return task.apply(args=args, kwargs=kwargs, throw=True).result
    return registry.get_target(run.job.target).func(*args, **kwargs)


def _record(worker: str, result: Result) -> None:
    """Write the result, retrying until the database answers (the heartbeat goes on).

    The write is guarded by ownership: a worker that lost the run changes nothing.
    """
    made = time.monotonic()
    attempt = result
    while True:
        try:
            applied = write_results(worker, [attempt], waited=[time.monotonic() - made])
            if result.execution_id not in applied:
                log.warning(
                    "execution #%s: result refused, the run is no longer this worker's",
                    result.execution_id,
                )
            return
        except CONNECTION_ERRORS as e:
            log.warning(
                "execution #%s: could not record the result (%s); retrying", result.execution_id, e
            )
            forget_connection()
            time.sleep(min(0.2 + (time.monotonic() - made) / 10, 2.0))
        except SoftTimeLimitExceeded:
            continue  # the job's time limit struck after the job: the write goes on
        except Exception:
            if attempt is not result:
                log.exception(
                    "execution #%s: could not record even a bare failure", result.execution_id
                )
                return
            log.exception(
                "execution #%s: recording its result failed; recording a bare failure",
                result.execution_id,
            )
            metrics.record_internal_error("worker")
            forget_connection()
            attempt = Result(
                result.execution_id,
                "failed",
                result.started_ago,
                result.finished_ago,
                "could not record the result of this run",
            )


def _close_stale_connection() -> None:
    try:
        close_old_connections()
    except Exception:
        forget_connection()
