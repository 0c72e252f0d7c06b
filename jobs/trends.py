"""Trends for the dashboard, read from the run rollup (jobs.models.MinuteRollup and
HourRollup), and the
small bounded execution reads that sit beside them (a job's last runs, its day of runs).

Nothing here scans a day of executions: finished runs are counted from the rollup's hour
and minute rows; only unfinished runs (few) and the first, partial minute of a window
are counted on jobs_execution, each through an index. Every "now" is PostgreSQL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction

from jobs.models import LAG_BUCKET_BOUNDS_MS, Execution, HourRollup, Job, MinuteRollup

FINAL_STATES = Execution.FINAL_STATES
UNFINISHED_STATES = ("pending", "dispatched", "running")
FAILED_STATES = ("failed", "timed_out", "abandoned")
#: The states a chart stacks, bottom up, and the order of its legend.
CHART_STATES = ("succeeded", "failed", "timed_out", "abandoned", "cancelled", "skipped")

# (state, count) of executions created in the last %(hours)s hours, as the overview
# always counted them, without reading the window's executions:
# - unfinished ones directly (execution_state_recent_idx: few rows, never 'succeeded');
# - finished ones of the window's first, partial minute directly (execution_recent_idx,
#   one minute of rows);
# - the rest of the first hour from the rollup's minute rows, later hours from its hour
#   rows (rollup_bucket_idx). Buckets are UTC, like the rollup's.
STATE_COUNTS = """
WITH w AS (
    SELECT now() - make_interval(hours => %(hours)s) AS start_at,
           date_trunc('minute', now() - make_interval(hours => %(hours)s), 'UTC')
               + interval '1 minute' AS minutes_from,
           date_trunc('hour', now() - make_interval(hours => %(hours)s), 'UTC')
               + interval '1 hour' AS hours_from
)
SELECT state, sum(n)::bigint FROM (
    SELECT e.state, count(*) AS n FROM jobs_execution e, w
    WHERE e.state IN ('pending', 'dispatched', 'running') AND e.created_at >= w.start_at
    GROUP BY e.state
    UNION ALL
    SELECT e.state, count(*) FROM jobs_execution e, w
    WHERE e.created_at >= w.start_at AND e.created_at < w.minutes_from
      AND e.state NOT IN ('pending', 'dispatched', 'running')
    GROUP BY e.state
    UNION ALL
    SELECT r.state, sum(r.runs) FROM jobs_minuterollup r, w
    WHERE r.bucket >= w.minutes_from AND r.bucket < w.hours_from
    GROUP BY r.state
    UNION ALL
    SELECT r.state, sum(r.runs) FROM jobs_hourrollup r, w
    WHERE r.bucket >= w.hours_from
    GROUP BY r.state
) parts
GROUP BY state
"""

HIST_SUMS = ", ".join(f"sum(r.lag_{i})" for i in range(len(LAG_BUCKET_BOUNDS_MS) + 1))

# The rollup's rows of one window, summed per bin and state. Bins are aligned on a fixed
# origin so a bin holds the same hours on every load; the last bin holds now.
SERIES = f"""
SELECT date_bin(%(bin)s, r.bucket, %(origin)s) AS bin, r.state,
       sum(r.runs), sum(r.timed_runs), sum(r.duration_ms_sum), max(r.duration_ms_max),
       sum(r.lag_fires), max(r.lag_ms_max), {HIST_SUMS}
