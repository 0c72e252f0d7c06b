"""Schedules as code: apply_schedules and export_schedules."""

from __future__ import annotations

import io
import textwrap
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from controlplane.models import AuditEntry
from jobs.models import Job, Trigger
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db

SOURCE = "schedules/prod.toml"

FILE = """\
# Our schedules
[[jobs]]
name = "nightly report"
description = "The nightly report"
target = "demo.echo"
args = ["report"]
kwargs = {region = "eu", sizes = [1, 2]}
timeout = 600
max_attempts = 3
retry_backoff = 5.5
recover = true
concurrency_policy = "forbid"

[[jobs.triggers]]
kind = "cron"
cron = "0 2 * * *"
timezone = "Europe/London"
misfire_policy = "skip"
misfire_grace = 300

[[jobs.triggers]]
kind = "interval"
interval = 3600
start_at = 2026-01-01T00:00:00Z
end_at = 2030-01-01T00:00:00+01:00

[[jobs]]
name = "celery cleanup"
executor = "celery"
celery_task = "proj.tasks.cleanup"
queue = "maintenance"
paused = true

[[jobs.triggers]]
kind = "once"
run_at = 2031-06-01T12:00:00Z
paused = true
"""


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def apply(path, *options: str) -> str:
    return run("apply_schedules", str(path), "--source", SOURCE, *options)[0]


@pytest.fixture
def schedule_file(tmp_path):
    path = tmp_path / "prod.toml"
    path.write_text(FILE)
    return path


def state() -> list:
    """Every job and trigger field, ids included, for comparing before and after."""
    return [
        (job, sorted(Trigger.objects.filter(job_id=job["id"]).values().order_by("id"), key=str))
        for job in Job.objects.values().order_by("id")
    ]


def test_it_creates_the_jobs_and_triggers_of_a_file_marked_and_audited(schedule_file):
    output = apply(schedule_file)
    assert "create job 'nightly report'" in output
    assert "create trigger: cron 0 2 * * * (Europe/London)" in output
    summary = "Applied schedules/prod.toml: 2 to create, 0 to change, 0 to pause, 0 to delete."
    assert summary in output

    report = Job.objects.get(name="nightly report")
    assert (report.target, report.args, report.kwargs) == (
        "demo.echo", ["report"], {"region": "eu", "sizes": [1, 2]}
    )  # fmt: skip
    assert (report.timeout, report.max_attempts, report.retry_backoff) == (600, 3, 5.5)
    assert (report.recover, report.concurrency_policy, report.paused) == (True, "forbid", False)
    assert report.managed_by == SOURCE
    cron, interval = report.triggers.order_by("pk")
    assert (cron.cron, cron.timezone, cron.misfire_policy, cron.misfire_grace) == (
        "0 2 * * *", "Europe/London", "skip", 300
    )  # fmt: skip
    assert cron.next_fire_at is not None
    assert interval.interval == 3600
    assert interval.end_at == datetime(2029, 12, 31, 23, tzinfo=UTC)
    celery = Job.objects.get(name="celery cleanup")
    assert (celery.executor, celery.celery_task, celery.queue, celery.paused) == (
        "celery", "proj.tasks.cleanup", "maintenance", True
    )  # fmt: skip
    assert celery.triggers.get().paused is True

    entries = AuditEntry.objects.exclude(action="schedules.apply")
    assert sorted(e.action for e in entries) == ["job.create"] * 2 + ["trigger.create"] * 3
    assert {(e.actor, e.reason) for e in entries} == {
        ("manage.py apply_schedules", "applied from schedules/prod.toml")
    }
    summary = AuditEntry.objects.get(action="schedules.apply")
    assert (summary.object_id, summary.after["create"]) == (SOURCE, 2)


def test_applying_the_same_file_twice_changes_nothing(schedule_file):
    apply(schedule_file)
    before, entries = state(), AuditEntry.objects.count()
    output = apply(schedule_file)
    assert output.strip() == "schedules/prod.toml: no changes (2 jobs as the file says)."
    assert state() == before
    assert AuditEntry.objects.count() == entries


def test_a_dry_run_prints_the_plan_and_changes_nothing(schedule_file):
    output = apply(schedule_file, "--dry-run")
    assert "create job 'nightly report'" in output
    assert "Would apply schedules/prod.toml: 2 to create" in output
    assert "Dry run: nothing was changed." in output
    assert not Job.objects.exists() and not AuditEntry.objects.exists()


