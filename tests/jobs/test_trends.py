"""The run rollup behind the trends: kept right by the database whatever writes a result,
equal to a count of the executions, pruned by its own retention; and the trend reads."""

from __future__ import annotations

import importlib
import json
from bisect import bisect_right
from collections import defaultdict
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from controlplane import dashboard
from jobs import actions, claims, history, trends
from jobs.models import (
    LAG_BUCKET_BOUNDS_MS,
    Execution,
    HourRollup,
    MinuteRollup,
    Trigger,
    database_now,
    queue_manual_run,
)
from jobs.node import Node
from tests.conftest import wait_for
from tests.jobs.factories import make_execution, make_job

rollup_migration = importlib.import_module("jobs.migrations.0013_dashboard_rollup")


def expected_rollup() -> dict:
    """What the rollup must hold, computed from the executions themselves."""
    expected = defaultdict(lambda: {"runs": 0, "timed": 0, "dur": 0.0, "lag": 0, "hist": None})
    for e in Execution.objects.filter(state__in=Execution.FINAL_STATES):
        for grain in ("minute", "hour"):
            bucket = e.created_at.replace(second=0, microsecond=0)
            if grain == "hour":
                bucket = bucket.replace(minute=0)
            row = expected[(e.job_id, grain, bucket, e.state)]
            row["runs"] += 1
            if row["hist"] is None:
                row["hist"] = [0] * (len(LAG_BUCKET_BOUNDS_MS) + 1)
            if e.started_at and e.finished_at:
                row["timed"] += 1
                row["dur"] += (e.finished_at - e.started_at).total_seconds() * 1000
            if e.origin == "schedule" and e.dispatched_at:
                row["lag"] += 1
                lag_ms = (e.dispatched_at - e.scheduled_for).total_seconds() * 1000
                row["hist"][bisect_right(LAG_BUCKET_BOUNDS_MS, lag_ms)] += 1
    return dict(expected)


def assert_rollup_matches_executions() -> None:
    expected = expected_rollup()
    actual = {}
    for r in rollup_rows():
        if r.runs == 0:
            # A contribution moved away leaves a row of zeros, nothing else.
            assert (r.timed_runs, r.lag_fires, sum(r.lag_ms_hist)) == (0, 0, 0)
            assert abs(r.duration_ms_sum) < 1e-6
            continue
        actual[(r.job_id, r.grain, r.bucket, r.state)] = r
    assert set(actual) == set(expected)
    for key, want in expected.items():
        row = actual[key]
        assert (row.runs, row.timed_runs, row.lag_fires) == (
            want["runs"],
            want["timed"],
            want["lag"],
        )
        assert row.duration_ms_sum == pytest.approx(want["dur"], abs=0.01)
        assert row.lag_ms_hist == want["hist"]


def rollup_rows() -> list:
    """Every rollup row, each with its ``grain``: "minute" or "hour"."""
    rows = []
    for grain, model in (("minute", MinuteRollup), ("hour", HourRollup)):
        for row in model.objects.order_by("id"):
            row.grain = grain
            rows.append(row)
    return rows


def rollup_values() -> list[dict]:
    return [
        *MinuteRollup.objects.order_by("id").values(),
        *HourRollup.objects.order_by("id").values(),
    ]


def direct_state_counts(hours: int = 24) -> list[tuple[str, int]]:
    since = database_now() - timedelta(hours=hours)
    counts = Execution.objects.filter(created_at__gte=since)
    return [(s, counts.filter(state=s).count()) for s in Execution.State.values]


# --- the rollup follows every path that records a result -------------------------


@pytest.fixture
def node(transactional_db, settings):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    node = Node(node_id="trend-node", batch=50, threads=4)
    node.start()
    yield node
    node.stop()
    node.shutdown()