FROM {{table}} r
WHERE r.bucket >= %(start)s {{job_filter}}
GROUP BY 1, 2
"""
BIN_ORIGIN = datetime.fromisoformat("2000-01-01T00:00:00+00:00")

# The last %(n)s executions of each job, newest first: one index range per job
# (execution_job_recent_idx), one round trip for the whole list of jobs.
RECENT_RUNS = """
SELECT e.id, e.job_id, e.state, e.origin, e.created_at, e.finished_at - e.started_at
FROM unnest(%(ids)s::bigint[]) AS j (id)
CROSS JOIN LATERAL (
    SELECT id, job_id, state, origin, created_at, started_at, finished_at
    FROM jobs_execution
    WHERE job_id = j.id
    ORDER BY created_at DESC, id DESC
    LIMIT %(n)s
) e
"""


@dataclass(frozen=True)
class Window:
    key: str
    label: str
    span: timedelta
    bin: timedelta

    @property
    def table(self) -> str:
        # Hour rows for bins of an hour or more: a fraction of the minute rows to read.
        model = HourRollup if self.bin >= timedelta(hours=1) else MinuteRollup
        return model._meta.db_table


OVERVIEW_WINDOWS = {
    "24h": Window("24h", "24 hours", timedelta(hours=24), timedelta(hours=1)),
    "7d": Window("7d", "7 days", timedelta(days=7), timedelta(hours=6)),
}
JOB_WINDOWS = {
    "24h": Window("24h", "24 hours", timedelta(hours=24), timedelta(minutes=30)),
    "7d": Window("7d", "7 days", timedelta(days=7), timedelta(hours=6)),
}


@dataclass
class Bin:
    start: datetime
    runs: dict[str, int] = field(default_factory=dict)
    timed_runs: int = 0
    duration_ms_sum: float = 0.0
    duration_ms_max: float | None = None
    lag_fires: int = 0
    lag_ms_max: float | None = None
    lag_hist: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKET_BOUNDS_MS) + 1))

    @property
    def finished(self) -> int:
        return sum(self.runs.values())

    @property
    def failures(self) -> int:
        return sum(self.runs.get(s, 0) for s in FAILED_STATES)

    @property
    def failure_rate(self) -> float | None:
        """Failed, timed-out or abandoned runs among those that ran to an end (cancelled
        and skipped runs are left out: they say nothing about the job's health)."""
        ended = self.failures + self.runs.get("succeeded", 0)
        return self.failures / ended if ended else None

    @property
    def success_rate(self) -> float | None:
        rate = self.failure_rate
        return None if rate is None else 1 - rate

    @property
    def duration_ms_avg(self) -> float | None:
        return self.duration_ms_sum / self.timed_runs if self.timed_runs else None

    @property
    def lag_ms_p95(self) -> float | None:
        return histogram_percentile(self.lag_hist, 0.95, self.lag_ms_max)


@dataclass
class Series:
    window: Window
    bins: list[Bin]
    end: datetime  # the end of the last bin

    def total(self, state: str) -> int:
        return sum(b.runs.get(state, 0) for b in self.bins)

    @property
    def finished(self) -> int:
        return sum(b.finished for b in self.bins)

    @property
    def failure_rate(self) -> float | None:
        failures = sum(b.failures for b in self.bins)
        ended = failures + self.total("succeeded")
        return failures / ended if ended else None

    @property
    def lag_ms_p95(self) -> float | None:
        hist = [sum(column) for column in zip(*(b.lag_hist for b in self.bins), strict=True)]
        worst = [b.lag_ms_max for b in self.bins if b.lag_ms_max is not None]
        return histogram_percentile(hist, 0.95, max(worst) if worst else None)


def histogram_percentile(hist: list[int], q: float, observed_max: float | None) -> float | None:
    """The ``q`` quantile of a lag histogram (slots of LAG_BUCKET_BOUNDS_MS), interpolated
    linearly inside its slot; the open top slot ends at the largest lag observed."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    lowers = (0, *LAG_BUCKET_BOUNDS_MS)
    for slot, count in enumerate(hist):
        if count > 0 and seen + count >= rank:
            lower = lowers[slot]
            top = slot == len(LAG_BUCKET_BOUNDS_MS)
            upper = (observed_max or lower) if top else LAG_BUCKET_BOUNDS_MS[slot]
            value = lower + (upper - lower) * (rank - seen) / count
            return value if observed_max is None else min(value, observed_max)
        seen += count
    return observed_max


def state_counts(hours: int = 24) -> list[tuple[str, int]]:
    """(state, count) of executions created in the last ``hours``, every state listed:
    the numbers a count of those executions gives, read from the rollup."""
    with connection.cursor() as cursor:
        cursor.execute(STATE_COUNTS, {"hours": hours})
        rows = dict(cursor.fetchall())
    return [(state, int(rows.get(state, 0))) for state in Execution.State.values]


def series(window: Window, job: Job | None = None) -> Series:
    """The window's bins, oldest first, every bin present (empty ones too), for one job
    or for all of them."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Every job's rows of a week (~170k at 1,000 jobs) are summed faster by one process
        # than split over parallel workers on a small server (110 vs 150 ms at 10M runs).
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        cursor.execute("SELECT date_bin(%s, now(), %s)", [window.bin, BIN_ORIGIN])
        end = cursor.fetchone()[0] + window.bin
        start = end - window.span
        params = {"bin": window.bin, "origin": BIN_ORIGIN, "start": start}
        if job is not None:
            params["job"] = job.pk
        # Only fixed text is formatted in: a model's table and a parameter's placeholder.
        sql = SERIES.format(
            table=window.table, job_filter="AND r.job_id = %(job)s" if job is not None else ""
        )
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    count = int(window.span / window.bin)
    bins = [Bin(start + i * window.bin) for i in range(count)]
    by_start = {b.start: b for b in bins}
    for when, state, runs, timed, dur_sum, dur_max, lag_fires, lag_max, *hist in rows:
        b = by_start.get(when)
        if b is None:
            continue
        b.runs[state] = b.runs.get(state, 0) + int(runs)
        b.timed_runs += int(timed)
        b.duration_ms_sum += float(dur_sum)
        b.duration_ms_max = _max(b.duration_ms_max, dur_max)
        b.lag_fires += int(lag_fires)
        b.lag_ms_max = _max(b.lag_ms_max, lag_max)
        b.lag_hist = [a + int(h) for a, h in zip(b.lag_hist, hist, strict=True)]
    return Series(window=window, bins=bins, end=end)


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


@dataclass(frozen=True)
class RunMark:
    """One run in a strip of a job's last runs."""

    id: int
    job_id: int
    state: str
    origin: str
    created_at: datetime
    duration: timedelta | None


def recent_runs_by_job(job_ids, n: int = 50) -> dict[int, list[RunMark]]:
    """The last ``n`` runs of each job, oldest first (a strip reads left to right), in one
    query whatever the number of jobs. Jobs without runs map to an empty list."""
    ids = [int(i) for i in job_ids]
    strips: dict[int, list[RunMark]] = {i: [] for i in ids}
    if not ids or n <= 0:
        return strips
    with connection.cursor() as cursor:
        cursor.execute(RECENT_RUNS, {"ids": ids, "n": n})
        for row in cursor.fetchall():
            strips[row[1]].append(RunMark(*row))
    for marks in strips.values():
        marks.sort(key=lambda m: (m.created_at, m.id))
    return strips


@dataclass(frozen=True)
class RunSpan:
    """One run of the job-page timeline: from its start (or creation) to its end (or now)."""

    id: int
    state: str
    start: datetime
    end: datetime


DAY_OF_RUNS_LIMIT = 500


def runs_of_last_day(job: Job, limit: int = DAY_OF_RUNS_LIMIT) -> tuple[list[RunSpan], datetime]:
    """The job's runs created in the last 24 hours (at most ``limit``, the newest), and
    the database's now that the timeline ends at."""
    sql = """
    SELECT id, state, coalesce(started_at, created_at),
           coalesce(finished_at, greatest(now(), coalesce(started_at, created_at))), now()
    FROM jobs_execution
    WHERE job_id = %s AND created_at >= now() - interval '24 hours'
    ORDER BY created_at DESC
    LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [job.pk, limit])
        rows = cursor.fetchall()
        if not rows:
            cursor.execute("SELECT now()")
            return [], cursor.fetchone()[0]
    now = rows[0][4]
    return [RunSpan(*row[:4]) for row in reversed(rows)], now