def test_a_changed_file_changes_fields_and_keeps_the_triggers_it_can(schedule_file):
    apply(schedule_file)
    report = Job.objects.get(name="nightly report")
    cron, interval = report.triggers.order_by("pk")
    schedule_file.write_text(
        FILE.replace("timeout = 600", "timeout = 900")
        .replace('cron = "0 2 * * *"', 'cron = "0 3 * * *"')
        .replace("misfire_grace = 300", "misfire_grace = 300\npaused = true")
    )
    output = apply(schedule_file, "--dry-run")
    change = f"change trigger #{cron.pk}: cron: '0 2 * * *' -> '0 3 * * *', paused: False -> True"
    assert change in output
    assert "timeout: 600 -> 900" in output
    assert "0 to create, 1 to change" in output

    apply(schedule_file)
    report.refresh_from_db()
    assert report.timeout == 900
    assert list(report.triggers.order_by("pk")) == [cron, interval]  # same ids
    cron.refresh_from_db()
    assert (cron.cron, cron.paused) == ("0 3 * * *", True)
    [change] = AuditEntry.objects.filter(action="trigger.change")
    assert (change.before, change.after) == (
        {"cron": "0 2 * * *", "paused": False}, {"cron": "0 3 * * *", "paused": True}
    )  # fmt: skip


def test_a_trigger_removed_from_the_file_is_deleted_and_a_new_one_created(schedule_file):
    apply(schedule_file)
    cron, interval = Job.objects.get(name="nightly report").triggers.order_by("pk")
    schedule_file.write_text(FILE.replace("interval = 3600", "interval = 60"))
    apply(schedule_file)
    # Matched by schedule first: the cron trigger is untouched, the interval one changed.
    cron_after, interval_after = Job.objects.get(name="nightly report").triggers.order_by("pk")
    assert (cron_after.pk, cron_after.next_fire_at) == (cron.pk, cron.next_fire_at)
    assert (interval_after.pk, interval_after.interval) == (interval.pk, 60)


def test_a_job_removed_from_the_file_is_paused_and_deleted_with_prune(schedule_file):
    apply(schedule_file)
    unmanaged = make_job("made in the admin")
    schedule_file.write_text(FILE[: FILE.index('[[jobs]]\nname = "celery cleanup"')])
    output = apply(schedule_file)
    # Its removed job was paused already (the file said so).
    assert output.startswith("schedules/prod.toml: no changes (1 job as the file says)")
    Job.objects.filter(name="celery cleanup").update(paused=False)
    output = apply(schedule_file)
    assert "pause job 'celery cleanup'\n    removed from schedules/prod.toml" in output
    assert Job.objects.get(name="celery cleanup").paused is True
    assert apply(schedule_file).startswith("schedules/prod.toml: no changes")

    output = apply(schedule_file, "--prune")
    assert "delete job 'celery cleanup'" in output
    assert not Job.objects.filter(name="celery cleanup").exists()
    assert Job.objects.filter(pk=unmanaged.pk).exists()  # never managed by the file
    assert AuditEntry.objects.filter(action="job.delete").get().before["name"] == "celery cleanup"


def test_a_job_managed_by_another_file_is_refused(schedule_file):
    make_job("nightly report", managed_by="schedules/other.toml")
    with pytest.raises(CommandError, match="1 problem; nothing was applied"):
        apply(schedule_file)
    assert Job.objects.count() == 1


def test_an_existing_job_becomes_managed_by_the_file(schedule_file):
    job = make_job("nightly report", target="demo.noop")
    output = apply(schedule_file)
    assert "change job 'nightly report'\n" in output
    assert "\n    target: 'demo.noop' -> 'demo.echo'\n" in output
    job.refresh_from_db()
    assert (job.target, job.managed_by) == ("demo.echo", SOURCE)
    assert AuditEntry.objects.filter(action="job.manage", object_id=str(job.pk)).exists()


# --- export, and the round trip -------------------------------------------------------------


