"""The schedule admin: triggers in words and upcoming fires, audited edits, role-gated actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.models import AuditEntry
from jobs.describe import describe_cron
from jobs.models import Execution, Job, Trigger, database_now
from tests.jobs.factories import make_job

# Europe/London springs forward on Sunday 2030-03-31 at 01:00 GMT (01:00 -> 02:00 local).
WINDOW_START = datetime(2030, 3, 29, tzinfo=UTC)


def cron_trigger(cron: str, timezone: str = "Europe/London", **options) -> Trigger:
    job = make_job("nightly")
    return Trigger.objects.create(job=job, kind="cron", cron=cron, timezone=timezone, **options)


def _split(value: datetime | None, zone=UTC) -> tuple[str, str]:
    # The admin reads and shows a trigger's date-times in the trigger's own zone.
    if value is None:
        return "", ""
    value = value.astimezone(zone)
    return value.strftime("%Y-%m-%d"), value.strftime("%H:%M:%S")


def trigger_fields(trigger: Trigger, prefix: str = "") -> dict:
    """The admin form fields of a saved trigger, as the browser would post them back."""
    data = {
        f"{prefix}kind": trigger.kind,
        f"{prefix}cron": trigger.cron,
        f"{prefix}timezone": trigger.timezone,
        f"{prefix}interval": trigger.interval or "",
        f"{prefix}misfire_policy": trigger.misfire_policy,
        f"{prefix}misfire_grace": trigger.misfire_grace,
    }
    if trigger.paused:
        data[f"{prefix}paused"] = "on"
    for name in ("run_at", "start_at", "end_at"):
        day, time = _split(getattr(trigger, name), trigger.tzinfo())
        data[f"{prefix}{name}_0"], data[f"{prefix}{name}_1"] = day, time
    return data


def job_change_data(job: Job, **overrides) -> dict:
    """The job change form with its trigger inline, unchanged unless overridden."""
    triggers = list(job.triggers.order_by("pk")) if job.pk else []
    data = {
        "name": job.name,
        "description": job.description,
        "target": job.target,
        "args": "[]",
        "kwargs": "{}",
        "executor": job.executor,
        "timeout": job.timeout or "",
        "max_attempts": job.max_attempts,
        "retry_backoff": job.retry_backoff,
        "concurrency_policy": job.concurrency_policy,
        "queue": job.queue,
        "celery_task": job.celery_task,
        "reason": "",
        "triggers-TOTAL_FORMS": len(triggers),
        "triggers-INITIAL_FORMS": len(triggers),
        "triggers-MIN_NUM_FORMS": 0,
        "triggers-MAX_NUM_FORMS": 1000,
    }
    for i, trigger in enumerate(triggers):
        data.update(trigger_fields(trigger, f"triggers-{i}-"))
        data[f"triggers-{i}-id"] = trigger.pk
        data[f"triggers-{i}-job"] = job.pk
    data.update(overrides)
    return data


def trigger_change_data(trigger: Trigger, **overrides) -> dict:
    return {**trigger_fields(trigger), "job": trigger.job_id, "reason": "", **overrides}


@pytest.fixture
def admin_client(client_for):
    return client_for("admin")


# --- Schedules in words and upcoming fire times ------------------------------------------


@pytest.mark.parametrize(
    ("cron", "words", "fires"),
    [
        # Five fields: 09:00 London time every day; the UTC hour moves with the clocks.
        (
            "0 9 * * *",
            "At 09:00",
            [
                ("Fri 2030-03-29 09:00:00 GMT", "Fri 2030-03-29 09:00:00 UTC"),
                ("Sat 2030-03-30 09:00:00 GMT", "Sat 2030-03-30 09:00:00 UTC"),
                ("Sun 2030-03-31 09:00:00 BST", "Sun 2030-03-31 08:00:00 UTC"),
                ("Mon 2030-04-01 09:00:00 BST", "Mon 2030-04-01 08:00:00 UTC"),
                ("Tue 2030-04-02 09:00:00 BST", "Tue 2030-04-02 08:00:00 UTC"),
            ],
        ),
        # Six fields, seconds first: 01:30:00 does not exist on 31 March, so that day's
        # fire is at the first instant after the gap (a fixed-time expression).
        (
            "0 30 1 * * *",
            "At 01:30",
            [
                ("Fri 2030-03-29 01:30:00 GMT", "Fri 2030-03-29 01:30:00 UTC"),
                ("Sat 2030-03-30 01:30:00 GMT", "Sat 2030-03-30 01:30:00 UTC"),
                ("Sun 2030-03-31 02:00:00 BST", "Sun 2030-03-31 01:00:00 UTC"),
                ("Mon 2030-04-01 01:30:00 BST", "Mon 2030-04-01 00:30:00 UTC"),
                ("Tue 2030-04-02 01:30:00 BST", "Tue 2030-04-02 00:30:00 UTC"),
            ],
        ),
    ],
)
def test_trigger_page_shows_the_cron_in_words_and_next_five_fires_in_zone_and_utc(
    admin_client, cron, words, fires
):
    trigger = cron_trigger(cron, start_at=WINDOW_START)
    for url in (
        f"/admin/jobs/trigger/{trigger.pk}/change/",
        f"/admin/jobs/job/{trigger.job_id}/change/",
    ):
        page = admin_client.get(url).content.decode()
        assert f"{words} (Europe/London time)" in page, url
        assert "Fixed time" in page
        rows = [f"<tr><td>{local}</td><td>{utc}</td></tr>" for local, utc in fires]
        assert all(row in page for row in rows), url
        assert "Sat 2030-04-03" not in page  # five, no more


def test_a_seconds_field_is_read_as_seconds_not_as_minutes(admin_client):
    trigger = cron_trigger("30 0 2 * * *", timezone="UTC")
    page = admin_client.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert "At 02:00:30 (UTC time)" in page
    assert "Fixed time" not in page  # UTC has no DST changes to explain


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 2 * * *", "At 02:00"),
        ("0 0 2 * * *", "At 02:00"),
        ("*/15 * * * * *", "Every 15 seconds"),
        ("0 */15 * * * *", "Every 15 minutes"),
        ("0 0 9 * * 1-5", "At 09:00, Monday through Friday"),
        # Both day fields restricted: either matches (Vixie cron).
        ("0 0 1 * 1", "At 00:00, on day 1 of the month, or on Monday"),
        # A day-of-month starting with "*" makes it "both must match".
        ("0 0 */2 * 1", "At 00:00, every 2 days, only on Monday"),
    ],
)
def test_describe_cron(cron, words):
    assert describe_cron(cron) == words


def test_a_wildcard_cron_explains_that_it_follows_elapsed_time(admin_client):
    trigger = cron_trigger("*/15 * * * *", timezone="America/New_York")
    page = admin_client.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert "Every 15 minutes (America/New_York time)" in page
    assert "Wildcard" in page


def test_interval_and_one_off_triggers_show_their_next_fires(admin_client):
    job = make_job("mixed")
    interval = Trigger.objects.create(
        job=job, kind="interval", interval=5400, start_at=WINDOW_START
    )
    once = Trigger.objects.create(
        job=job, kind="once", run_at=datetime(2030, 7, 1, 12, tzinfo=UTC), timezone="Europe/Paris"
    )
    page = admin_client.get(f"/admin/jobs/trigger/{interval.pk}/change/").content.decode()
    assert "Every 1h 30m" in page
    assert "<td>Fri 2030-03-29 01:30:00 UTC</td>" in page
    page = admin_client.get(f"/admin/jobs/trigger/{once.pk}/change/").content.decode()
    assert "Once, at Mon 2030-07-01 14:00:00 CEST" in page
    assert (
        "<tr><td>Mon 2030-07-01 14:00:00 CEST</td><td>Mon 2030-07-01 12:00:00 UTC</td></tr>" in page
    )


def test_a_finished_trigger_says_it_has_no_more_fires(admin_client):
    job = make_job("past")
    once = Trigger.objects.create(job=job, kind="once", run_at=database_now() - timedelta(days=1))
    page = admin_client.get(f"/admin/jobs/trigger/{once.pk}/change/").content.decode()
    assert "the trigger has finished" in page


def test_markup_in_a_job_name_and_a_rejected_cron_renders_escaped(admin_client):
    trigger = cron_trigger("0 2 * * *")
    Job.objects.filter(pk=trigger.job_id).update(name="<script>alert(1)</script>")
    response = admin_client.post(
        f"/admin/jobs/trigger/{trigger.pk}/change/",
        trigger_change_data(trigger, cron="<b>bad</b> * * * *"),
    )
    page = response.content.decode()
    assert response.status_code == 200  # the form again, with the error
    assert "<script>alert(1)</script>" not in page and "<b>bad</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page
    trigger.refresh_from_db()
    assert trigger.cron == "0 2 * * *"


# --- Schedule edits are audited ----------------------------------------------------------


def test_editing_a_triggers_cron_writes_an_audit_entry_with_before_after_and_reason(admin_client):
    trigger = cron_trigger("0 2 * * *")
    response = admin_client.post(
        f"/admin/jobs/trigger/{trigger.pk}/change/",
        trigger_change_data(trigger, cron="0 0 3 * * *", reason="reports moved to 03:00"),
    )
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert trigger.cron == "0 0 3 * * *"
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.action, entry.object_type, entry.object_id) == (
        "ada", "trigger.change", "trigger", str(trigger.pk)
    )  # fmt: skip
    assert entry.reason == "reports moved to 03:00"
    assert entry.before == {"cron": "0 2 * * *"}
    assert entry.after == {"cron": "0 0 3 * * *"}


def test_editing_a_trigger_inline_is_audited_with_the_job_forms_reason(admin_client):
    trigger = cron_trigger("0 2 * * *", start_at=WINDOW_START)
    data = job_change_data(
        trigger.job,
        **{"triggers-0-cron": "*/5 * * * *", "triggers-0-timezone": "UTC"},
        reason="every five minutes now",
    )
    response = admin_client.post(f"/admin/jobs/job/{trigger.job_id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get()  # the job itself did not change
    assert entry.action == "trigger.change"
    assert entry.reason == "every five minutes now"
    assert entry.before == {"cron": "0 2 * * *", "timezone": "Europe/London"}
    assert entry.after == {"cron": "*/5 * * * *", "timezone": "UTC"}


def test_saving_without_changes_writes_no_audit_entry(admin_client):
    trigger = cron_trigger("0 2 * * *", start_at=WINDOW_START)
    response = admin_client.post(
        f"/admin/jobs/job/{trigger.job_id}/change/", job_change_data(trigger.job)
    )
    assert response.status_code == 302
    assert not AuditEntry.objects.exists()


def test_editing_a_job_records_its_changed_fields(admin_client):
    job = make_job("nightly", timeout=60)
    response = admin_client.post(
        f"/admin/jobs/job/{job.pk}/change/",
        job_change_data(job, timeout="120", target="demo.echo", reason="slower now"),
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.reason) == ("job.change", "slower now")
    assert entry.before == {"target": "demo.noop", "timeout": 60}
    assert entry.after == {"target": "demo.echo", "timeout": 120}


def test_adding_a_job_with_a_trigger_audits_both(admin_client):
    data = {
        **job_change_data(Job(name="new job", target="demo.echo")),
        "reason": "new nightly export",
        "triggers-TOTAL_FORMS": 1,
        "triggers-INITIAL_FORMS": 0,
        "triggers-0-kind": "once",
        "triggers-0-timezone": "UTC",
        "triggers-0-run_at_0": "2030-01-01",
        "triggers-0-run_at_1": "09:00:00",
        "triggers-0-misfire_policy": "fire_once",
        "triggers-0-misfire_grace": "60",
    }
    response = admin_client.post("/admin/jobs/job/add/", data)
    assert response.status_code == 302
    job = Job.objects.get(name="new job")
    trigger = job.triggers.get()
    job_entry = AuditEntry.objects.get(action="job.create")
    assert (job_entry.object_id, job_entry.reason, job_entry.before) == (
        str(job.pk), "new nightly export", None
    )  # fmt: skip
    assert job_entry.after["name"] == "new job"
    assert job_entry.after["target"] == "demo.echo"
    trigger_entry = AuditEntry.objects.get(action="trigger.create")
    assert trigger_entry.object_id == str(trigger.pk)
    assert trigger_entry.after["run_at"] == "2030-01-01T09:00:00+00:00"
    assert trigger_entry.after["job"] == job.pk


def test_deleting_a_trigger_inline_and_on_its_page_is_audited(admin_client):
    trigger = cron_trigger("0 2 * * *")
    other = Trigger.objects.create(job=trigger.job, kind="interval", interval=60)
    data = job_change_data(trigger.job, **{"triggers-0-DELETE": "on"}, reason="one is enough")
    assert admin_client.post(f"/admin/jobs/job/{trigger.job_id}/change/", data).status_code == 302
    assert not Trigger.objects.filter(pk=trigger.pk).exists()
    entry = AuditEntry.objects.get(action="trigger.delete")
    assert (entry.object_id, entry.reason, entry.after) == (str(trigger.pk), "one is enough", None)
    assert entry.before["cron"] == "0 2 * * *"

    response = admin_client.post(f"/admin/jobs/trigger/{other.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    entry = AuditEntry.objects.filter(action="trigger.delete").latest("id")
    assert (entry.object_id, entry.before["interval"]) == (str(other.pk), 60)


def test_deleting_a_job_is_audited_with_its_triggers(admin_client):
    trigger = cron_trigger("0 2 * * *")
    job = trigger.job
    response = admin_client.post(f"/admin/jobs/job/{job.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Job.objects.exists()
    entry = AuditEntry.objects.get(action="job.delete")
    assert (entry.actor, entry.object_id, entry.after) == ("ada", str(job.pk), None)
    assert entry.before["name"] == "nightly"
    assert [t["cron"] for t in entry.before["triggers"]] == ["0 2 * * *"]


# --- Actions and roles -------------------------------------------------------------------


def changelist_action(client, model: str, action: str, *pks):
    return client.post(
        f"/admin/jobs/{model}/",
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_pause_resume_and_run_now_on_jobs(client_for, role_users, role):
    client = client_for(role)
    job = make_job("nightly")
    page = changelist_action(client, "job", "pause_selected", job.pk).content.decode()
    assert "Paused 1 job." in page
    job.refresh_from_db()
    assert job.paused
    page = changelist_action(client, "job", "resume_selected", job.pk).content.decode()
    assert "Resumed 1 job." in page
    job.refresh_from_db()
    assert not job.paused
    page = changelist_action(client, "job", "run_selected_now", job.pk).content.decode()
    execution = Execution.objects.get()
    assert f"Queued a run of nightly (execution #{execution.pk})." in page
    assert (execution.origin, execution.state) == ("manual", "pending")
    assert execution.requested_by == role_users[role]
    entries = list(AuditEntry.objects.order_by("id").values_list("action", "object_id"))
    assert entries == [
        ("job.pause", str(job.pk)), ("job.resume", str(job.pk)), ("job.run_now", str(job.pk))
    ]  # fmt: skip


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_pause_and_resume_on_triggers(client_for, role):
    client = client_for(role)
    trigger = cron_trigger("0 2 * * *")
    page = changelist_action(client, "trigger", "pause_selected", trigger.pk).content.decode()
    assert "Paused 1 trigger." in page
    trigger.refresh_from_db()
    assert trigger.paused
    page = changelist_action(client, "trigger", "resume_selected", trigger.pk).content.decode()
    assert "Resumed 1 trigger." in page
    trigger.refresh_from_db()
    assert not trigger.paused
    actions = list(AuditEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["trigger.pause", "trigger.resume"]


def test_pausing_what_is_already_paused_says_so_and_audits_nothing(admin_client):
    job = make_job("nightly", paused=True)
    page = changelist_action(admin_client, "job", "pause_selected", job.pk).content.decode()
    assert "Paused 0 jobs. 1 already paused." in page
    assert not AuditEntry.objects.exists()


def test_staff_without_operator_permissions_cannot_use_the_actions(role_users, client):
    vera = role_users["viewer"]
    vera.is_staff = True
    vera.save()
    client.force_login(vera)
    job = make_job("nightly")
    page = client.get("/admin/jobs/job/").content.decode()
    assert "pause_selected" not in page and "run_selected_now" not in page
    changelist_action(client, "job", "pause_selected", job.pk)
    changelist_action(client, "job", "run_selected_now", job.pk)
    job.refresh_from_db()
    assert not job.paused
    assert not Execution.objects.exists()
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("role", [None, "viewer"])
def test_anonymous_and_viewers_cannot_reach_the_admin_nor_change_anything(client_for, role):
    client = client_for(role)
    job = make_job("nightly")
    for url in ("/admin/", "/admin/jobs/job/", f"/admin/jobs/job/{job.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/") or response["Location"].startswith(
            "/login/"
        )
    response = client.post(
        "/admin/jobs/job/", {"action": "pause_selected", "_selected_action": [str(job.pk)]}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert not job.paused
    assert not AuditEntry.objects.exists()


def test_an_operator_sees_jobs_read_only_and_cannot_change_them(client_for):
    client = client_for("operator")
    trigger = cron_trigger("0 2 * * *", start_at=WINDOW_START)
    job = trigger.job
    page = client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "At 02:00 (Europe/London time)" in html  # the schedule facts are still shown
    assert 'name="name"' not in html and "Reason for this change" not in html

    data = job_change_data(job, name="renamed", **{"triggers-0-cron": "0 3 * * *"})
    assert client.post(f"/admin/jobs/job/{job.pk}/change/", data).status_code == 403
    assert client.post(
        f"/admin/jobs/trigger/{trigger.pk}/change/", trigger_change_data(trigger, cron="0 3 * * *")
    ).status_code == 403  # fmt: skip
    assert client.get("/admin/jobs/job/add/").status_code == 403
    assert client.post(f"/admin/jobs/job/{job.pk}/delete/", {"post": "yes"}).status_code == 403
    job.refresh_from_db()
    trigger.refresh_from_db()
    assert (job.name, trigger.cron) == ("nightly", "0 2 * * *")
    assert not AuditEntry.objects.exists()


def test_an_admin_who_is_not_a_superuser_can_edit(client_for, role_users):
    assert not role_users["admin"].is_superuser
    job = make_job("nightly")
    response = client_for("admin").post(
        f"/admin/jobs/job/{job.pk}/change/", job_change_data(job, name="renamed")
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.name == "renamed"
    assert AuditEntry.objects.get().after == {"name": "renamed"}


def test_executions_stay_read_only_in_the_admin(admin_client):
    job = make_job("nightly")
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="succeeded"
    )
    page = admin_client.get(f"/admin/jobs/execution/{execution.pk}/change/").content.decode()
    assert 'name="state"' not in page
    assert admin_client.get("/admin/jobs/execution/add/").status_code == 403
