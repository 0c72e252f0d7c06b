"""Writing run results: one thread, batched statements, retried until they land.

Run threads put a Result on the queue and move on. The recorder writes whatever has
queued up in one transaction (claims.record_results), which also releases the job locks
whose own release failed with the connection, so such a lock never outlives its
recorded run. Times are written as "so long ago" and computed by PostgreSQL.

A lost connection keeps the batch and tries again on a new connection, for as long as
it takes (the writes are idempotent: guarded by state and node). Any other error is
logged and counted, and the batch is written one result at a time, so that one bad
result cannot hold back the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from django.db import transaction

from jobs import claims, metrics
from jobs.claims import Reports, Result
from jobs.reconnect import CONNECTION_ERRORS, forget_connection
from locks.leases import LockLost

log = logging.getLogger("jobs.recorder")

# Longest wait for more results before writing what has queued (also the timeout tick).
TICK = 0.05
# Wait after a lost connection before the batch is tried again.
RECONNECT_WAIT = 0.2
MAX_BATCH = 1000
# Seconds between collections of what runs reported (log lines, progress): a run's
# output shows up on its page about this late.
REPORT_EVERY = 0.5


def write_results(
    owner: str,
    batch: list[Result],
    reports: Reports | None = None,
    waited: list[float] | None = None,
) -> set[int]:
    """Record what runs reported, then their results (releasing the job locks they carry),
    in one transaction.

    ``owner`` is the node or worker the runs belong to; ``waited``, how long ago each
    result was made (its times are "so long ago" then). Returns the ids that took effect.
    """
    reports = reports or Reports()
    for result in batch:
        if result.reports:
            reports.extend(result.reports)
    if not reports and all(result.release is None for result in batch):
        # Only the results to write (the common case of quick runs that printed nothing):
        # record_results alone, one statement unless retries are queued with it.
        return claims.record_results(owner, batch, waited)
    with transaction.atomic():
        if reports:
            claims.record_reports(owner, reports)
        applied = claims.record_results(owner, batch, waited)
        for result in batch:
            if result.release is not None:
                try:
                    result.release.release()
                except LockLost:
                    pass  # expired and taken over, or force released: nothing left to free
    return applied


class Recorder(threading.Thread):
    """Writes run results, and what runs report while they go on, in batches; ``stop``
    flushes what is left."""

    def __init__(
        self,
        node_id: str,
        tick: Callable[[], list[Result]],
        written: Callable[[list[Result], set[int]], None],
        collect: Callable[[], Reports] = Reports,
    ):
        super().__init__(name="recorder", daemon=True)
        self.node_id = node_id
        #: Called every TICK: results it returns are recorded too (the runs' timeouts).
        self.tick = tick
        #: Called every REPORT_EVERY: what runs reported (log lines, progress), written too.
        self.collect = collect
        #: Called after each successful write with the batch and the ids that took effect.
        self.written = written
        self.queue: queue.SimpleQueue[Result | None] = queue.SimpleQueue()
        #: Results not yet written, by execution id, with when each was queued.
        self.pending: dict[int, tuple[Result, float]] = {}
        #: Reports not yet written.
        self.reports = Reports()
        self.next_report = 0.0
        self.stopping = False
        self.give_up = threading.Event()

    def put(self, result: Result) -> None:
        self.queue.put(result)

    def stop(self, timeout: float) -> list[int]:
        """Write what is queued, waiting at most ``timeout``; returns the ids left unwritten."""
        self.queue.put(None)
        self.join(timeout)
        self.give_up.set()
        self.join(1.0)
        return list(self.pending)

    def run(self) -> None:
        while not self.give_up.is_set():
            if self.stopping and not self.pending and not self.reports:
                break
            try:
                self._take_queued()
                for result in self.tick():
                    self.pending[result.execution_id] = (result, time.monotonic())
                if time.monotonic() >= self.next_report or self.stopping:
                    self.next_report = time.monotonic() + REPORT_EVERY
                    self.reports.extend(self.collect())
                if self.pending or self.reports:
                    self._flush()
            except BaseException:
                # A bug here would silently stop every result from being written: log it,
                # count it, and keep going.
                log.exception("recorder: unexpected error")
                metrics.record_internal_error("recorder")
                self.give_up.wait(RECONNECT_WAIT)
        forget_connection()

    def _take_queued(self) -> None:
        try:
            items = [self.queue.get(timeout=TICK)]
        except queue.Empty:
            return
        while len(items) < MAX_BATCH:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        for item in items:
            if item is None:
                self.stopping = True
            elif item.execution_id not in self.pending:
                self.pending[item.execution_id] = (item, now)
            elif item.reports:
                # The first final result wins (a timed-out run's late result changes
                # nothing), but what the run printed to its end is kept.
                self.reports.extend(item.reports)

    def _flush(self) -> None:
        now = time.monotonic()
        batch = [result for result, _ in self.pending.values()]
        waited = [now - queued_at for _, queued_at in self.pending.values()]
        reports, self.reports = self.reports, Reports()
        try:
            try:
                applied = write_results(self.node_id, batch, reports, waited)
            except CONNECTION_ERRORS:
                raise
            except Exception:
                log.exception("recording %s result(s) failed; writing them one by one", len(batch))
                metrics.record_internal_error("recorder")
                forget_connection()
                applied = self._write_one_by_one(batch, waited)
        except CONNECTION_ERRORS as e:
            # The writes are idempotent (guarded by state and node; log lines numbered),
            # so everything is retried.
            log.warning("could not record %s result(s) (%s); will retry", len(batch), e)
            forget_connection()
            reports.extend(self.reports)
            self.reports = reports
            self.give_up.wait(RECONNECT_WAIT)
            return
        self.pending = {}
        self.written(batch, applied)

    def _write_one_by_one(self, batch: list[Result], waited: list[float]) -> set[int]:
        """After an unexpected error: write each result alone, so one cannot block the rest.

        A result that still fails is written as a bare failure naming the problem; if even
        that fails it is dropped with an error in the log (the run stays recorded as
        running until its node stops or is declared dead). A lost connection is raised.
        """
        applied: set[int] = set()
        for result, ago in zip(batch, waited, strict=True):
            bare = Result(
                result.execution_id,
                "failed",
                result.started_ago,
                result.finished_ago,
                "could not record the result of this run",
            )
            for attempt in (result, bare):
                try:
                    applied |= write_results(self.node_id, [attempt], waited=[ago])
                    break
                except CONNECTION_ERRORS:
                    raise
                except Exception:
                    log.exception("execution #%s: recording its result failed", result.execution_id)
                    forget_connection()
        return applied
