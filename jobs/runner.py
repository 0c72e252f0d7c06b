"""Running inline executions on a node's threads.

The node queues the runs it claimed; each of the runner's threads takes the next one,
makes sure the node still owns it, runs it and hands its Result to the recorder.

Ownership before action. A run the claim itself recorded as running (claimed for a free
thread, or a quick run the node expected to start within SCHEDULER_START_WINDOW) starts
at once. A run claimed further ahead of a thread is still ``dispatched``: the thread
confirms it first with claims.CONFIRM_START, and the threads that want to start runs at
the same moment share one UPDATE (StartConfirmer). Either way
the node's liveness lease must be fresh: a node that was paused or cut off may have been
declared dead meanwhile, and then only a heartbeat can tell whether its runs are still
its own.

Every run a thread takes ends in exactly one Result: success, failure, a skip (forbid),
or an error raised by this module itself, which is logged with the execution id and
counted, never lost in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections

from jobs import claims, joblocks, metrics, registry
from jobs.claims import Reports, Result, Run
from jobs.execute import LiveRun, call_target, failure, live_run, outcome_result
from jobs.reconnect import CONNECTION_ERRORS, forget_connection, retry_on_disconnect
from locks import leases
from locks.liveness import LivenessLease

log = logging.getLogger("jobs.runner")

# How many recent run durations the prefetch estimate averages.
DURATION_WINDOW = 64
# Most runs a thread takes from the queue at once (when runs are quick).
MAX_TAKE = 50
# A thread takes at most this share of the queue: quick runs are confirmed in a few large
# UPDATEs (each a commit the threads wait for) rather than one per thread, and another
# thread still finds runs to confirm while the first runs its own.
TAKE_SHARE = 2


class Runner:
    """A fixed set of threads that run the inline executions the node queues."""

    def __init__(
        self,
        node_id: str,
        threads: int,
        lease: LivenessLease,
        results: Callable[[Result], None],
        prove_alive: Callable[[], bool],
        dropped: Callable[[list[Run], str], None],
        freed: Callable[[], None],
        quick: float,
    ):
        self.node_id = node_id
        self.threads = threads
        self.lease = lease
        #: Where every run's Result goes (the recorder's queue).
        self.results = results
        #: Heartbeat now; False if the node had been declared dead (it then rejoins).
        self.prove_alive = prove_alive
        #: Called with runs not started because the node no longer owns them.
        self.dropped = dropped
        #: Called whenever a thread becomes free.
        self.freed = freed
        #: Seconds under which runs count as quick (SCHEDULER_PREFETCH_WAIT).
        self.quick = quick
        self.stopping = threading.Event()
        self.confirmer = StartConfirmer(node_id, self.stopping)
        self.lock = threading.Lock()
        self.has_work = threading.Condition(self.lock)
        #: Claimed runs waiting for a thread, oldest first.
        self.ready: deque[Run] = deque()
        #: Runs a thread is running (by execution id).
        self.active: dict[int, Run] = {}
        #: Threads busy with runs, and runs threads have taken but not started yet.
        self.busy = 0
        self.held = 0
        #: Monotonic time each active run's target was called.
        self.started: dict[int, float] = {}
        self.timed_out: set[int] = set()
        #: Job locks held by runs of `forbid` jobs, by execution id.
        self.job_locks: dict[int, joblocks.HeldJobLock] = {}
        self.durations: deque[float] = deque(maxlen=DURATION_WINDOW)
        #: Every run queued or going on here (by execution id): its signals and output.
        self.live: dict[int, LiveRun] = {}
        #: Each job's typical run duration (a moving average), by job id.
        self.job_seconds: dict[int, float] = {}
        self.workers = [
            threading.Thread(target=self._work, name=f"run-{i}", daemon=True)
            for i in range(threads)
        ]

    # --- the node's side ---------------------------------------------------------------

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def queue(self, runs: list[Run], generation: int) -> None:
        """Queue claimed runs; those claimed as running go first (free threads await them).

        ``generation`` is the lease's when the claim began. If the node was declared dead
        and rejoined since, the claim may have committed before the cluster took its runs
        back: none of them starts before it is confirmed again.
        """
        lives = {run.id: live_run(run) for run in runs}
        with self.lock:
            # Checked under the lock that take_waiting takes after the lease expired: runs
            # queued before that are taken back with the rest, runs queued after it are
            # confirmed first.
            if generation != self.lease.generation:
                for run in runs:
                    run.state = "dispatched"
            self.live.update(lives)
            self.ready.extendleft(reversed([r for r in runs if r.state == "running"]))
            self.ready.extend(r for r in runs if r.state != "running")
            self.has_work.notify(len(runs))

    def signal(self, execution_id: int, cancel: tuple[str, str] | None, lock_lost: bool) -> None:
        """Tell a run of this node that it was asked to stop, or lost its job lock."""
        with self.lock:
            live = self.live.get(execution_id)
        if live is None:
            return
        if cancel is not None and not live.signals.cancel.is_set():
            live.signals.request_cancel(*cancel)
        if lock_lost:
            live.signals.lock_lost.set()

    def live_ids(self) -> list[int]:
        with self.lock:
            return list(self.live)

    def collect(self) -> Reports:
        """What the runs going on have reported since the last collect."""
        now = time.monotonic()
        reports = Reports()
        with self.lock:
            lives = list(self.live.values())
        for live in lives:
            reports.extend(live.reports(now))
        return reports

    def idle_threads(self) -> int:
        with self.lock:
            return self.threads - self.busy

    def waiting(self) -> int:
        """Claimed runs not started yet: queued, or taken by a thread that will run them."""
        with self.lock:
            return len(self.ready) + self.held

    def take_waiting(self) -> list[Run]:
        """Take back every run no thread has started (the node gives them away)."""
        with self.lock:
            runs = list(self.ready)
            self.ready.clear()
            for run in runs:
                self.live.pop(run.id, None)
        return runs

    def busy_for(self) -> float:
        """How long the longest-running target has been running (0 if none)."""
        with self.lock:
            oldest = min(self.started.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def mean_run_seconds(self) -> float | None:
        """Mean duration of the last runs' targets, or None before the first has finished."""
        with self.lock:
            if not self.durations:
                return None
            return sum(self.durations) / len(self.durations)

    def quick_jobs(self, seconds: float) -> dict[int, float]:
        """The typical run duration of each job whose runs take at most ``seconds``."""
        with self.lock:
            return {job: mean for job, mean in self.job_seconds.items() if mean <= seconds}

    def expired(self) -> list[Result]:
        """Results for runs past their job's timeout (their lock released); once per run.

        The thread cannot be killed: it goes on with the job and keeps its place until
        the job returns, and its late result is refused by the recorder's state guard.
        """
        now = time.monotonic()
        late = []
        with self.lock:
            for execution_id, started in self.started.items():
                run = self.active.get(execution_id)
                if run is None or execution_id in self.timed_out or not run.job.timeout:
                    continue
                if now - started > run.job.timeout:
                    self.timed_out.add(execution_id)
                    late.append((run, now - started))
        results = []
        for run, ran_for in late:
            note, release = self._release_job_lock(run.id)
            error = f"timed out after {run.job.timeout}s"
            results.append(failure(run, "timed_out", ran_for, error, "", note, release))
        return results

    def stop(self) -> None:
        """Let each thread finish its current run and exit (queued runs stay queued)."""
        with self.lock:
            self.stopping.set()
            self.has_work.notify_all()

    def release_all_job_locks(self) -> None:
        """At shutdown: let go of the job locks of runs still going after the grace."""
        with self.lock:
            held = list(self.job_locks)
        for execution_id in held:
            self._release_job_lock(execution_id)

    # --- a runner thread ---------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._take_and_run()
        finally:
            forget_connection()

    def _take_and_run(self) -> None:
        while True:
            with self.lock:
                while not self.ready and not self.stopping.is_set():
                    self.has_work.wait()
                if self.stopping.is_set():
                    return
                runs = self._take()
                generation = self.lease.generation
                self.busy += 1
                self.held += len(runs)
            try:
                self._run_all(runs, generation)
            finally:
                with self.lock:
                    self.busy -= 1
                self.freed()

    def _take(self) -> list[Run]:
        """The next queued run, and after it the runs this thread expects to start within
        PREFETCH_WAIT (jobs known to be quick), up to its share of the queue: they are
        confirmed together. Call with the lock held and the queue not empty."""
        fair = min(MAX_TAKE, -(-len(self.ready) // min(TAKE_SHARE, self.threads)))
        runs = [self.ready.popleft()]
        spent = self.job_seconds.get(runs[0].job_id, self.quick)
        while self.ready and len(runs) < fair:
            expected = self.job_seconds.get(self.ready[0].job_id)
            if expected is None or spent + expected > self.quick:
                break
            runs.append(self.ready.popleft())
            spent += expected
        return runs

    def _run_all(self, runs: list[Run], generation: int) -> None:
        """Run what this thread took, one after the other, each only while still owned.

        ``generation`` is the lease's when the runs were taken: if the node was declared
        dead and rejoined since, what was confirmed before must be confirmed again.
        """
        queue = deque(self._owned(runs))
        while queue:
            if not self.lease.fresh() or self.lease.generation != generation:
                generation = self.lease.generation
                for run in queue:
                    run.state = "dispatched"
                queue = deque(self._owned(list(queue)))
                continue
            self._run_one(queue.popleft())

    def _owned(self, runs: list[Run]) -> list[Run]:
        """The runs this thread may start: the node is alive (its lease is fresh, or a
        heartbeat says so) and each run is confirmed as this node's."""
        if not self.lease.fresh():
            # Paused or cut off for long enough that the node may have been declared dead
            # and its runs given away: ask the database before starting anything.
            if not self.prove_alive():
                self._forget(runs, "the node had been declared dead")
                return []
            for run in runs:
                run.state = "dispatched"  # confirm it again, whatever the claim said
        unconfirmed = [run.id for run in runs if run.state != "running"]
        if not unconfirmed:
            return runs  # the claim recorded them running (claims.StartPlan)
        try:
            fences = self.confirmer.confirm(unconfirmed)
        except CONNECTION_ERRORS:
            # Only while stopping: the node gives back whatever is still queued.
            with self.lock:
                self.ready.extendleft(reversed(runs))
                self.held -= len(runs)
            return []
        lost = [run for run in runs if run.state != "running" and run.id not in fences]
        self._forget(lost, "it was no longer this node's")
        for run in runs:
            if run.id in fences:
                run.fence, run.state = fences[run.id], "running"
        return [run for run in runs if run.state == "running"]

    def _forget(self, runs: list[Run], reason: str) -> None:
        if runs:
            with self.lock:
                self.held -= len(runs)
                for run in runs:
                    self.live.pop(run.id, None)
            self.dropped(runs, reason)

    def _run_one(self, run: Run) -> None:
        with self.lock:
            self.held -= 1
            self.active[run.id] = run
        result = None
        try:
            result = self._run(run)
        except BaseException as e:
            # Nothing raised here may vanish with the thread: log it with the execution
            # and still record how the run ended.
            log.exception("execution #%s: unexpected error in the runner", run.id)
            metrics.record_internal_error("runner")
            error = f"internal error: {type(e).__name__}: {e}"
            result = failure(run, "failed", 0.0, error, traceback.format_exc())
        finally:
            with self.lock:
                live = self.live.pop(run.id, None)
            if result is not None:
                self.results(live.with_last_reports(result) if live is not None else result)
            if live is not None and live.signals.progress is not None:
                metrics.forget_progress(run.job.name)
            with self.lock:
                self.active.pop(run.id, None)
                self.started.pop(run.id, None)
                self.timed_out.discard(run.id)

    def _run(self, run: Run) -> Result:
        job = run.job
        with self.lock:
            live = self.live[run.id]
        if job.concurrency_policy == "forbid" and not live.signals.cancel.is_set():
            skipped = self._take_job_lock(run)
            if skipped is not None:
                return skipped
        with self.lock:
            self.started[run.id] = time.monotonic()
            held = self.job_locks.get(run.id)
        target = registry.get_target(job.target).func
        try:
            outcome = call_target(
                live, lambda args, kwargs: target(*args, **kwargs), held and held.lease.token
            )
        finally:
            note, release = self._release_job_lock(run.id)
            _tidy_connection()
        if outcome.ran_for is not None:
            with self.lock:
                self.durations.append(outcome.ran_for)
                mean = self.job_seconds.get(job.id)
                self.job_seconds[job.id] = (
                    outcome.ran_for if mean is None else 0.8 * mean + 0.2 * outcome.ran_for
                )
        return outcome_result(run, outcome, note, release)

    # --- job locks of `forbid` jobs -----------------------------------------------------

    def _take_job_lock(self, run: Run) -> Result | None:
        """Hold the job's lock for a `forbid` run; returns a skipped Result if it is held."""

        with self.lock:
            live = self.live[run.id]
        # A force release by an operator is recorded by the release itself; an expiry or a
        # takeover is found by the keepalive.
        held, note = joblocks.take(
            run.job, self.node_id, run.id, on_lost=lambda e: live.lock_lost(self.node_id, e)
        )
        if held is None:
            return Result(run.id, "skipped", None, 0.0, note=note)
        with self.lock:
            self.job_locks[run.id] = held
        return None

    def _release_job_lock(self, execution_id: int) -> tuple[str, leases.Lease | None]:
        """Release a run's job lock if it still holds one (see joblocks.release)."""
        with self.lock:
            held = self.job_locks.pop(execution_id, None)
        if held is None:
            return "", None  # no lock, or released already (the run timed out)
        return joblocks.release(held, execution_id)


@dataclass
class _Slot:
    """One thread's request in StartConfirmer."""

    done: threading.Event
    ids: set[int]
    fences: dict[int, int] = field(default_factory=dict)
    error: BaseException | None = None
    #: Set when the thread is handed the job of sending the next confirmation.
    lead: bool = False

    def outcome(self) -> dict[int, int]:
        if self.error is not None:
            raise self.error
        return self.fences


class StartConfirmer:
    """Confirms the starts of many threads' runs with one CONFIRM_START.

    A thread that finds no confirmation in flight sends one for every run waiting by
    then; threads that ask meanwhile wait, and the first of them sends the next one for
    all that have gathered. One thread idle costs one round trip; eight threads turning
    quick runs over share theirs. No thread waits longer than two round trips.
    """

    def __init__(self, node_id: str, stopping: threading.Event):
        self.node_id = node_id
        self.stopping = stopping
        self.lock = threading.Lock()
        self.waiting: list[_Slot] = []
        self.busy = False

    def confirm(self, execution_ids: list[int]) -> dict[int, int]:
        """Those of the runs confirmed as this node's, with their fencing tokens.

        Retries while the connection is lost; raises the connection error only once the
        node is stopping (the runs may or may not be confirmed then: confirming again is
        harmless, and the node gives unstarted runs back either way).
        """
        slot = _Slot(threading.Event(), set(execution_ids))
        with self.lock:
            self.waiting.append(slot)
            lead = not self.busy
            self.busy = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return slot.outcome()
        with self.lock:
            batch, self.waiting = self.waiting, []
        ids = sorted(set().union(*(waiting.ids for waiting in batch)))
        confirmed: dict[int, int] = {}
        error = None
        try:
            confirmed = retry_on_disconnect(
                lambda: claims.confirm_start(self.node_id, ids),
                "confirming run starts",
                stopping=self.stopping,
            )
        except CONNECTION_ERRORS as e:
            error = e
        with self.lock:
            for waiting in batch:
                waiting.fences = {i: confirmed[i] for i in waiting.ids if i in confirmed}
                waiting.error = error
                if waiting is not slot:
                    waiting.done.set()
            if self.waiting:
                self.waiting[0].lead = True
                self.waiting[0].done.set()
            else:
                self.busy = False
        metrics.record_start_confirmation(len(ids))
        return slot.outcome()


def _tidy_connection() -> None:
    """After a run: drop this thread's connection if anything went wrong on it.

    Job code may have used the ORM from this thread, and the job lock steps did. A healthy
    connection is kept for the thread's next start confirmation (CONN_MAX_AGE, meant for
    web requests, would otherwise open a new connection for every run).
    """
    # Once through the proxy: each of its attribute reads looks the connection up again.
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.connection is not None and (wrapper.errors_occurred or wrapper.in_atomic_block):
        forget_connection()
