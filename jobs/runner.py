"""Running inline executions on a node's threads.

The node hands a run to the runner only when a thread is free for it (it claims no more
than it can start: see jobs/node.py) and only once the database has confirmed that the
node owns it (claims.CONFIRM_START, or the claim itself). Right before the target is
called, the thread checks the node's liveness lease: a node that was paused or cut off
since the confirmation may have been declared dead meanwhile, and its run handed to
another node, so it hands the run back to the node to be confirmed again instead.

Every run handed to a thread ends in exactly one Result for the recorder: success,
failure, a skip (forbid), or an error raised by this module itself, which is logged with
the execution id and counted, never lost inside the thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections

from jobs import context, joblocks, metrics, registry
from jobs.claims import Result, Run
from jobs.reconnect import CONNECTION_ERRORS, forget_connection
from jobs.retry import retry_delay
from locks import leases
from locks.liveness import LivenessLease

log = logging.getLogger("jobs.runner")

# How many recent run durations the prefetch estimate averages.
DURATION_WINDOW = 64


class Runner:
    """A pool of threads that run inline executions the node owns."""

    def __init__(
        self,
        node_id: str,
        threads: int,
        lease: LivenessLease,
        results: Callable[[Result], None],
        hand_back: Callable[[Run], None],
        freed: Callable[[], None],
        stopping: threading.Event,
    ):
        self.node_id = node_id
        self.threads = threads
        self.lease = lease
        #: Where every run's Result goes (the recorder's queue).
        self.results = results
        #: Called with a run the thread did not start: the node must confirm it again.
        self.hand_back = hand_back
        #: Called whenever a thread becomes free.
        self.freed = freed
        self.stopping = stopping
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="run")
        self.lock = threading.Lock()
        #: Runs handed to a thread that has not returned yet (by execution id).
        self.active: dict[int, Run] = {}
        #: Monotonic time each active run's target was called.
        self.started: dict[int, float] = {}
        self.timed_out: set[int] = set()
        #: Job locks held by runs of `forbid` jobs, by execution id.
        self.job_locks: dict[int, joblocks.HeldJobLock] = {}
        self.durations: deque[float] = deque(maxlen=DURATION_WINDOW)

    # --- the node's side ---------------------------------------------------------------

    def free_threads(self) -> int:
        with self.lock:
            return self.threads - len(self.active)

    def start(self, runs: list[Run]) -> None:
        """Hand confirmed runs to free threads (the caller made sure there are enough)."""
        with self.lock:
            if len(runs) > self.threads - len(self.active):
                raise RuntimeError("more runs than free threads")
            for run in runs:
                self.active[run.id] = run
        for run in runs:
            self.pool.submit(self._thread, run)

    def mean_run_seconds(self) -> float | None:
        """Mean duration of the last runs' targets, or None before the first has finished."""
        with self.lock:
            if not self.durations:
                return None
            return sum(self.durations) / len(self.durations)

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
            results.append(self._failure(run, "timed_out", ran_for, error, "", note, release))
        return results

    def release_all_job_locks(self) -> None:
        """At shutdown: let go of the job locks of runs still going after the grace."""
        with self.lock:
            held = list(self.job_locks)
        for execution_id in held:
            self._release_job_lock(execution_id)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- a pool thread -----------------------------------------------------------------

    def _thread(self, run: Run) -> None:
        result = None
        try:
            result = self._run(run)
        except CONNECTION_ERRORS as e:
            # Only while stopping: until then the lock steps retry until the database answers.
            log.error("execution #%s: database unavailable around the run: %s", run.id, e)
            result = self._failure(run, "failed", 0.0, f"database unavailable: {e}", "")
        except BaseException as e:
            # Nothing raised here may vanish into the pool: log it with the execution and
            # still record how the run ended.
            log.exception("execution #%s: unexpected error in the runner", run.id)
            metrics.record_internal_error("runner")
            error = f"internal error: {type(e).__name__}: {e}"
            result = self._failure(run, "failed", 0.0, error, traceback.format_exc())
        finally:
            if result is not None:
                self.results(result)
            with self.lock:
                self.active.pop(run.id, None)
                self.started.pop(run.id, None)
                self.timed_out.discard(run.id)
            self.freed()

    def _run(self, run: Run) -> Result | None:
        if not self.lease.fresh():
            # Paused or cut off for long enough that the node may have been declared dead
            # and this run given to another node: only the database can tell.
            log.warning("execution #%s: liveness lease ran out before it started; "
                        "confirming ownership again", run.id)  # fmt: skip
            self.hand_back(run)
            return None
        job = run.job
        if job.concurrency_policy == "forbid":
            skipped = self._take_job_lock(run)
            if skipped is not None:
                return skipped
        started = time.monotonic()
        with self.lock:
            self.started[run.id] = started
        state, error, tb = "succeeded", "", ""
        token = context.running_as(
            context.ExecutionContext(run.id, job.name, run.scheduled_for, run.attempt)
        )
        try:
            registry.get_target(job.target).func(*run.args, **run.kwargs)
        except BaseException as e:  # the job's own failure, SystemExit included
            state, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
        finally:
            context.finished(token)
            ran_for = time.monotonic() - started
            note, release = self._release_job_lock(run.id)
            _close_job_connections()
        with self.lock:
            self.durations.append(ran_for)
        if state == "succeeded":
            return Result(run.id, state, ran_for, 0.0, note=note, release=release)
        return self._failure(run, state, ran_for, error, tb, note, release)

    def _failure(
        self, run: Run, state: str, ran_for: float, error: str, tb: str,
        note: str = "", release: leases.Lease | None = None,
    ) -> Result:  # fmt: skip
        job = run.job
        delay = retry_delay(run.attempt, job.max_attempts, job.retry_backoff)
        return Result(run.id, state, ran_for, 0.0, error, tb, delay, job.max_attempts, note,
                      release)  # fmt: skip

    # --- job locks of `forbid` jobs -----------------------------------------------------

    def _take_job_lock(self, run: Run) -> Result | None:
        """Hold the job's lock for a `forbid` run; returns a skipped Result if it is held."""
        held, note = joblocks.take(run.job, self.node_id, run.id, self.stopping)
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


def _close_job_connections() -> None:
    # Job code may have used the ORM from this thread, and the lock steps did: close what
    # is broken or past its age, and tolerate a connection that is already gone.
    try:
        close_old_connections()
    except Exception:
        forget_connection()