def test_the_rollup_counts_what_a_real_node_records_on_every_path(node):
    ok = make_job("ok", "demo.noop")
    trigger = Trigger.objects.create(job=ok, kind="interval", interval=60)
    Trigger.objects.filter(pk=trigger.pk).update(next_fire_at=database_now() - timedelta(seconds=1))
    skipper = make_job("skipper", "demo.noop")
    missed = Trigger.objects.create(
        job=skipper, kind="interval", interval=60, misfire_policy="skip", misfire_grace=5
    )
    Trigger.objects.filter(pk=missed.pk).update(
        next_fire_at=database_now() - timedelta(seconds=150)
    )
    failing = queue_manual_run(make_job("bad", "demo.fail"))
    slow = queue_manual_run(make_job("slow", "demo.sleep", kwargs={"seconds": 3}, timeout=1))
    cancelled = actions.cancel_execution(
        queue_manual_run(make_job("unwanted", "demo.noop")), None, "not needed"
    )
    ghost = make_execution(make_job("orphan"), state="running", node="ghost", finished_at=None)

    node.claim_due()
    node.claim_pending()
    claims.abandon_executions(["ghost"], "its node died")
    wait_for(lambda: not Execution.objects.exclude(state__in=Execution.FINAL_STATES).exists())

    states = dict(Execution.objects.values_list("job__name", "state").distinct())
    assert states == {
        "ok": "succeeded", "skipper": "skipped", "bad": "failed", "slow": "timed_out",
        "unwanted": "cancelled", "orphan": "abandoned",
    }  # fmt: skip
    assert Execution.objects.get(pk=failing.pk).state == "failed"
    assert Execution.objects.get(pk=slow.pk).state == "timed_out"
    assert Execution.objects.get(pk=cancelled.pk).state == "cancelled"
    assert Execution.objects.get(pk=ghost.pk).state == "abandoned"
    assert_rollup_matches_executions()
    assert MinuteRollup.objects.filter(job=ok).get().lag_fires == 1
    assert dashboard.state_counts() == direct_state_counts()


@pytest.mark.django_db
def test_a_changed_result_moves_its_contribution_and_other_updates_change_nothing():
    job = make_job("edited")
    execution = make_execution(job)
    assert_rollup_matches_executions()
    before = rollup_values()

    # Progress and heartbeats touch no column the rollup depends on.
    Execution.objects.filter(pk=execution.pk).update(progress_done=5, heartbeat_at=database_now())
    assert rollup_values() == before

    # An edit of the result (the admin can) moves the run from one state to the other.
    Execution.objects.filter(pk=execution.pk).update(state="failed")
    assert_rollup_matches_executions()
    # ... and a new creation time moves it to another bucket.
    Execution.objects.filter(pk=execution.pk).update(
        created_at=execution.created_at - timedelta(hours=3)
    )
    assert_rollup_matches_executions()


@pytest.mark.django_db
def test_many_rows_in_one_statement_are_counted_once_each():
    job = make_job("bulk")
    now = database_now()
    Execution.objects.bulk_create(
        Execution(job=job, scheduled_for=now - timedelta(seconds=i), origin="schedule",
                  state="succeeded", dispatched_at=now + timedelta(milliseconds=7 * i),
                  started_at=now, finished_at=now + timedelta(seconds=i))
        for i in range(40)
    )  # fmt: skip
    assert_rollup_matches_executions()
    Execution.objects.filter(job=job, attempt=1).update(state="abandoned")
    assert_rollup_matches_executions()