def test_export_then_apply_dry_run_reports_no_changes(tmp_path):
    job = make_job("every field", description="line one\nline two", target="demo.echo",
                   args=[1, "two", [3.5, True]], kwargs={"a": {"b": "c"}}, timeout=30,
                   max_attempts=2, retry_backoff=1.5, recover=True,
                   concurrency_policy="forbid", paused=True)  # fmt: skip
    Trigger.objects.create(job=job, kind="cron", cron="*/15 * * * * *", timezone="Asia/Kolkata",
                           misfire_policy="fire_all", misfire_grace=5, paused=True,
                           start_at=datetime(2026, 1, 1, 3, 4, 5, 600000, tzinfo=UTC))  # fmt: skip
    Trigger.objects.create(job=job, kind="once", run_at=datetime(2031, 1, 1, tzinfo=UTC))
    Trigger.objects.create(job=job, kind="interval", interval=90,
                           end_at=datetime(2032, 1, 1, tzinfo=UTC))  # fmt: skip
    make_job("celery", executor="celery", celery_task="proj.tasks.x", target="", queue="q")
    make_job("no triggers")
    exported = tmp_path / "all.toml"
    run("export_schedules", "--output", str(exported))
    before = state()

    output = apply(exported, "--dry-run")
    assert "0 to create, 0 to change, 0 to pause, 0 to delete" in output
    assert "3 existing job(s) to mark as managed by it" in output
    assert [line.split()[0] for line in output.splitlines() if line[0] != " "] == [
        "adopt",
        "adopt",
        "adopt",
        "Would",
        "Dry",
    ]

    apply(exported)
    assert apply(exported, "--dry-run").startswith("schedules/prod.toml: no changes")
    after = state()
    for (job_before, triggers_before), (job_after, triggers_after) in zip(
        before, after, strict=True
    ):
        assert {**job_before, "managed_by": SOURCE, "updated_at": None} == {
            **job_after,
            "updated_at": None,
        }
        assert triggers_before == triggers_after
    # Exporting what a file manages writes the same jobs again.
    again = tmp_path / "again.toml"
    run("export_schedules", "--output", str(again), "--managed-by", SOURCE)
    assert again.read_text().split("\n", 1)[1] == exported.read_text().split("\n", 1)[1]


def test_export_writes_the_documented_format():
    job = make_job("report", target="demo.echo", kwargs={"n": 1})
    Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *", timezone="Europe/London")
    text = run("export_schedules")[0]
    body = text[text.index("[[jobs]]") :]
    assert body == textwrap.dedent("""\
        [[jobs]]
        name = "report"
        target = "demo.echo"
        args = []
        kwargs = {n = 1}
        executor = "inline"
        queue = "scheduler"
        max_attempts = 1
        retry_backoff = 10.0
        recover = false
        concurrency_policy = "allow"
        paused = false

        [[jobs.triggers]]
        kind = "cron"
        cron = "0 2 * * *"
        timezone = "Europe/London"
        misfire_policy = "fire_once"
        misfire_grace = 60
        paused = false
        """)


def test_export_refuses_a_null_that_toml_cannot_write():
    make_job("nulls", kwargs={"x": None})
    with pytest.raises(CommandError, match="job 'nulls': kwargs holds a null"):
        run("export_schedules")


# --- bad files --------------------------------------------------------------------------------

BAD_FILES = [
    # (what is wrong, replace this, with this, the expected problem line)
    ("toml syntax", 'timeout = 600', 'timeout = = 600',
     "not valid TOML: Invalid value (at line 8, column 11)"),
    ("unknown field", 'timeout = 600', 'timeout = 600\ntimeot = 5',
     ":9: jobs[0].timeot: unknown field"),
    ("wrong type", 'timeout = 600', 'timeout = "600"',
     ":8: jobs[0].timeout: must be an integer, not a string"),
    ("bad cron", 'cron = "0 2 * * *"', 'cron = "0 25 * * *"',
     ":16: jobs[0].triggers[0].cron: Invalid cron expression"),
    ("unknown target", 'target = "demo.echo"', 'target = "nope.nothing"',
     ":5: jobs[0].target: nope.nothing is not a registered job target"),
    ("naive date-time", "run_at = 2031-06-01T12:00:00Z", "run_at = 2031-06-01T12:00:00",
     ":36: jobs[1].triggers[0].run_at: must be a date-time with an offset (e.g. "
     "2026-01-31T02:00:00Z), not a date-time without an offset"),
    ("duplicate name", '"celery cleanup"', '"nightly report"',
     ":28: jobs[1].name: 'nightly report' is already the name of jobs[0]"),
    ("bad time zone", '"Europe/London"', '"Mars/Olympus"',
     ":17: jobs[0].triggers[0].timezone: Unknown time zone 'Mars/Olympus'"),
    ("window", "end_at = 2030-01-01T00:00:00+01:00", "end_at = 2025-01-01T00:00:00Z",
     ":25: jobs[0].triggers[1].end_at: The window must end after it starts."),
    ("missing interval", "interval = 3600\n", "",
     ":21: jobs[0].triggers[1].interval: An interval trigger needs an interval"),
    ("bad choice", 'concurrency_policy = "forbid"', 'concurrency_policy = "sometimes"',
     ":12: jobs[0].concurrency_policy: Value 'sometimes' is not a valid choice."),
    ("no name", 'name = "celery cleanup"\n', "",
     ":27: jobs[1]: every job needs a name"),
    ("a date in kwargs", 'kwargs = {region = "eu", sizes = [1, 2]}', "kwargs = {day = 2026-01-01}",
     ":7: jobs[0].kwargs: may hold strings, numbers, booleans, arrays and tables only"),
]  # fmt: skip


