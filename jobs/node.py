"""The scheduler node: a loop of small steps, each callable from a test.

heartbeat -> recover_dead -> claim_pending / claim_due -> sleep.

Claimed runs are queued for a Runner (jobs/runner.py: threads that start a run only while
the node owns it), their results go to a Recorder (jobs/recorder.py: batched writes that
survive a lost connection), and a listener thread wakes the loop on NOTIFY.

Ownership comes before action. The node claims only what it can start soon: its free
threads, plus a prefetch while its runs are quick, so that due fires go to nodes with
free threads. A claimed run starts only once the database has confirmed that the node
still owns it: the claim itself, for runs claimed for a free thread or quick runs it
expects to start within SCHEDULER_START_WINDOW, or one UPDATE that the runner's threads
share. Until its liveness lease (the time since its last successful
heartbeat, on the monotonic clock) runs out, nobody can have declared the node dead; past
that it asks the database before it starts anything, and a node that finds it was
declared dead drops whatever it had not started (the cluster has taken it back) before
registering again. Every decision about time is made by PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from django.conf import settings
from django.db import connection as django_connection
from django.db import transaction

from jobs import capture, celery_executor, claims, history, metrics
from jobs.claims import Reports, Result, Run
from jobs.reconnect import CONNECTION_ERRORS, forget_connection
from jobs.recorder import MAX_BATCH, Recorder
from jobs.runner import Runner
from locks import liveness, maintenance
from locks.leader import Leadership

log = logging.getLogger("jobs.node")

WAKEUP_CHANNEL = "jobs_wakeup"
# How long a manual run or retry may wait while the node drains a backlog of due triggers.
PENDING_CHECK_WHILE_DRAINING = 0.1
# How often a node with no room for inline runs looks for due celery fires once it found
# none: every thread freed wakes the loop, and a celery-only claim on each wake (it walks
# the due triggers) would cost more than the runs it waits for.
CELERY_CHECK_WITHOUT_ROOM = 0.1
VERSION = "0.1.0"
# Seconds the recorder gets to write the last results when the node stops.
RECORDER_STOP_TIMEOUT = 10.0
# Seconds the second claimer's claim in flight gets to end when the node stops.
CLAIMER_STOP_TIMEOUT = 10.0
# Seconds the leader's history pruner gets to end its batch when the node stops.
PRUNER_STOP_TIMEOUT = 10.0
# Seconds after a prune that failed (a lost connection) before the leader tries again.
PRUNE_RETRY = 60.0


def _pause(seconds: float) -> None:
    """Wait ``seconds``. Not time.sleep: under libfaketime with a clock set back (the
    skewed-clock tests), its absolute-deadline sleep fails with EINVAL, while an Event's
    timed wait does not."""
    threading.Event().wait(seconds)


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Listener(threading.Thread):
    """LISTENs on its own connection: wakes the loop on every notification, and collects
    the executions named by run signals (cancel requests, force-released job locks)."""

    def __init__(self, wake: threading.Event, stopping: threading.Event):
        super().__init__(name="listener", daemon=True)
        self.wake = wake
        self.stopping = stopping
        self.lock = threading.Lock()
        #: Executions named by run signals since the loop last looked.
        self.signalled: set[int] = set()

    def take_signalled(self) -> set[int]:
        with self.lock:
            taken, self.signalled = self.signalled, set()
        return taken

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
            conn.execute(f"LISTEN {claims.RUN_SIGNAL_CHANNEL}")
            # Anything that happened while we were not listening must be looked at.
            self.wake.set()
            while not self.stopping.is_set():
                for notify in conn.notifies(timeout=1.0, stop_after=1):
                    if notify.channel == claims.RUN_SIGNAL_CHANNEL and notify.payload.isdigit():
                        with self.lock:
                            self.signalled.add(int(notify.payload))
                    self.wake.set()
        finally:
            conn.close()


class Node:
    """One scheduler node. ``run_forever`` is the loop; each step is a method."""

    version = VERSION

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
        self.prefetch_max = settings.SCHEDULER_PREFETCH
        self.prefetch_wait = settings.SCHEDULER_PREFETCH_WAIT
        self.start_window = min(settings.SCHEDULER_START_WINDOW, self.prefetch_wait)

        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.lease = liveness.LivenessLease(
            self.node_timeout, liveness.liveness_margin(self.node_timeout, self.heartbeat_interval)
        )
        # One heartbeat at a time: the loop's, or a runner thread's that found the lease out.
        self.liveness_lock = threading.Lock()
        #: Every inline run this node claimed whose result is not written yet.
        self.inflight: dict[int, Run] = {}
        # At most this many: its threads, its prefetch and a full batch of results for the
        # recorder. Beyond that the recorder is behind (a slow or blocked database), and
        # claiming on would pile up runs that ran but are not recorded: a crash loses
        # their results (they are abandoned), and every result write gets slower.
        self.unrecorded_limit = self.threads + self.prefetch_max + MAX_BATCH
        self.recorder = Recorder(
            self.node_id, tick=self._timeouts, written=self._written, collect=self._collect
        )
        self.runner = Runner(
            self.node_id,
            self.threads,
            self.lease,
            results=self.recorder.put,
            prove_alive=self.prove_alive,
            dropped=self._dropped,
            freed=self._thread_freed,
            quick=self.prefetch_wait,
        )
        self.next_heartbeat = 0.0
        # False only while the node knows nothing can be due (it slept short of the due
        # time, e.g. to heartbeat): an idle node then costs no claim queries.
        self.maybe_due = True
        # True while the last claim filled a whole batch (a backlog is being drained).
        self.draining = False
        # True while due work was left for lack of free threads: a thread that frees up
        # wakes the loop.
        self.wants_room = False
        self.next_pending_check = 0.0
        # With no room for inline runs, the next time celery-only claims may look again
        # (see claim_due).
        self.next_celery_check = 0.0
        # Whether sleep() already let the loop look again at a due time that the last
        # claim missed (see sleep).
        self.rechecked_due = False
        self.connection_lost = False
        # Monotonic time since which the database has answered without interruption.
        self.connected_since = 0.0
        # Whether any job runs on Celery (from the last sleep's query): those are claimed
        # even when every thread is busy.
        self.celery_jobs = False
        # Some celery runs could not be published (broker down): retry at heartbeats.
        self.unpublished = False
        self.listener: Listener | None = None
        # Claims in flight (the loop's and the second claimer's) and the inline room each
        # holds until its runs are queued: room() counts it as queued, so that two claims
        # never promise the same free threads (see hold_room).
        self.claiming = threading.Condition()
        self.claims_in_flight = 0
        self.held_room = 0
        # True while adopt_orphans runs: no claim starts meanwhile.
        self.adopting = False
        #: Wakes the second claimer (see claim_beside).
        self.second_wake = threading.Event()
        self.second_claimer: threading.Thread | None = None
        self.claimer_error: Exception | None = None
        self.leadership = Leadership(self.node_id, settings.SCHEDULER_LEADER_LEASE)
        self.next_stale_cleanup = 0.0
        self.next_prune = 0.0
        #: The leader's history pruner (see start_pruning), and what tells it to stop.
        self.pruner: threading.Thread | None = None
        self.prune_stop = threading.Event()
        self.next_silent_check = 0.0
        self.next_cancel_check = 0.0
        self.next_republish_check = 0.0

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Register the node and start its recorder and listener threads."""
        sent = time.monotonic()
        with transaction.atomic():
            liveness.register_node(self.node_id, socket.gethostname(), os.getpid(), VERSION)
            self.recover_previous_process()
        self.lease.renew(sent)
        self.connected_since = sent
        self.next_heartbeat = time.monotonic() + self.heartbeat_interval
        capture.install()
        self.recorder.start()
        self.runner.start()
        self.listener = Listener(self.wake, self.stopping)
        self.listener.start()
        self.second_claimer = threading.Thread(
            target=self.claim_beside, name="second-claimer", daemon=True
        )
        self.second_claimer.start()
        log.info("node %s started (batch %s, threads %s)", self.node_id, self.batch, self.threads)

    def recover_previous_process(self) -> int:
        """Give back or abandon (and recover) what an earlier process with this id left.

        A node restarted under the same --node-id after a crash re-registers before any
        other node declares it dead, so nobody else ever would. This process runs nothing
        yet: every unfinished run still marked as this node's is a leftover.
        """
        claims.return_unstarted_to_pending([self.node_id])
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
        if self.claimer_error is not None:
            raise RuntimeError("the second claimer failed") from self.claimer_error

    def step(self) -> bool:
        """One pass of the loop; returns whether it found work."""
        try:
            if self.connection_lost:
                self.adopt_orphans()
            if time.monotonic() >= self.next_heartbeat or not self.lease.fresh():
                self.heartbeat()
            elif self.listener is not None and self.listener.take_signalled():
                self.watch_runs()
            found = False
            if self.maybe_due:
                found = self.claim_pending() + self.claim_due() > 0
            if not found:
                self.sleep()
            return found
        except CONNECTION_ERRORS as e:
            log.warning("database connection lost (%s); reconnecting", e)
            self.connection_lost = True
            forget_connection()
            self.stopping.wait(0.5)
            return False

    def stop(self, *_args) -> None:
        """Ask the loop to stop (signal handler): no more claims, drain, exit."""
        self.stopping.set()
        self.prune_stop.set()
        self.wake.set()

    # --- steps ------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Refresh this node's heartbeat (and its lease), recovering dead nodes if any."""
        self.next_heartbeat = time.monotonic() + self.heartbeat_interval
        if self.unpublished:
            self.publish(claims.own_unpublished(self.node_id))
        alive, others_overdue = self._beat()
        self.watch_runs()
        if self.leadership.refresh():
            self.maintain(others_overdue)
        return alive

    def watch_runs(self) -> int:
        """Tell this node's runs whether they were asked to stop or lost their job lock
        (on a run signal, and at every heartbeat in case a NOTIFY was missed)."""
        if not self.runner.live_ids():
            return 0
        rows = claims.watch_runs(self.node_id)
        for execution_id, cancel, cancel_by, cancel_reason, lock_lost in rows:
            self.runner.signal(
                execution_id, (cancel_by, cancel_reason) if cancel else None, lock_lost
            )
        return len(rows)

    def prove_alive(self) -> bool:
        """Heartbeat now, for a runner thread whose lease ran out: whether the node was still
        alive (if it had been declared dead, it has rejoined by the time this returns)."""
        return self._beat()[0]

    def _beat(self) -> tuple[bool, bool]:
        with self.liveness_lock:
            sent = time.monotonic()
            alive, others_overdue = liveness.heartbeat(self.node_id, self.node_timeout)
            if alive:
                self.lease.renew(sent)
            else:
                self.rejoin()
        return alive, others_overdue

    def rejoin(self) -> None:
        """Declared dead while alive: drop every run not yet started, then register again.

        Whoever declared this node dead has returned its unstarted runs to pending and
        abandoned its running ones. Runs already in a thread go on (a thread cannot be
        stopped), but their results will be refused.
        """
        self.lease.expire()
        dropped = self.runner.take_waiting()
        log.error(
            "node %s was declared dead by another node (a long pause or a partition): "
            "dropping %s claimed run(s) it had not started; registering again",
            self.node_id,
            len(dropped),
        )
        self._dropped(dropped, "the node had been declared dead")
        sent = time.monotonic()
        liveness.register_node(self.node_id, socket.gethostname(), os.getpid(), VERSION)
        self.lease.renew(sent)

    def maintain(self, others_overdue: bool = True) -> None:
        """The leader's housekeeping: dead nodes and workers, stale locks, old history."""
        # After this node could not reach the database, everybody's heartbeats look old:
        # judge others only once they have had a whole timeout to beat again.
        connected_for = time.monotonic() - self.connected_since
        if others_overdue and connected_for >= self.node_timeout:
            self.recover_dead()
        now = time.monotonic()
        if now >= self.next_silent_check and connected_for >= settings.SCHEDULER_EXECUTION_TIMEOUT:
            # A third of the timeout: a dead worker's run is found within 4/3 of it.
            self.next_silent_check = now + settings.SCHEDULER_EXECUTION_TIMEOUT / 3
            self.recover_silent_executions()
        if now >= self.next_cancel_check:
            # A third of the grace: an ignored cancel request is enforced within 4/3 of it.
            self.next_cancel_check = now + max(settings.SCHEDULER_CANCEL_GRACE / 3, 1.0)
            self.cancel_overdue()
        if now >= self.next_stale_cleanup:
            self.next_stale_cleanup = now + settings.SCHEDULER_STALE_CLEANUP_INTERVAL
            freed = maintenance.cleanup_stale_locks(
                f"node:{self.node_id}", "automatic stale lock cleanup by the leader"
            )
            if freed:
                log.warning("released %s stale lock(s): %s", len(freed),
                            ", ".join(f"{f.name} ({f.reason})" for f in freed))  # fmt: skip
        if now >= self.next_prune and not (self.pruner and self.pruner.is_alive()):
            self.next_prune = now + settings.SCHEDULER_PRUNE_INTERVAL
            self.start_pruning()

    def start_pruning(self) -> None:
        """Prune old history on a thread of its own: a million old rows take a minute or
        more to delete, paced (jobs.history), and the loop must go on claiming meanwhile."""
        self.prune_stop = threading.Event()
        if self.stopping.is_set():
            return
        self.pruner = threading.Thread(
            target=self.prune, args=(self.prune_stop,), name="history-pruner", daemon=True
        )
        self.pruner.start()

    def prune(self, stop: threading.Event) -> None:
        """The pruner thread: executions past their retention, then the run rollup's old
        rows. It ends early when ``stop`` is set (the node stops); after a failure the
        leader tries again PRUNE_RETRY seconds later."""
        days = settings.SCHEDULER_HISTORY_RETENTION_DAYS
        try:
            deleted = history.prune_history(days, stop=stop)
            if deleted:
                log.info("pruned %s execution(s) older than %s days", deleted, days)
            if not stop.is_set():
                history.prune_rollup(settings.SCHEDULER_ROLLUP_MINUTE_RETENTION_HOURS,
                                     settings.SCHEDULER_ROLLUP_RETENTION_DAYS)  # fmt: skip
        except CONNECTION_ERRORS as e:
            log.warning("pruning history stopped: database connection lost (%s); trying "
                        "again in %ss", e, PRUNE_RETRY)  # fmt: skip
            self.next_prune = min(self.next_prune, time.monotonic() + PRUNE_RETRY)
        except Exception:
            log.exception("pruning history failed; trying again in %ss", PRUNE_RETRY)
            metrics.record_internal_error("pruner")
            self.next_prune = min(self.next_prune, time.monotonic() + PRUNE_RETRY)
        finally:
            forget_connection()  # this thread's own

    def recover_dead(self) -> int:
        """Declare silent nodes dead: their unstarted runs go back to pending, their running
        ones are abandoned (and recovered where the job asks), their locks freed."""
        with transaction.atomic():
            dead = liveness.mark_dead_nodes(self.node_id, self.node_timeout)
            if not dead:
                return 0
            returned = claims.return_unstarted_to_pending(dead)
            recovered = claims.abandon_executions(
                dead, f"abandoned: runner node died (declared dead by {self.node_id})"
            )
            # Its job locks would otherwise make the recovery runs of `forbid` jobs skip.
            maintenance.release_locks_of(dead, f"node:{self.node_id}", "holder node declared dead")
        metrics.record_recoveries(recovered)
        log.warning(
            "declared dead: %s; %s unstarted run(s) back to pending, %s recovery run(s) queued",
            ", ".join(dead),
            returned,
            recovered,
        )
        return len(dead)

    def cancel_overdue(self) -> int:
        """Record as cancelled the runs that ignored a cancel request past the grace,
        freeing their job locks; a Celery worker's process running one is terminated."""
        grace = settings.SCHEDULER_CANCEL_GRACE
        with transaction.atomic():
            cancelled = claims.cancel_overdue(grace)
            ids = [execution_id for execution_id, _, _ in cancelled]
            maintenance.release_locks_of_executions(
                ids, f"node:{self.node_id}", "its run was cancelled"
            )
        if cancelled:
            log.warning("cancelled %s run(s) that did not stop within %ss of the request: %s",
                        len(ids), grace, ids)  # fmt: skip
            celery = [i for i, executor, _ in cancelled if executor == "celery"]
            if celery:
                celery_executor.terminate(celery)
        return len(cancelled)

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

    def prefetch(self) -> int:
        """Inline runs to claim beyond the free threads: as many as the node expects to
        start within SCHEDULER_PREFETCH_WAIT, judging by its recent runs; none while any
        thread has been on a run for longer than that (it may be a slow one)."""
        if not self.prefetch_max or self.runner.busy_for() > self.prefetch_wait:
            return 0
        mean = self.runner.mean_run_seconds()
        if mean is None:
            return 0
        expected = self.threads * self.prefetch_wait / max(mean, 1e-6)
        return min(self.prefetch_max, int(expected))

    def room(self) -> tuple[claims.StartPlan, int]:
        """(which claimed inline runs to record running, inline runs the node may claim now).

        Free threads are always claimed for. With a prefetch, the node tops its queue up
        only once it is half empty, so that quick runs are claimed in batches rather than
        one per freed thread. Runs for free threads, and prefetched runs of quick jobs that
        the node expects to start within SCHEDULER_START_WINDOW, are recorded running by
        the claim (claims.StartPlan). Nothing while unrecorded_limit claimed runs are not
        yet recorded.
        """
        held = self.held_room  # by a claim in flight: its runs will be queued
        unrecorded_room = self.unrecorded_limit - len(self.inflight) - held
        if unrecorded_room <= 0:
            return claims.StartPlan(0), 0
        idle, waiting = self.runner.idle_threads(), self.runner.waiting() + held
        prefetch = self.prefetch()
        free = max(idle - waiting, 0)
        queued = max(waiting - idle, 0)  # claimed runs that will wait for a thread
        if not free and queued > prefetch // 2:
            return claims.StartPlan(0), 0
        room = min(free + max(prefetch - queued, 0), unrecorded_room)
        starts = claims.StartPlan(free)
        mean = self.runner.mean_run_seconds()
        if prefetch and mean is not None and self.runner.busy_for() <= self.start_window:
            starts.budget = self.threads * self.start_window - queued * mean
            starts.job_seconds = self.runner.quick_jobs(self.start_window)
        return starts, room

    def claim_due(self) -> int:
        """Claim due triggers and dispatch their fires; returns triggers claimed."""
        if self.stopping.is_set():
            return 0
        held = self.hold_room()
        if held is None:
            return 0
        starts, room = held
        try:
            return self._claim_due(starts, room)
        finally:
            self.release_room(room)

    def _claim_due(self, starts: claims.StartPlan, room: int) -> int:
        # With no room for inline runs, celery runs (which only need publishing) are
        # still claimed, a whole batch of them; after one such claim found nothing, again
        # only every CELERY_CHECK_WITHOUT_ROOM.
        limit = min(self.batch, room) if room else self.batch * self.celery_jobs
        if not room and time.monotonic() < self.next_celery_check:
            limit = 0
        if limit <= 0:
            self.wants_room = True
            return 0
        started = time.perf_counter()
        generation = self.lease.generation
        claimed = claims.claim_due_triggers(
            self.node_id, limit, self.misfire_chunk, inline_room=room, starts=starts
        )
        if not room and not claimed.triggers:
            self.next_celery_check = time.monotonic() + CELERY_CHECK_WITHOUT_ROOM
        self.draining = claimed.triggers >= limit
        self.wants_room = claimed.left > 0 or (self.draining and limit >= room)
        if claimed.triggers:
            self.rechecked_due = False
        metrics.record_claim_due(claimed, time.perf_counter() - started)
        self.dispatch(claimed.runs, generation)
        if self.draining:
            self.second_wake.set()
        return claimed.triggers

    def claim_pending(self) -> int:
        """Claim runnable pending executions (manual runs, retries, recoveries).

        While a backlog of due triggers is drained the loop never idles, and asking on
        every pass would add a transaction per batch for nothing: then it asks at most
        every PENDING_CHECK_WHILE_DRAINING seconds.
        """
        if self.stopping.is_set():
            return 0
        now = time.monotonic()
        if self.draining and now < self.next_pending_check:
            return 0
        held = self.hold_room()
        if held is None:
            return 0
        starts, room = held
        try:
            limit = min(self.batch, room) if room else self.batch * self.celery_jobs
            if limit <= 0:
                return 0
            self.next_pending_check = now + PENDING_CHECK_WHILE_DRAINING
            started = time.perf_counter()
            generation = self.lease.generation
            runs, left = claims.claim_pending_executions(
                self.node_id, limit, inline_room=room, starts=starts
            )
            if left:
                self.wants_room = True
            metrics.record_claim_pending(len(runs), time.perf_counter() - started)
            self.dispatch(runs, generation)
            return len(runs)
        finally:
            self.release_room(room)

    def hold_room(self) -> tuple[claims.StartPlan, int] | None:
        """Room for one claim (see room), held until the claim's runs are queued
        (release_room); None while adopt_orphans runs."""
        with self.claiming:
            if self.adopting:
                return None
            starts, room = self.room()
            self.claims_in_flight += 1
            self.held_room += room
        return starts, room

    def release_room(self, room: int) -> None:
        with self.claiming:
            self.claims_in_flight -= 1
            self.held_room -= room
            self.claiming.notify_all()

    def claim_beside(self) -> None:
        """The second claimer's thread: while the node drains a backlog, it claims beside
        the loop, so that one claim's statements overlap the other's commit (the WAL
        flush both wait for) and the queue does not run dry during a claim."""
        try:
            while not self.stopping.is_set():
                self.second_wake.wait(self.poll_interval)
                self.second_wake.clear()
                while self.draining and not self.connection_lost and not self.stopping.is_set():
                    try:
                        if not self.claim_due():
                            break  # no room: a freed thread wakes it again
                    except CONNECTION_ERRORS as e:
                        # Its claim may have committed unseen: the loop adopts the orphans.
                        log.warning("database connection lost while claiming (%s)", e)
                        forget_connection()
                        self.connection_lost = True
                        self.wake.set()
                    except Exception as e:
                        # As an error in the loop would: the node stops. Left active, it
                        # is declared dead and what the failed claim held is recovered.
                        log.exception("the second claimer failed: stopping the node")
                        metrics.record_internal_error("claimer")
                        self.claimer_error = e
                        self.stop()
        finally:
            forget_connection()

    def dispatch(self, runs: list[Run], generation: int) -> None:
        """Queue inline runs for the runner's threads, and publish celery runs.

        ``generation``: the lease's when the claim began (see Runner.queue)."""
        remote = [run for run in runs if run.job.executor == "celery"]
        if remote:
            self.publish(remote)
        local = [run for run in runs if run.job.executor != "celery"]
        with self.lock:
            for run in local:
                self.inflight[run.id] = run
        self.runner.queue(local, generation)

    def publish(self, runs: list[Run]) -> int:
        """Publish celery runs (already committed as dispatched); returns how many went."""
        published = celery_executor.publish(runs)
        claims.mark_published(published)
        # Whatever could not be published is retried on the next heartbeat.
        self.unpublished = len(published) < len(runs)
        return len(published)

    def sleep(self) -> None:
        """Sleep until the next due time (asked of the database), a NOTIFY, or the poll."""
        if not self.room()[1]:
            # Nothing inline can be claimed until threads free up, which wakes the loop;
            # celery fires are looked for again once CELERY_CHECK_WITHOUT_ROOM has passed
            # (asking the database when the next fire is due would not tell, while inline
            # ones are overdue).
            self.wants_room = True
            timeout = self.poll_interval
            if self.celery_jobs:
                timeout = min(max(self.next_celery_check - time.monotonic(), 0.0), timeout)
        else:
            due_in, self.celery_jobs = claims.seconds_until_due()
            timeout = self.poll_interval if due_in is None else min(due_in, self.poll_interval)
            if timeout > 0:
                self.rechecked_due = False
            elif not self.rechecked_due:
                # Due already, though the claim just before found nothing: it may have come
                # due in between (the claim's now() is its transaction's start). Once, look
                # again at once.
                timeout, self.rechecked_due = 0.0, True
            else:
                # Still nothing to claim: another node holds it (SKIP LOCKED), or this one
                # has no room for it (a freed thread wakes the loop). Don't spin.
                timeout = 0.02
        until_heartbeat = max(self.next_heartbeat - time.monotonic(), 0.0)
        woken = self.wake.wait(min(timeout, until_heartbeat))
        self.wake.clear()
        self.maybe_due = woken or timeout <= until_heartbeat

    def adopt_orphans(self) -> None:
        """After a lost connection: give back runs whose claim committed unseen.

        A claim still in flight (the second claimer's) may have committed runs it has not
        queued yet: they are no orphans. So no claim starts while this runs, and it waits
        for those in flight to finish first.
        """
        with self.claiming:
            self.adopting = True
            while self.claims_in_flight:
                self.claiming.wait()
        try:
            ids = claims.own_unfinished(self.node_id)
            with self.lock:
                orphans = [i for i in ids if i not in self.inflight]
            if orphans:
                log.warning(
                    "returning %s run(s) claimed before a lost connection to pending",
                    len(orphans),
                )
                claims.return_to_pending(self.node_id, orphans)
            self.connection_lost = False
            self.connected_since = time.monotonic()
        finally:
            with self.claiming:
                self.adopting = False

    # --- callbacks from the runner's and the recorder's threads -------------------------

    def _dropped(self, runs: list[Run], reason: str) -> None:
        """Claimed runs not started because the node no longer owns them."""
        if not runs:
            return
        with self.lock:
            for run in runs:
                self.inflight.pop(run.id, None)
        log.warning("not starting %s run(s): %s: %s", len(runs), reason, [r.id for r in runs])
        metrics.record_dropped(len(runs))

    def _thread_freed(self) -> None:
        if self.wants_room and self.room()[1]:
            self.wake.set()
            self.second_wake.set()

    def _collect(self) -> Reports:
        return self.runner.collect()

    def _timeouts(self) -> list[Result]:
        return self.runner.expired()

    def _written(self, batch: list[Result], applied: set[int]) -> None:
        metrics.record_results(batch, applied, self.inflight)  # before they leave inflight
        with self.lock:
            held_back = len(self.inflight) >= self.unrecorded_limit
            for result in batch:
                self.inflight.pop(result.execution_id, None)
        if held_back:
            self._thread_freed()  # the claims waited for the recorder: room again
        refused = [r.execution_id for r in batch if r.execution_id not in applied]
        if refused:
            log.warning(
                "results refused for %s run(s) this node no longer owned (timed out, "
                "abandoned or cancelled meanwhile): %s",
                len(refused),
                refused,
            )

    # --- shutdown -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop claiming, hand back unstarted runs, let running ones finish, then stop."""
        log.info("node %s stopping", self.node_id)
        self.prune_stop.set()
        self.runner.stop()
        self.second_wake.set()
        claimer_stopped = True
        if self.second_claimer is not None:
            # Its claim in flight queues its runs before they are taken back below.
            self.second_claimer.join(CLAIMER_STOP_TIMEOUT)
            claimer_stopped = not self.second_claimer.is_alive()
            if not claimer_stopped:
                log.error("the second claimer's claim did not end within %ss",
                          CLAIMER_STOP_TIMEOUT)  # fmt: skip
        unstarted = [run.id for run in self.runner.take_waiting()]
        with self.lock:
            for execution_id in unstarted:
                self.inflight.pop(execution_id, None)
        clean = self._retry_db(lambda: claims.return_to_pending(self.node_id, unstarted))
        deadline = time.monotonic() + self.shutdown_grace
        while time.monotonic() < deadline:
            with self.lock:
                if not self.inflight:
                    break
            _pause(0.05)
        unwritten = self.recorder.stop(RECORDER_STOP_TIMEOUT)
        if unwritten:
            log.error(
                "could not record %s result(s) before stopping: %s", len(unwritten), unwritten
            )
        with self.lock:
            leftover = list(self.inflight)
        if leftover:
            log.warning("abandoning %s run(s) still going after the grace period", len(leftover))
            clean = clean and self._retry_db(
                lambda: claims.abandon_executions(
                    [self.node_id], "abandoned: node stopped before the run finished", leftover
                )
            )
        self.runner.release_all_job_locks()
        if self.pruner is not None:
            # Ends after its statement: resigning first would let the next leader start
            # pruning beside it.
            self.pruner.join(PRUNER_STOP_TIMEOUT)
            if self.pruner.is_alive():
                log.error("the history pruner did not end within %ss", PRUNER_STOP_TIMEOUT)
        self._retry_db(self.leadership.resign)
        # A claim that failed, or is still going, may hold runs nobody will start.
        clean = clean and claimer_stopped and self.claimer_error is None
        if clean:
            self._retry_db(lambda: liveness.mark_stopped(self.node_id))
        else:
            # Marked stopped, its unfinished runs would be nobody's: left active, the node
            # is declared dead once the database answers again, and they are recovered.
            log.error(
                "node %s leaves unfinished runs behind: the cluster will declare it dead "
                "and recover them",
                self.node_id,
            )
        log.info("node %s stopped", self.node_id)

    def _retry_db(self, action, attempts: int = 5) -> bool:
        for attempt in range(attempts):
            try:
                action()
                return True
            except CONNECTION_ERRORS as e:
                log.warning("database unavailable during shutdown (%s)", e)
                forget_connection()
                _pause(0.5 * (attempt + 1))
        return False