def rows_produced(plan: dict) -> int:
    """Rows the nodes of an EXPLAIN ANALYZE plan produced, over all their loops."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    return own + sum(rows_produced(child) for child in plan.get("Plans", []))


def trigger_rows_per_run(execution_ids: list[int]) -> float:
    """Finish ``execution_ids`` in one statement; returns the rows the rollup trigger's
    statements produced per run, from their plans (auto_explain, sent as notices)."""
    notices: list[str] = []

    def keep(diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    connection.ensure_connection()
    connection.connection.add_notice_handler(keep)
    try:
        Execution.objects.filter(id__in=execution_ids).update(state="succeeded", finished_at=Now())
    finally:
        connection.connection.remove_notice_handler(keep)
    plans = [json.loads(n[n.index("{") :]) for n in notices if "plan:" in n]
    # The trigger's statements read the transition tables; the UPDATE itself does not.
    of_trigger = [p for p in plans if "new_rows" in p["Query Text"]]
    assert of_trigger, notices
    return sum(rows_produced(p["Plan"]) for p in of_trigger) / len(execution_ids)


@pytest.mark.django_db
def test_a_large_write_after_a_small_one_rolls_up_each_run_in_a_few_rows():
    # The update trigger's plan is made on the connection's first statement and kept: a
    # one-row write first (as a Celery worker's), then a recorder's large batch must not
    # compare each of its rows with every other (a nested loop over the transition tables
    # would produce about as many rows per run as the batch has runs). Counted in rows,
    # from the plans, not in time.
    job = make_job("large batch")
    now = database_now()
    Execution.objects.bulk_create(
        Execution(job=job, scheduled_for=now, origin="manual", state="running", started_at=now)
        for _ in range(2021)
    )
    ids = list(Execution.objects.filter(job=job).order_by("id").values_list("id", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("DISCARD PLANS")  # this connection's earlier tests made plans too
        # Reverted with the test's transaction (the library stays loaded, silent).
        cursor.execute("LOAD 'auto_explain'")
        for setting, value in (("log_min_duration", "0"), ("log_analyze", "on"),
                               ("log_timing", "off"), ("log_nested_statements", "on"),
                               ("log_format", "json"), ("log_level", "notice")):  # fmt: skip
            cursor.execute(f"SET auto_explain.{setting} = {value}")
    trigger_rows_per_run(ids[:1])
    small = trigger_rows_per_run(ids[1:21])
    large = trigger_rows_per_run(ids[21:])
    # About 4 rows per run either way (each version read, grouped); the nested loop made
    # 4,012 per run of the large write, against 52 of the small one.
    assert large <= 2 * small, (large, small)
    assert_rollup_matches_executions()


@pytest.mark.django_db
def test_the_migrations_backfill_rebuilds_the_rollup_from_the_history():
    job = make_job("history")
    now = database_now()
    for hours in (1, 30, 200):
        make_execution(job, created_at=now - timedelta(hours=hours), state="failed")
    make_execution(job, origin="schedule", dispatched_at=now + timedelta(seconds=2))
    MinuteRollup.objects.all().delete()
    HourRollup.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(
            rollup_migration.both(
                f"SELECT {rollup_migration.COLUMNS}, 1 AS sign FROM jobs_execution"
            )
        )
    assert_rollup_matches_executions()


@pytest.mark.django_db
def test_the_lag_buckets_of_the_database_and_the_code_agree():
    assert rollup_migration.LAG_BUCKET_BOUNDS_MS == LAG_BUCKET_BOUNDS_MS
    samples = [-5, 0, 9.9, *LAG_BUCKET_BOUNDS_MS, *(b + 0.5 for b in LAG_BUCKET_BOUNDS_MS)]
    with connection.cursor() as cursor:
        for lag in samples:
            cursor.execute("SELECT jobs_lag_bucket(%s)", [lag])
            assert cursor.fetchone()[0] == bisect_right(LAG_BUCKET_BOUNDS_MS, lag) + 1


# --- the overview's numbers -----------------------------------------------------------


@pytest.mark.django_db
def test_the_24_hour_counts_equal_a_count_of_the_executions_at_every_edge():
    job = make_job("edges")
    now = database_now()
    ages = [
        timedelta(hours=25), timedelta(hours=24, seconds=1), timedelta(hours=24),
        timedelta(hours=23, minutes=59, seconds=50), timedelta(hours=23, minutes=30),
        timedelta(hours=23), timedelta(hours=2), timedelta(minutes=1), timedelta(0),
    ]  # fmt: skip
    states = ["succeeded", "failed", "skipped", "timed_out", "cancelled", "abandoned"]
    for i, age in enumerate(ages):
        make_execution(job, created_at=now - age, state=states[i % len(states)])
    make_execution(job, created_at=now - timedelta(hours=3), state="running", finished_at=None)
    make_execution(job, created_at=now - timedelta(hours=30), state="pending", finished_at=None)
    queue_manual_run(job)

    counts = dashboard.state_counts()
    assert counts == direct_state_counts()
    assert dict(counts)["pending"] == 1 and dict(counts)["running"] == 1
    assert trends.state_counts(hours=2) == direct_state_counts(hours=2)


@pytest.mark.django_db
def test_series_bins_runs_failure_rate_duration_and_lag_over_the_window():
    job, other = make_job("a"), make_job("b")
    now = database_now()
    for lag_ms in (5, 40, 40, 900):
        make_execution(job, origin="schedule", scheduled_for=now,
                       dispatched_at=now + timedelta(milliseconds=lag_ms))  # fmt: skip
    make_execution(job, state="failed")
    make_execution(other, state="failed", created_at=now - timedelta(hours=5))

    day = trends.series(trends.OVERVIEW_WINDOWS["24h"])
    assert len(day.bins) == 24 and day.end > now >= day.bins[-1].start
    last = day.bins[-1]
    assert last.runs == {"succeeded": 4, "failed": 1}
    assert last.failure_rate == pytest.approx(1 / 5)
    assert last.duration_ms_avg == pytest.approx(2000)
    assert last.lag_fires == 4
    assert 250 <= last.lag_ms_p95 <= 900
    assert day.total("failed") == 2 and day.finished == 6

    week = trends.series(trends.OVERVIEW_WINDOWS["7d"])
    assert len(week.bins) == 28 and week.finished == 6
    mine = trends.series(trends.JOB_WINDOWS["24h"], job)
    assert len(mine.bins) == 48 and mine.finished == 5


def test_percentiles_of_a_histogram():
    hist = [0] * (len(LAG_BUCKET_BOUNDS_MS) + 1)
    assert trends.histogram_percentile(hist, 0.95, None) is None
    hist[0] = 100  # all under 10 ms
    assert trends.histogram_percentile(hist, 0.95, 8.0) == pytest.approx(8.0)
    assert trends.histogram_percentile(hist, 0.5, None) == pytest.approx(5.0)
    hist[-1] = 100  # half past the last bound: the top slot ends at the largest lag
    assert trends.histogram_percentile(hist, 0.95, 120_000.0) == pytest.approx(114_000.0)


# --- a job's last runs ------------------------------------------------------------------


@pytest.mark.django_db
def test_recent_runs_of_many_jobs_in_one_query(django_assert_num_queries):
    jobs = [make_job(f"j{i}") for i in range(3)]
    now = database_now()
    for i in range(7):
        make_execution(jobs[0], created_at=now - timedelta(minutes=i))
    make_execution(jobs[1], state="failed")
    with django_assert_num_queries(1):
        strips = trends.recent_runs_by_job([j.pk for j in jobs], 5)
    assert [len(strips[j.pk]) for j in jobs] == [5, 1, 0]
    first = strips[jobs[0].pk]
    assert [m.created_at for m in first] == sorted(m.created_at for m in first)
    assert first[-1].created_at == now  # the newest last
    assert strips[jobs[1].pk][0].state == "failed"
    assert first[0].duration == timedelta(seconds=2)


# --- pruning ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_rollup_rows_are_pruned_by_their_own_retention_not_with_the_executions():
    job = make_job("old")
    now = database_now()
    make_execution(job, created_at=now - timedelta(days=40))
    make_execution(job, created_at=now - timedelta(days=3))
    make_execution(job, created_at=now - timedelta(hours=1))
    assert history.prune_history(30) == 1
    # The 40-day-old run is gone from the history, not from the trends.
    old_rows = [r for r in rollup_rows() if r.bucket < now - timedelta(days=30)]
    assert len(old_rows) == 2

    assert history.prune_rollup(minute_hours=48, hour_days=35) == 3
    left = sorted((r.grain, (now - r.bucket).days) for r in rollup_rows())
    assert left == [("hour", 0), ("hour", 3), ("minute", 0)]


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_jobs_results_all_count():
    """Four connections record results of the same job and minute at once (the rollup
    rows they share are created and updated concurrently): nothing is lost or doubled."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections, transaction
    from django.db.models.functions import Now

    job = make_job("busy")
    now = database_now()
    running = [
        make_execution(job, state="running", created_at=now, finished_at=None).pk for _ in range(80)
    ]
    states = ["succeeded", "failed", "timed_out", "cancelled"]

    def writer(worker: int) -> None:
        try:
            mine = running[worker::4]
            for i in range(0, len(mine), 4):
                with transaction.atomic():
                    Execution.objects.filter(pk__in=mine[i : i + 4]).update(
                        state=states[(worker + i) % 4], finished_at=Now()
                    )
                # New rows in a final state, racing for the same new rollup rows.
                make_execution(job, state="skipped", created_at=now, started_at=None,
                               finished_at=None)  # fmt: skip
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))

    assert not Execution.objects.filter(state="running").exists()
    assert_rollup_matches_executions()
    assert dict(dashboard.state_counts())["skipped"] == 20


@pytest.mark.django_db
def test_deleting_a_job_deletes_its_rollup_rows_and_no_other():
    gone, kept = make_job("gone"), make_job("kept")
    make_execution(gone)
    make_execution(kept)
    gone.delete()
    assert {r.job_id for r in rollup_rows()} == {kept.pk}


@pytest.mark.django_db
def test_the_applications_connections_never_jit_compile_a_query():
    # At 10M executions the 24-hour counts were planned costly enough to be JIT-compiled:
    # 230 ms of compiling for a 16 ms query on every overview load.
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone() == ("off",)
