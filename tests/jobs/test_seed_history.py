"""seed_history fills the database with a large, realistic history for judging pages."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count, F

from jobs.models import Execution, Job, Trigger, database_now
from locks.maintenance import stale_locks
from locks.models import Lock, SchedulerNode


def seed(**options) -> str:
    out = StringIO()
    call_command("seed_history", stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def seeded(db):
    return seed(executions=2000, jobs=10, days=30)


def test_it_adds_exactly_n_executions_and_reports_progress_and_time(seeded):
    assert Execution.objects.count() == 2000
    assert "scheduled fires:" in seeded
    assert "done: 2000 executions added, analyzed" in seeded
    assert seeded.strip().splitlines()[-1].startswith("[")  # elapsed seconds


def test_it_creates_the_seed_jobs_and_their_triggers(seeded):
    names = list(Job.objects.values_list("name", flat=True))
    assert names == [f"seed job {i:03d}" for i in range(1, 11)]
    assert Trigger.objects.filter(job__name__startswith="seed job").count() == 10
    assert not Trigger.objects.filter(next_fire_at__isnull=True).exists()
    assert {"cron", "interval"} <= set(Trigger.objects.values_list("kind", flat=True))


def test_states_and_origins_are_a_realistic_mix(seeded):
    states = Counter(Execution.objects.values_list("state", flat=True))
    assert states["succeeded"] > 0.8 * 2000
    for state in ("failed", "timed_out", "skipped", "abandoned", "running", "pending"):
        assert states[state] > 0, states
    origins = Counter(Execution.objects.values_list("origin", flat=True))
    assert origins["schedule"] > 0.9 * 2000
    for origin in ("manual", "retry", "rerun"):
        assert origins[origin] > 0, origins


def test_one_execution_per_fire_time_holds(seeded):
    fires = Execution.objects.filter(origin="schedule")
    duplicated = fires.values("trigger_id", "scheduled_for").annotate(n=Count("id")).filter(n__gt=1)
    assert not duplicated.exists()
    assert not fires.filter(trigger__isnull=True).exists()


def test_failures_skips_and_timeouts_explain_themselves(seeded):
    failed = Execution.objects.filter(state="failed")
    assert not failed.filter(error="").exists()
    assert not failed.filter(origin="schedule", traceback="").exists()
    assert failed.filter(traceback__startswith="Traceback (most recent call last)").exists()
    assert not Execution.objects.filter(state="skipped", note="").exists()
    assert not Execution.objects.filter(state="timed_out", error="").exists()
    assert Execution.objects.filter(state="abandoned", error__startswith="abandoned:").exists()


def test_retries_reruns_and_manual_runs_are_linked_as_the_engine_links_them(seeded):
    for retry in Execution.objects.filter(origin="retry").select_related("retry_of"):
        assert retry.retry_of.state == "failed"
        assert retry.retry_of.scheduled_for == retry.scheduled_for
        assert retry.attempt == 2 and retry.run_after > retry.retry_of.finished_at
    for rerun in Execution.objects.filter(origin="rerun").select_related("rerun_of"):
        assert rerun.rerun_of.state in ("failed", "timed_out")
        assert rerun.requested_by is not None and rerun.created_at > rerun.rerun_of.finished_at
    assert not Execution.objects.filter(origin="manual", requested_by__isnull=True).exists()
    assert not Execution.objects.filter(origin="manual", trigger__isnull=False).exists()


def test_timings_are_consistent_and_spread_over_the_days_asked_for(seeded):
    now = database_now()
    rows = Execution.objects.all()
    assert not rows.filter(started_at__lt=F("dispatched_at")).exists()
    assert not rows.filter(finished_at__lt=F("started_at")).exists()
    assert not rows.filter(created_at__gt=now).exists()
    assert not rows.filter(state__in=Execution.FINAL_STATES, finished_at__isnull=True).exists()
    assert not rows.filter(state__in=["pending", "running"], finished_at__isnull=False).exists()
    # Scheduled fires are dispatched a few milliseconds after their fire time.
    lag = rows.filter(origin="schedule", dispatched_at__isnull=False).exclude(
        dispatched_at__lte=F("scheduled_for") + timedelta(milliseconds=10)
    )
    assert not lag.exists()
    oldest = rows.order_by("created_at").first().created_at
    assert now - timedelta(days=30) <= oldest < now - timedelta(days=29)
    # What the overview shows: the last day's runs and runs in flight right now.
    assert rows.filter(created_at__gte=now - timedelta(hours=24)).count() > 30
    assert rows.filter(state="running", started_at__gte=now - timedelta(minutes=1)).exists()


def test_nodes_and_locks_cover_every_case_the_pages_show(seeded):
    states = Counter(SchedulerNode.objects.values_list("state", flat=True))
    assert states["active"] >= 2 and states["dead"] == 1 and states["stopped"] == 1
    used = set(Execution.objects.exclude(node="").values_list("node", flat=True))
    assert used <= set(SchedulerNode.objects.values_list("id", flat=True))
    now = database_now()
    held = Lock.objects.filter(locked_until__gt=now).exclude(holder="")
    assert held.filter(execution__state="running").exists()
    assert Lock.objects.filter(holder="").exists()  # free
    assert "seed: nightly export" in {s.name for s in stale_locks()}


def test_running_it_again_adds_more_and_keeps_one_execution_per_fire(transactional_db):
    # Transactional: each run sees its own database now(), as from the command line.
    seed(executions=500, jobs=4, days=2)
    first = Execution.objects.filter(origin="schedule").count()
    seed(executions=500, jobs=4, days=2)
    assert Execution.objects.count() == 1000
    assert Job.objects.count() == 4
    fires = Execution.objects.filter(origin="schedule")
    assert fires.count() > 1.8 * first  # the second run's fires did not collide
    assert fires.count() == fires.values("trigger_id", "scheduled_for").distinct().count()


def _execution_indexes() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs_execution'"
        )
        return dict(cursor.fetchall())


def test_a_large_seed_drops_the_secondary_indexes_and_builds_them_again(db):
    before = _execution_indexes()
    out = seed(executions=300, jobs=3, days=2, rebuild_indexes="yes")
    assert Execution.objects.count() == 300
    # The same indexes (PostgreSQL prints a rebuilt predicate's casts differently).
    assert _execution_indexes().keys() == before.keys()
    unique = {"jobs_execution_pkey", "one_execution_per_fire"}
    assert f"dropped {len(before.keys() - unique)} secondary indexes" in out
    assert "index execution_recent_idx:" in out
    assert "rows/s" in out
