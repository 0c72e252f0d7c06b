"""import_celery_beat against a real django-celery-beat database: django-celery-beat is
installed (into a folder of its own), creates its tables with its own migrations in a
scratch database and its periodic tasks through its own models, and computes the first
fire times that the imported triggers must match."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from psycopg import sql

from controlplane.models import AuditEntry
from jobs.models import Job
from jobs.schedule import next_fire_times
from tests.conftest import ROOT
from tests.jobs.celery_beat.source import AGREEING_CRONTABS

pytestmark = pytest.mark.django_db

REQUIREMENTS = ROOT / "tests" / "jobs" / "celery_beat" / "requirements.txt"
# Instants the first fire times are computed after, by both schedulers.
WHENS = ["2026-03-10T12:34:56+00:00", "2026-06-30T23:59:59+00:00", "2026-12-31T22:00:00+00:00"]


def server_conninfo(dbname: str) -> str:
    s = connection.settings_dict
    password = f" password={s['PASSWORD']}" if s.get("PASSWORD") else ""
    return (f"host={s.get('HOST') or '127.0.0.1'} port={s.get('PORT') or 5432} "
            f"user={s.get('USER') or 'postgres'} dbname={dbname}{password}")  # fmt: skip


def database_url(dbname: str) -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host, port = s.get("HOST") or "127.0.0.1", s.get("PORT") or 5432
    return f"postgres://{s.get('USER') or 'postgres'}{password}@{host}:{port}/{dbname}"


@pytest.fixture(scope="session")
def celery_beat_site():
    """django-celery-beat from PyPI in a folder kept under .data/ between runs."""
    digest = hashlib.sha1(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    site = ROOT / ".data" / f"celery-beat-site-{digest}"
    if not (site / ".complete").exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
             "--target", str(site), "-r", str(REQUIREMENTS)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        (site / ".complete").touch()
    return site


@pytest.fixture(scope="session")
def celery_beat_source(django_db_blocker, celery_beat_site):
    """(url, first fire times) of a scratch database that django-celery-beat filled."""
    dbname = f"celery_beat_source_{os.getpid()}"
    with django_db_blocker.unblock():
        admin = server_conninfo("postgres")
        url = database_url(dbname)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        env = {**os.environ, "PYTHONPATH": f"{celery_beat_site}{os.pathsep}{ROOT}"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        result = subprocess.run(
            [sys.executable, "-m", "tests.jobs.celery_beat.source", url, ",".join(WHENS)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        yield url, json.loads(result.stdout)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


def import_beat(url: str, *options: str) -> str:
    out = io.StringIO()
    call_command("import_celery_beat", "--database-url", url, *options, stdout=out)
    return out.getvalue()


def test_a_dry_run_prints_the_plan_and_creates_nothing(celery_beat_source):
    url, _ = celery_beat_source
    output = import_beat(url, "--dry-run")
    assert "import 'every 15 minutes' (PeriodicTask #1): celery task proj.tasks.tick, " in output
    assert output.strip().endswith("Dry run: would import 11, skip 5; nothing created.")
    assert not Job.objects.exists() and not AuditEntry.objects.exists()


def test_it_imports_what_maps_and_lists_every_skip_and_loss_with_the_reason(celery_beat_source):
    url, _ = celery_beat_source
    output = import_beat(url)
    lines = output.splitlines()
    skips = {line.split("'")[1]: line.split(": ", 1)[1] for line in lines if line[:4] == "skip"}
    assert skips == {
        "at sunset": "solar schedules (sunset at 51.5, -0.12) have no equivalent here",
        "friday the 13th": "its crontab restricts both day of month (13) and day of week (5): "
        "celery fires on days matching both, this scheduler (as Vixie cron) on days matching "
        "either",
        "half a second": "an interval of 500000 microseconds is not whole seconds",
        "bad args": "its args or kwargs are not JSON (Expecting value)",
        "bad minute": "cron: Invalid cron expression '61 * * * *': bad minute field '61'.",
    }
    assert lines[-1] == "Imported 11, skipped 5."

    job = Job.objects.get(name="every field")
    assert (job.executor, job.target, job.celery_task, job.queue) == (
        "celery", "", "proj.tasks.report", "reports"
    )  # fmt: skip
    assert (job.args, job.kwargs, job.paused) == ([1, "two"], {"region": "eu"}, True)
    assert job.description.startswith("The report\n\nImported from django-celery-beat")
    trigger = job.triggers.get()
    assert (trigger.kind, trigger.cron, trigger.timezone) == ("cron", "* * * * *", "UTC")
    assert trigger.start_at is not None and trigger.end_at is not None
    assert trigger.end_at > trigger.start_at

    notes = Job.objects.get(name="unroutable").description
    for lost in ("exchange 'ex'", "routing_key 'rk'", "priority 5", 'headers {"trace": "1"}',
                 "expire_seconds 60"):  # fmt: skip
        assert lost in notes
    assert "    note: priority 5 is not supported: dropped" in lines

    interval = Job.objects.get(name="every 10 minutes").triggers.get()
    assert (interval.kind, interval.interval) == ("interval", 600)
    assert interval.start_at == datetime(2026, 1, 1, 0, 3, tzinfo=UTC)  # celery's cadence
    assert interval.next_fire_at.minute % 10 == 3

    one_off = Job.objects.get(name="one-off hourly").triggers.get()
    assert (one_off.kind, one_off.run_at) == ("once", datetime(2031, 1, 1, 0, 30, tzinfo=UTC))
    assert one_off.next_fire_at == one_off.run_at
    clocked = Job.objects.get(name="clocked").triggers.get()
    assert (clocked.kind, clocked.run_at) == ("once", datetime(2031, 5, 4, 3, 2, tzinfo=UTC))

    created = AuditEntry.objects.filter(action="job.create")
    assert created.count() == 11
    assert {e.actor for e in created} == {"manage.py import_celery_beat"}

    # Again: everything is there already, and nothing is created twice.
    again = import_beat(url)
    assert again.strip().endswith("Imported 0, skipped 16.")
    assert "a job of that name exists already" in again
    assert Job.objects.count() == 11


def test_imported_crontabs_first_fire_when_django_celery_beat_says(celery_beat_source):
    url, beat_first_fires = celery_beat_source
    import_beat(url)
    assert sorted(beat_first_fires) == sorted(name for name, *_ in AGREEING_CRONTABS)
    for name, beat_times in beat_first_fires.items():
        trigger = Job.objects.get(name=name).triggers.get()
        ours = [
            next_fire_times(trigger, datetime.fromisoformat(when), 1)[0].isoformat()
            for when in WHENS
        ]
        assert ours == beat_times, name


def test_a_database_without_django_celery_beat_is_one_clear_error():
    with pytest.raises(CommandError, match="^django-celery-beat database: no django-celery-beat"
                                           " tables there: relation"):  # fmt: skip
        import_beat(database_url(connection.settings_dict["NAME"]))
    with pytest.raises(CommandError, match="^django-celery-beat database: cannot read it: "):
        import_beat("postgres://nobody@127.0.0.1:1/none")
