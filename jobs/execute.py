"""Calling a run's target, the same way on a node's thread and on a Celery worker.

Around the call: the run's context (jobs.context: ids, fencing token, progress,
cancellation, lock loss), its captured output (jobs.capture), its secrets resolved at
the last moment, and its outcome classified: succeeded (with the return value kept as
JSON when it is JSON and not too large), failed, cancelled (the job stopped on a cancel
request, or the request came before it started).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from django.conf import settings

from jobs import capture, context, metrics
from jobs.claims import Reports, Result, Run
from jobs.context import Cancelled, RunSignals
from jobs.retry import retry_delay
from jobs.secrets import resolve_secrets, secret_values
from locks.leases import Lease

# Seconds between progress writes of one run ("at most about once a second").
PROGRESS_EVERY = 1.0
# Most progress milestones (a new progress message) kept in a run's timeline.
MAX_MILESTONES = 50


@dataclass
class LiveRun:
    """A run this process has taken: what the engine tells it, and what it reports."""

    run: Run
    signals: RunSignals
    output: capture.RunOutput
    progress_written: float = float("-inf")
    milestones: int = 0
    last_message: str | None = None
    #: Events to write with the next reports: (at, kind, actor, message).
    events: list[tuple[float, str, str, str]] = field(default_factory=list)

    def lock_lost(self, by: str, error: Exception) -> None:
        """The run's job lock expired or was taken over while it held it (called by the
        keepalive): the job can tell, and the execution will say so."""
        self.signals.lock_lost.set()
        with self.signals.lock:
            self.events.append((time.monotonic(), "lock_lost", by, str(error)))

    def reports(self, now: float, final: bool = False) -> Reports:
        """New log lines and events, and the latest progress if due (always when ``final``).

        Times are monotonic; the writer turns them into database time.
        """
        execution_id = self.run.id
        reports = Reports()
        reports.log_lines = [(execution_id, *line) for line in self.output.take()]
        with self.signals.lock:
            events, self.events = self.events, []
        reports.events = [(execution_id, *event) for event in events]
        if final or now - self.progress_written >= PROGRESS_EVERY:
            latest = self.signals.take_progress()
            if latest is not None:
                done, total, message, at = latest
                self.progress_written = now
                reports.progress.append((execution_id, done, total, message, at))
                metrics.record_progress(self.run.job.name, done, total)
                if message != self.last_message and self.milestones < MAX_MILESTONES:
                    self.last_message = message
                    self.milestones += 1
                    shown = f"{done:g}" + (f" of {total:g}" if total is not None else "")
                    text = f"{shown}: {message}" if message else shown
                    reports.events.append((execution_id, at, "progress", "", text))
        return reports

    def with_last_reports(self, result: Result) -> Result:
        """``result`` carrying what the run reported last (its final log lines and
        progress), written with it; most runs print nothing, and their result is not
        copied."""
        reports = self.reports(time.monotonic(), final=True)
        return replace(result, reports=reports) if reports else result


def live_run(run: Run) -> LiveRun:
    # Secret values the run's references resolve to are masked in what it prints or logs.
    secrets = secret_values(run.args, run.kwargs)
    output = capture.RunOutput(run.id, settings.SCHEDULER_LOG_LIMIT, secrets)
    return LiveRun(run, RunSignals(), output)


@dataclass(frozen=True)
class Outcome:
    state: str  # succeeded | failed | cancelled | timed_out
    ran_for: float | None  # None: the target was never called
    error: str = ""
    traceback: str = ""
    result: str | None = None
    note: str = ""


def call_target(
    live: LiveRun,
    call: Callable[[list, dict], object],
    lock_token: int | None = None,
    timeouts: tuple[type[BaseException], ...] = (),
    timeout_error: str = "",
) -> Outcome:
    """Call the target (``call(args, kwargs)``) as ``live``'s run, capturing its output.

    ``timeouts``: exceptions that mean the run's time limit struck (a Celery worker's
    soft limit), recorded ``timed_out`` with ``timeout_error``.
    """
    run, signals = live.run, live.signals
    if signals.cancel.is_set():
        error = f"cancelled by {signals.cancel_by}: {signals.cancel_reason} (before it started)"
        return Outcome("cancelled", None, error)
    job = run.job
    ctx = context.ExecutionContext(
        run.id, job.name, run.scheduled_for, run.attempt, run.fence, lock_token, signals
    )
    context_token = context.running_as(ctx)
    capture_token = capture.capturing(live.output)
    started = time.monotonic()
    value, state, error, tb = None, "succeeded", "", ""
    try:
        # Secret references become values here, in this context, and nowhere else.
        args, kwargs = resolve_secrets(run.args, run.kwargs)
        value = call(args, kwargs)
    except Cancelled as e:
        state, error = "cancelled", str(e)
    except timeouts:
        state, error = "timed_out", timeout_error
    except BaseException as e:  # the job's own failure, SystemExit included
        state, error, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
    finally:
        ran_for = time.monotonic() - started
        capture.done(capture_token)
        context.finished(context_token)
        live.output.close()
    result, note = encode_result(value) if state == "succeeded" else (None, "")
    return Outcome(state, ran_for, error, tb, result, note)


def encode_result(value) -> tuple[str | None, str]:
    """(the value as JSON text, or None; a note when it is not kept)."""
    if value is None:
        return None, ""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None, f"the target returned a {type(value).__name__}, which is not JSON: not kept"
    if "\\u0000" in text:
        return None, "the target's return value holds U+0000, which PostgreSQL cannot store"
    size = len(text.encode())
    limit = settings.SCHEDULER_RESULT_LIMIT
    if size > limit:
        return None, (
            f"the target returned {size} bytes of JSON, more than SCHEDULER_RESULT_LIMIT "
            f"({limit}): not kept"
        )
    return text, ""


def failure(
    run: Run,
    state: str,
    ran_for: float | None,
    error: str,
    tb: str = "",
    note: str = "",
    release: Lease | None = None,
) -> Result:
    """A failed or timed-out run's Result, with its retry if the job has attempts left."""
    job = run.job
    delay = retry_delay(run.attempt, job.max_attempts, job.retry_backoff)
    return Result(run.id, state, ran_for, 0.0, error, tb, delay, job.max_attempts, note, release)


def outcome_result(run: Run, outcome: Outcome, note: str, release: Lease | None) -> Result:
    """The Result to record for ``outcome``; ``note`` and ``release`` come from the job lock."""
    note = "\n".join(n for n in (outcome.note, note) if n)
    if outcome.state in ("succeeded", "cancelled"):
        return Result(
            run.id, outcome.state, outcome.ran_for, 0.0, outcome.error, note=note,
            release=release, result=outcome.result,
        )  # fmt: skip
    return failure(run, outcome.state, outcome.ran_for, outcome.error, outcome.traceback, note,
                   release)  # fmt: skip