@pytest.mark.parametrize("what, old, new, expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_names_the_line_and_field_and_applies_nothing(
    schedule_file, what, old, new, expected
):
    apply(schedule_file)
    before, entries = state(), AuditEntry.objects.count()
    assert old in FILE
    schedule_file.write_text(FILE.replace(old, new, 1))
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was applied"):
        call_command("apply_schedules", str(schedule_file), "--source", SOURCE,
                     stdout=io.StringIO(), stderr=err)  # fmt: skip
    assert expected in err.getvalue(), err.getvalue()
    assert err.getvalue().startswith(SOURCE)
    assert state() == before and AuditEntry.objects.count() == entries


def test_every_problem_of_a_file_is_listed_at_once(schedule_file):
    schedule_file.write_text(
        FILE.replace("timeout = 600", 'timeout = "x"').replace('"0 2 * * *"', '"bad"')
    )
    err = io.StringIO()
    with pytest.raises(CommandError, match="2 problems; nothing was applied"):
        call_command("apply_schedules", str(schedule_file), stderr=err, stdout=io.StringIO())
    assert len(err.getvalue().strip().splitlines()) == 2


# --- managed jobs elsewhere: the drift warning ----------------------------------------------


def test_the_api_admin_and_dashboard_say_a_job_is_managed_and_edits_are_overwritten(
    schedule_file, role_users, client_for
):
    apply(schedule_file)
    job = Job.objects.get(name="nightly report")
    trigger = job.triggers.order_by("pk").first()
    api = APIClient()
    api.force_login(role_users["admin"])
    assert api.get(f"/api/v1/jobs/{job.pk}/").json()["managed_by"] == SOURCE
    assert api.get(f"/api/v1/triggers/{trigger.pk}/").json()["managed_by"] == SOURCE
    assert "Warning" not in api.get(f"/api/v1/jobs/{job.pk}/")
    response = api.patch(f"/api/v1/jobs/{job.pk}/", {"timeout": 5}, format="json")
    assert response.status_code == 200
    assert response["Warning"] == (
        '299 - "managed by schedules/prod.toml: apply_schedules overwrites this change"'
    )
    paused = api.post(f"/api/v1/triggers/{trigger.pk}/pause/")
    assert "managed by schedules/prod.toml" in paused["Warning"]

    admin = client_for("admin")
    page = admin.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "is managed by the schedule file schedules/prod.toml" in page
    page = admin.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert "is managed by the schedule file schedules/prod.toml" in page
    page = client_for("viewer").get(f"/jobs/{job.pk}/").content.decode()
    assert "Managed by the schedule file <code>schedules/prod.toml</code>" in page
    assert (
        "managed by <code>schedules/prod.toml</code>"
        in client_for("viewer").get(f"/jobs/{job.pk}/menu/").content.decode()
    )

    # The next apply puts back what the file says, and says so.
    output = apply(schedule_file)
    assert "timeout: 5 -> 600" in output and f"change trigger #{trigger.pk}: paused" in output
    job.refresh_from_db()
    assert job.timeout == 600


@pytest.mark.django_db(transaction=True)
def test_two_applies_of_one_file_at_once_run_one_after_the_other(schedule_file):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def apply_in_thread() -> str:
        try:
            return apply(schedule_file)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        outputs = sorted(pool.map(lambda _: apply_in_thread(), range(2)))
    assert outputs[0].startswith("create job") or outputs[1].startswith("create job")
    assert any(o.startswith("schedules/prod.toml: no changes") for o in outputs)
    assert Job.objects.count() == 2
