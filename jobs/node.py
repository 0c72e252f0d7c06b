"""The scheduler node: a loop of small steps, each callable from a test.

heartbeat -> recover_dead -> claim_pending / claim_due -> dispatch -> sleep, with a
recorder thread that writes run results in batches and a listener thread that wakes
the loop on NOTIFY. Every decision about time is made by PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.db import connection as django_connection

from jobs import celery_executor, claims, context, history, metrics, registry
from jobs.claims import Result, Run
from jobs.retry import retry_delay
from jobs.secrets import resolve_secrets
from locks import leases, liveness, maintenance
from locks.leader import Leadership

log = logging.getLogger("jobs.node")

WAKEUP_CHANNEL = "jobs_wakeup"
# How long a manual run or retry may wait while the node drains a backlog of due triggers.
PENDING_CHECK_WHILE_DRAINING = 0.1
VERSION = "0.1.0"

# Errors that mean "the database connection is gone": close it and try again later.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Listener(threading.Thread):
    """LISTENs on its own connection and sets ``wake`` on every notification."""

    def __init__(self, wake: threading.Event, stopping: threading.Event):
        super().__init__(name="listener", daemon=True)
        self.wake = wake
        self.stopping = stopping

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._listen()
            except Exception as e:  # the connection died: reconnect, and re-check work
                log.warning("listener connection lost (%s); reconnecting", e)
                self.wake.set()
                self.stopping.wait(1.0)

    def _listen(self) -> None:
        params = django_connection.get_connection_params()
        conn = django_connection.get_new_connection(params)
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {WAKEUP_CHANNEL}")
            # Anything that happened while we were not listening must be looked at.
            self.wake.set()
            while not self.stopping.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    self.wake.set()
        finally:
            conn.close()


class Node:
    """One scheduler node. ``run_forever`` is the loop; each step is a method."""

    def __init__(
        self,
        node_id: str | None = None,
        batch: int | None = None,
        threads: int | None = None,
    ):
        self.node_id = node_id or default_node_id()
        self.batch = batch or settings.SCHEDULER_BATCH
        self.threads = threads or settings.SCHEDULER_THREADS
        self.heartbeat_interval = settings.SCHEDULER_HEARTBEAT_INTERVAL
        self.node_timeout = settings.SCHEDULER_NODE_TIMEOUT
        self.poll_interval = settings.SCHEDULER_POLL_INTERVAL
        self.misfire_chunk = settings.SCHEDULER_MISFIRE_CHUNK
        self.shutdown_grace = settings.SCHEDULER_SHUTDOWN_GRACE
        self.max_inflight = self.threads + self.batch

        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="run")
        self.results: queue.SimpleQueue[Result | None] = queue.SimpleQueue()
        self.inflight: dict[int, Run] = {}
        self.futures: dict[int, Future] = {}
        self.started: dict[int, float] = {}  # execution id -> monotonic start
        self.timed_out: set[int] = set()
        self.lock = threading.Lock()
        self.next_heartbeat = 0.0
        # False only while the node knows nothing can be due (it slept short of the due
        # time, e.g. to heartbeat): an idle node then costs no claim queries.
        self.maybe_due = True
        # True while the last claim filled a whole batch (a backlog is being drained).
        self.draining = False
        self.next_pending_check = 0.0
        # Whether sleep() already let the loop look again at a due time that the last
        # claim missed (see sleep).
        self.rechecked_due = False
        self.connection_lost = False
        # Some celery runs could not be published (broker down): retry at heartbeats.
        self.unpublished = False
        self.recorder: threading.Thread | None = None
        self.listener: Listener | None = None
        self.leadership = Leadership(self.node_id, settings.SCHEDULER_LEADER_LEASE)
        self.next_stale_cleanup = 0.0
        self.next_prune = 0.0
        self.next_silent_check = 0.0
        self.next_republish_check = 0.0
        # Job locks held by runs of `forbid` jobs: execution id -> (lease, keepalive).
        self.job_locks: dict[int, tuple[leases.Lease, leases.Keepalive]] = {}

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Register the node and start its recorder and listener threads."""
        with transaction.atomic():
            liveness.register_node(self.node_id, socket.gethostname(), os.getpid(), VERSION)
            self.recover_previous_process()
        self.next_heartbeat = time.monotonic() + self.heartbeat_interval
        self.recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        self.recorder.start()
        self.listener = Listener(self.wake, self.stopping)
        self.listener.start()
        log.info("node %s started (batch %s, threads %s)", self.node_id, self.batch, self.threads)

    def recover_previous_process(self) -> int:
        """Abandon (and recover) what an earlier process with this node id left unfinished.

        A node restarted under the same --node-id after a crash re-registers before any
        other node declares it dead, so nobody else ever would. This process runs nothing
        yet: every unfinished run still marked as this node's is a leftover.
        """
        claims.return_unpublished_to_pending([self.node_id])
        recovered = claims.abandon_executions(
            [self.node_id], f"abandoned: runner node {self.node_id} restarted"
        )
        maintenance.release_locks_of(
            [self.node_id], f"node:{self.node_id}", "holder node restarted"
        )
        if recovered:
            metrics.record_recoveries(recovered)
            log.warning("recovered %s run(s) left by this node's previous process", recovered)
        return recovered

    def run_forever(self) -> None:
        self.start()
        try:
            while not self.stopping.is_set():
                self.step()
        finally:
            self.shutdown()

    def step(self) -> bool:
        """One pass of the loop; returns whether it found work."""
        try:
            if self.connection_lost:
                self.adopt_orphans()
            if time.monotonic() >= self.next_heartbeat:
                self.heartbeat()
            found = False
            if self.maybe_due:
                found = self.claim_pending() + self.claim_due() > 0
            if not found:
                self.sleep()
            return found
        except CONNECTION_ERRORS as e:
            log.warning("database connection lost (%s); reconnecting", e)
            self.connection_lost = True
            django_connection.close()
            self.stopping.wait(0.5)
            return False

    def stop(self, *_args) -> None:
        """Ask the loop to stop (signal handler): no more claims, drain, exit."""
        self.stopping.set()
        self.wake.set()

    # --- steps ------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Refresh this node's heartbeat, recovering dead nodes when there are any."""
        self.next_heartbeat = time.monotonic() + self.heartbeat_interval
        if self.unpublished:
            self.publish(claims.own_unpublished(self.node_id))
        alive, others_overdue = liveness.heartbeat(self.node_id, self.node_timeout)
        if not alive:
            # Declared dead while alive (a long pause, a partition): its unfinished runs
            # were abandoned and their results will be refused. Come back as a live node.
            log.error("node %s was declared dead by another node; re-registering", self.node_id)
            liveness.register_node(self.node_id, socket.gethostname(), os.getpid(), VERSION)
        if self.leadership.refresh():
            self.maintain(others_overdue)
        return alive

    def maintain(self, others_overdue: bool = True) -> None:
        """The leader's housekeeping: dead nodes and workers, stale locks, old history."""
        if others_overdue:
            self.recover_dead()
        now = time.monotonic()
        if now >= self.next_silent_check:
            # A third of the timeout: a dead worker's run is found within 4/3 of it.
            self.next_silent_check = now + settings.SCHEDULER_EXECUTION_TIMEOUT / 3
            self.recover_silent_executions()
        if now >= self.next_stale_cleanup:
            self.next_stale_cleanup = now + settings.SCHEDULER_STALE_CLEANUP_INTERVAL
            freed = maintenance.cleanup_stale_locks(
                f"node:{self.node_id}", "automatic stale lock cleanup by the leader"
            )
            if freed:
                log.warning("released %s stale lock(s): %s", len(freed),
                            ", ".join(f"{f.name} ({f.reason})" for f in freed))  # fmt: skip
        if now >= self.next_prune:
            self.next_prune = now + settings.SCHEDULER_PRUNE_INTERVAL
            deleted = history.prune_history(settings.SCHEDULER_HISTORY_RETENTION_DAYS)
            if deleted:
                log.info("pruned %s execution(s) older than %s days", deleted,
                         settings.SCHEDULER_HISTORY_RETENTION_DAYS)  # fmt: skip

    def recover_dead(self) -> int:
        """Declare silent nodes dead and abandon (and maybe recover) their executions."""
        with transaction.atomic():
            dead = liveness.mark_dead_nodes(self.node_id, self.node_timeout)
            if not dead:
                return 0
            # Celery runs it committed but never published: another node publishes them.
            claims.return_unpublished_to_pending(dead)
            recovered = claims.abandon_executions(
                dead, f"abandoned: runner node died (declared dead by {self.node_id})"
            )
            # Its job locks would otherwise make the recovery runs of `forbid` jobs skip.
            maintenance.release_locks_of(dead, f"node:{self.node_id}", "holder node declared dead")
        metrics.record_recoveries(recovered)
        log.warning("declared dead: %s; queued %s recovery run(s)", ", ".join(dead), recovered)
        return len(dead)

    def recover_silent_executions(self) -> int:
        """Abandon worker-run executions whose heartbeat stopped; re-publish lost messages."""
        with transaction.atomic():
            abandoned, recovered = claims.abandon_silent_executions(
                settings.SCHEDULER_EXECUTION_TIMEOUT
            )
            # Their job locks would otherwise make the recovery runs of `forbid` jobs skip.
            maintenance.release_locks_of_executions(
                abandoned, f"node:{self.node_id}", "its worker stopped heartbeating"
            )
        metrics.record_recoveries(recovered)
        if abandoned:
            log.warning("abandoned %s execution(s) whose worker went silent: %s",
                        len(abandoned), abandoned)  # fmt: skip
        if time.monotonic() < self.next_republish_check:
            return len(abandoned)
        self.next_republish_check = time.monotonic() + settings.SCHEDULER_REPUBLISH_AFTER / 3
        stale = claims.stale_published(settings.SCHEDULER_REPUBLISH_AFTER)
        if stale:
            log.warning("publishing %s unclaimed celery run(s) again", len(stale))
            claims.mark_republished(celery_executor.republish(stale))
        return len(abandoned)

    def capacity(self) -> int:
        """Runs the node may claim now: room for a whole batch, or 0.

        Room is freed only when results are written, so right after a claim there is
        room for just ``threads`` runs; claiming those would cost a whole transaction
        for a few fires. The recorder wakes the loop once a batch fits.
        """
        with self.lock:
            room = self.max_inflight - len(self.inflight)
        return room if room >= self.batch else 0

    def claim_due(self) -> int:
        """Claim due triggers and dispatch their fires; returns triggers claimed."""
        room = self.capacity()
        if room <= 0 or self.stopping.is_set():
            return 0
        started = time.perf_counter()
        claimed = claims.claim_due_triggers(self.node_id, min(self.batch, room), self.misfire_chunk)
        self.draining = claimed.triggers >= min(self.batch, room)
        if claimed.triggers:
            self.rechecked_due = False
        metrics.record_claim_due(claimed, time.perf_counter() - started)
        self.dispatch(claimed.runs)
        return claimed.triggers

    def claim_pending(self) -> int:
        """Claim runnable pending executions (manual runs, retries, recoveries).

        While a backlog of due triggers is drained the loop never idles, and asking on
        every pass would add a transaction per batch for nothing: then it asks at most
        every PENDING_CHECK_WHILE_DRAINING seconds.
        """
        room = self.capacity()
        now = time.monotonic()
        if room <= 0 or self.stopping.is_set():
            return 0
        if self.draining and now < self.next_pending_check:
            return 0
        self.next_pending_check = now + PENDING_CHECK_WHILE_DRAINING
        started = time.perf_counter()
        runs = claims.claim_pending_executions(self.node_id, min(self.batch, room))
        metrics.record_claim_pending(len(runs), time.perf_counter() - started)
        self.dispatch(runs)
        return len(runs)

    def dispatch(self, runs: list[Run]) -> None:
        """Hand inline runs to the thread pool, and publish celery runs to the broker."""
        remote = [run for run in runs if run.job.executor == "celery"]
        if remote:
            self.publish(remote)
            runs = [run for run in runs if run.job.executor != "celery"]
        with self.lock:
            for run in runs:
                self.inflight[run.id] = run
        for run in runs:
            self.futures[run.id] = self.pool.submit(self._execute, run)

    def publish(self, runs: list[Run]) -> int:
        """Publish celery runs (already committed as dispatched); returns how many went."""
        published = celery_executor.publish(runs)
        claims.mark_published(published)
        # Whatever could not be published is retried on the next heartbeat.
        self.unpublished = len(published) < len(runs)
        return len(published)

    def sleep(self) -> None:
        """Sleep until the next due time (asked of the database), a NOTIFY, or the poll."""
        if self.capacity() <= 0:
            timeout = self.poll_interval  # a finishing run sets wake
        else:
            due_in = claims.seconds_until_due()
            timeout = self.poll_interval if due_in is None else min(due_in, self.poll_interval)
            if timeout > 0:
                self.rechecked_due = False
            elif not self.rechecked_due:
                # Due already, though the claim just before found nothing: it may have come
                # due in between (the claim's now() is its transaction's start). Once, look
                # again at once.
                timeout, self.rechecked_due = 0.0, True
            else:
                # Still nothing to claim: another node holds it (SKIP LOCKED). Don't spin.
                timeout = 0.02
        until_heartbeat = max(self.next_heartbeat - time.monotonic(), 0.0)
        woken = self.wake.wait(min(timeout, until_heartbeat))
        self.wake.clear()
        self.maybe_due = woken or timeout <= until_heartbeat

    def adopt_orphans(self) -> None:
        """After a lost connection, run executions claimed for us whose claim did commit."""
        with django_connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM jobs_execution WHERE node = %s AND state = 'dispatched'",
                [self.node_id],
            )
            ids = [row[0] for row in cursor.fetchall()]
        with self.lock:
            orphans = [i for i in ids if i not in self.inflight]
        if orphans:
            log.warning(
                "re-queueing %s execution(s) claimed before a lost connection", len(orphans)
            )
            claims.return_to_pending(self.node_id, orphans)
        self.connection_lost = False

    # --- running jobs (pool threads) ----------------------------------------------------

    def _execute(self, run: Run) -> None:
        if run.job.concurrency_policy == "forbid" and not self._take_job_lock(run):
            return
        started = time.monotonic()
        with self.lock:
            self.started[run.id] = started
        self.results.put(Result(run.id, "running", 0.0, None))
        state, error, tb = "succeeded", "", ""
        token = context.running_as(
            context.ExecutionContext(run.id, run.job.name, run.scheduled_for, run.attempt)
        )
        try:
            args, kwargs = resolve_secrets(run.args, run.kwargs)
            registry.get_target(run.job.target).func(*args, **kwargs)
        except Exception as e:
            state, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
        finally:
            context.finished(token)
            if run.job.concurrency_policy == "forbid":
                self._release_job_lock(run.id)
            # Job code may have used the ORM from this thread.
            close_old_connections()
        finished = time.monotonic()
        self.results.put(
            Result(run.id, state, finished - started, 0.0, error, tb)
            if state == "succeeded"
            else self._failure(run, state, finished - started, error, tb)
        )

    def _take_job_lock(self, run: Run) -> bool:
        """Hold the job's lock for a `forbid` run, or record the run as skipped."""
        job = run.job
        lease = leases.acquire(job.lock_name, self.node_id, job.lock_lease, execution_id=run.id)
        if lease is None:
            with django_connection.cursor() as cursor:
                cursor.execute(
                    "SELECT l.holder, l.execution_id FROM locks_lock l WHERE l.name = %s",
                    [job.lock_name],
                )
                row = cursor.fetchone() or ("", None)
            close_old_connections()
            held_by = f"{row[0] or 'a releasing holder'}" + (
                f" for execution #{row[1]}" if row[1] else ""
            )
            self.results.put(
                Result(run.id, "skipped", None, 0.0,
                       note=f"skipped: concurrency policy forbid; {job.lock_name} held by "
                            f"{held_by}")
            )  # fmt: skip
            return False
        keeper = leases.Keepalive(lease, job.lock_lease)
        keeper.start()
        with self.lock:
            self.job_locks[run.id] = (lease, keeper)
        return True

    def _release_job_lock(self, execution_id: int) -> None:
        with self.lock:
            held = self.job_locks.pop(execution_id, None)
        if held is None:
            return  # released already (the run timed out)
        lease, keeper = held
        keeper.stop()
        try:
            lease.release()
        except leases.LockLost as e:
            log.warning("job lock of execution #%s was lost while it ran: %s", execution_id, e)

    def _failure(self, run: Run, state: str, ran_for: float, error: str, tb: str) -> Result:
        job = run.job
        delay = retry_delay(run.attempt, job.max_attempts, job.retry_backoff)
        return Result(run.id, state, ran_for, 0.0, error, tb, delay, job.max_attempts)

    # --- recording results (recorder thread) --------------------------------------------

    def _record_loop(self) -> None:
        pending: dict[int, tuple[Result, float]] = {}
        done = False
        while not done:
            try:
                item = self.results.get(timeout=0.05)
                items = [item]
                while len(items) < 1000:
                    try:
                        items.append(self.results.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                items = []
            now = time.monotonic()
            for item in items:
                if item is None:
                    done = True
                    continue
                previous = pending.get(item.execution_id)
                # A finished result supersedes "running" for the same run.
                if previous is None or previous[0].state == "running":
                    pending[item.execution_id] = (item, now)
            for result in self._timeouts(now):
                pending[result.execution_id] = (result, now)
                self._release_job_lock(result.execution_id)
            if pending:
                pending = self._flush(pending)
        close_old_connections()

    def _timeouts(self, now: float) -> list[Result]:
        expired = []
        with self.lock:
            for execution_id, started in self.started.items():
                run = self.inflight.get(execution_id)
                if run is None or execution_id in self.timed_out or not run.job.timeout:
                    continue
                if now - started > run.job.timeout:
                    self.timed_out.add(execution_id)
                    expired.append(
                        self._failure(
                            run, "timed_out", now - started,
                            f"timed out after {run.job.timeout}s", "",
                        )
                    )  # fmt: skip
        return expired

    def _flush(self, pending: dict[int, tuple[Result, float]]) -> dict[int, tuple[Result, float]]:
        """Write queued results; returns what could not be written (to retry)."""
        now = time.monotonic()
        batch = []
        for result, queued_at in pending.values():
            # Times are "ago" at the moment of writing: add how long it sat in the queue.
            waited = now - queued_at
            batch.append(
                Result(
                    result.execution_id,
                    result.state,
                    None if result.started_ago is None else result.started_ago + waited,
                    None if result.finished_ago is None else result.finished_ago + waited,
                    result.error,
                    result.traceback,
                    result.retry_delay,
                    result.max_attempts,
                    result.note,
                )
            )
        try:
            applied = claims.record_results(self.node_id, batch)
        except CONNECTION_ERRORS as e:
            # Writes are idempotent (guarded by state), so the whole batch is retried.
            log.warning("could not record %s result(s) (%s); will retry", len(batch), e)
            django_connection.close()
            time.sleep(0.5)
            return pending
        metrics.record_results(batch, applied, self.inflight)  # before the runs leave inflight
        # A timed-out run's thread is still busy with the job: it keeps its place in
        # `inflight` (and so in the node's capacity) until the job really returns.
        finished = [r.execution_id for r in batch if r.state not in ("running", "timed_out")]
        with self.lock:
            was_full = self.max_inflight - len(self.inflight) < self.batch
            for execution_id in finished:
                self.inflight.pop(execution_id, None)
                self.started.pop(execution_id, None)
                self.futures.pop(execution_id, None)
                self.timed_out.discard(execution_id)
        if finished and was_full:
            self.wake.set()  # the loop stopped claiming for lack of room; there is room now
        return {}

    # --- shutdown -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop claiming, hand back unstarted runs, let running ones finish, then stop."""
        log.info("node %s stopping", self.node_id)
        unstarted = [i for i, f in list(self.futures.items()) if f.cancel()]
        with self.lock:
            for execution_id in unstarted:
                self.inflight.pop(execution_id, None)
                self.futures.pop(execution_id, None)
        self._retry_db(lambda: claims.return_to_pending(self.node_id, unstarted))
        deadline = time.monotonic() + self.shutdown_grace
        while time.monotonic() < deadline:
            with self.lock:
                if not self.inflight:
                    break
            time.sleep(0.05)
        self.results.put(None)
        if self.recorder is not None:
            self.recorder.join(timeout=10)
        with self.lock:
            leftover = list(self.inflight)
        if leftover:
            log.warning("abandoning %s run(s) still going after the grace period", len(leftover))
            self._retry_db(
                lambda: claims.abandon_executions(
                    [self.node_id], "abandoned: node stopped before the run finished", leftover
                )
            )
        for execution_id in leftover:
            self._release_job_lock(execution_id)
        self._retry_db(self.leadership.resign)
        self._retry_db(lambda: liveness.mark_stopped(self.node_id))
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("node %s stopped", self.node_id)

    def _retry_db(self, action, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                action()
                return
            except CONNECTION_ERRORS as e:
                log.warning("database unavailable during shutdown (%s)", e)
                django_connection.close()
                time.sleep(0.5 * (attempt + 1))
