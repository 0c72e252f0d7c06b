"""Schedule editing in the admin: a searchable time zone in any case, date-times read and
shown in the trigger's zone, only the chosen kind's fields kept, a live preview before
saving, a warning for a job left without a schedule, and times with seconds and zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User

from jobs.models import Execution, Job, Trigger
from tests.jobs.factories import make_execution, make_job
from tests.jobs.test_admin import job_change_data, trigger_change_data

PREVIEW = "/admin/jobs/trigger/preview/"


@pytest.fixture
def admin_client(client_for):
    return client_for("admin")


def berlin_trigger(**options) -> Trigger:
    fields = {"kind": "cron", "cron": "0 9 * * *", "timezone": "Europe/Berlin", **options}
    return Trigger.objects.create(job=make_job("nightly-report"), **fields)


def post_trigger(client, trigger: Trigger, **overrides):
    return client.post(
        f"/admin/jobs/trigger/{trigger.pk}/change/", trigger_change_data(trigger, **overrides)
    )


# --- Time zone ----------------------------------------------------------------------------


def test_a_time_zone_typed_in_any_case_is_stored_in_its_iana_spelling(admin_client):
    trigger = berlin_trigger(timezone="UTC")
    response = post_trigger(admin_client, trigger, timezone="  europe/BERLIN ")
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert trigger.timezone == "Europe/Berlin"


def test_an_unknown_time_zone_is_refused_beside_the_field(admin_client):
    trigger = berlin_trigger()
    page = post_trigger(admin_client, trigger, timezone="Mars/Olympus").content.decode()
    assert "Unknown time zone" in page
    trigger.refresh_from_db()
    assert trigger.timezone == "Europe/Berlin"


def test_the_time_zone_box_offers_every_zone_name_to_search(admin_client):
    trigger = berlin_trigger()
    page = admin_client.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert 'list="id_timezone-zones"' in page and '<datalist id="id_timezone-zones">' in page
    assert '<option value="America/New_York"></option>' in page
    page = admin_client.get(f"/admin/jobs/job/{trigger.job_id}/change/").content.decode()
    assert 'list="id_triggers-0-timezone-zones"' in page


# --- Date-times in the trigger's zone -----------------------------------------------------


def test_start_and_end_are_entered_and_shown_in_the_triggers_zone(admin_client):
    trigger = berlin_trigger()
    response = post_trigger(
        admin_client, trigger,
        start_at_0="2030-07-01", start_at_1="09:00:00",
        end_at_0="2030-12-01", end_at_1="09:00:00",
    )  # fmt: skip
    assert response.status_code == 302
    trigger.refresh_from_db()
    # 09:00 in Berlin: CEST (UTC+2) in July, CET (UTC+1) in December.
    assert trigger.start_at == datetime(2030, 7, 1, 7, tzinfo=UTC)
    assert trigger.end_at == datetime(2030, 12, 1, 8, tzinfo=UTC)

    page = admin_client.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert "Start at (Europe/Berlin)" in page and "End at (Europe/Berlin)" in page
    assert 'name="start_at_1" value="09:00:00"' in page
    assert "Window: from Mon 2030-07-01 09:00:00 CEST (07:00:00 UTC)" in page


def test_a_wall_clock_time_the_dst_change_skips_is_refused(admin_client):
    trigger = berlin_trigger()
    # Berlin skips 02:00-03:00 on Sunday 2030-03-31.
    page = post_trigger(
        admin_client, trigger, start_at_0="2030-03-31", start_at_1="02:30:00"
    ).content.decode()
    assert "2030-03-31 02:30:00 does not exist in Europe/Berlin" in page
    trigger.refresh_from_db()
    assert trigger.start_at is None


# --- Only the chosen kind's fields ------------------------------------------------------


def test_switching_kind_keeps_only_the_chosen_kinds_field(admin_client):
    trigger = berlin_trigger()
    response = post_trigger(admin_client, trigger, kind="interval", interval="90")
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert (trigger.kind, trigger.interval, trigger.cron) == ("interval", 90, "")


def test_the_chosen_kind_is_validated_on_the_server(admin_client):
    trigger = berlin_trigger()
    page = post_trigger(admin_client, trigger, kind="once").content.decode()
    assert "A one-off trigger needs a date-time to run at." in page
    trigger.refresh_from_db()
    assert trigger.kind == "cron"


# --- Live preview -----------------------------------------------------------------------


def test_the_preview_describes_a_schedule_being_typed_before_it_is_saved(admin_client):
    params = {"kind": "cron", "cron": "0 9 * * *", "timezone": "europe/berlin"}
    page = admin_client.get(PREVIEW, params).content.decode()
    assert "At 09:00 (Europe/Berlin time)" in page
    assert "<th>Europe/Berlin</th><th>UTC</th>" in page
    assert page.count("<tr><td>") == 5
    assert not Trigger.objects.exists()


def test_the_preview_reads_an_inline_triggers_prefixed_fields(admin_client):
    params = {
        "prefix": "triggers-2", "triggers-2-kind": "interval", "triggers-2-interval": "3600",
        "triggers-2-timezone": "UTC",
    }  # fmt: skip
    page = admin_client.get(PREVIEW, params).content.decode()
    assert "Every 1h" in page
    # A UTC trigger: one time column, not two identical ones.
    assert "<th>UTC</th>" in page and "<th>UTC</th><th>UTC</th>" not in page


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"kind": "cron", "cron": "61 * * * *", "timezone": "UTC"}, "Cron"),
        ({"kind": "cron", "cron": "0 9 * * *", "timezone": "Nowhere/Town"}, "Unknown time zone"),
        ({"kind": "interval", "timezone": "UTC"}, "needs an interval"),
    ],
)
def test_the_preview_explains_what_it_cannot_read(admin_client, params, error):
    response = admin_client.get(PREVIEW, params)
    page = response.content.decode()
    assert response.status_code == 200
    assert "Cannot preview this schedule yet" in page and error in page


def test_the_preview_refuses_a_prefix_that_is_not_a_trigger_forms(admin_client):
    assert admin_client.get(PREVIEW, {"prefix": "job-name"}).status_code == 400


def test_the_preview_needs_the_admin_and_the_view_trigger_permission(client_for, role_users):
    params = {"kind": "cron", "cron": "0 9 * * *", "timezone": "UTC"}
    assert client_for(None).get(PREVIEW, params).status_code == 302  # to the login
    assert client_for("viewer").get(PREVIEW, params).status_code == 302  # not staff
    assert client_for("operator").get(PREVIEW, params).status_code == 200  # read only
    staff = User.objects.create_user("staff-only", password="pw", is_staff=True)
    client = client_for(None)
    client.force_login(staff)
    assert client.get(PREVIEW, params).status_code == 403


def test_the_trigger_page_carries_the_live_preview(admin_client):
    trigger = berlin_trigger()
    page = admin_client.get(f"/admin/jobs/trigger/{trigger.pk}/change/").content.decode()
    assert 'class="trigger-preview"' in page and f'hx-get="{PREVIEW}"' in page
    assert "jobs/trigger_form.js" in page and "django_htmx/htmx-2.min.js" in page


# --- A job without a schedule ---------------------------------------------------------------


def test_saving_a_job_with_no_trigger_warns_that_it_only_runs_manually(admin_client):
    job = make_job("adhoc")
    response = admin_client.post(f"/admin/jobs/job/{job.pk}/change/", job_change_data(job),
                                 follow=True)  # fmt: skip
    assert (
        "The job adhoc has no trigger: it runs only when someone runs it"
        in response.content.decode()
    )


def test_an_empty_trigger_row_is_not_dropped_silently(admin_client):
    data = {
        **job_change_data(Job(name="fresh", target="demo.noop")),
        "triggers-TOTAL_FORMS": 1,
        "triggers-0-kind": "cron",
        "triggers-0-timezone": "UTC",
        "triggers-0-misfire_policy": "fire_once",
        "triggers-0-misfire_grace": "60",
    }
    response = admin_client.post("/admin/jobs/job/add/", data, follow=True)
    page = response.content.decode()
    assert Job.objects.get(name="fresh").triggers.count() == 0
    assert "The new trigger row was left empty and not saved" in page
    assert "The job fresh has no trigger" in page


def test_a_job_with_a_trigger_gets_no_warning(admin_client):
    trigger = berlin_trigger()
    response = admin_client.post(
        f"/admin/jobs/job/{trigger.job_id}/change/", job_change_data(trigger.job), follow=True
    )
    assert "has no trigger" not in response.content.decode()


# --- Times with seconds and zone ------------------------------------------------------------


def test_admin_times_show_seconds_and_zone(admin_client):
    job = make_job("nightly-report")
    make_execution(job, scheduled_for=datetime(2026, 12, 4, 14, 0, 55, tzinfo=UTC))
    page = admin_client.get("/admin/jobs/execution/").content.decode()
    assert "2026-12-04 14:00:55 UTC" in page
    assert "p.m." not in page
    assert Execution.objects.count() == 1


def test_a_new_trigger_invites_typing_its_schedule(admin_client):
    page = admin_client.get("/admin/jobs/trigger/add/").content.decode()
    assert "its description and next fire times show here as you type" in page
    assert "Run at (UTC)" in page and 'list="id_timezone-zones"' in page


def test_changing_the_zone_keeps_the_wall_clock_times_typed(admin_client):
    trigger = berlin_trigger(start_at=datetime(2030, 7, 1, 7, tzinfo=UTC))  # 09:00 in Berlin
    response = post_trigger(
        admin_client, trigger, timezone="America/New_York",
        start_at_0="2030-07-01", start_at_1="09:00:00",
    )  # fmt: skip
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert trigger.start_at == datetime(2030, 7, 1, 13, tzinfo=UTC)  # 09:00 EDT
