"""The dashboard's rough edges, each fixed: one duration format, a live locks page, stale
rather than held, the leader lease explained, lag in words and human units, no raw
microseconds, an interval's rate stated once, names and diffs in the audit log, the
run-now reason on its execution, chains that poll until done, and a favicon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.template import Context, Template

from controlplane import audit
from controlplane.durations import ago, duration, duration_ms, relative
from jobs.actions import run_now
from jobs.models import Execution, Trigger, database_now
from locks.models import Lock
from tests.jobs.factories import make_execution, make_job

HTMX = {"HX-Request": "true"}


# --- One duration format ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"), (0.25, "250ms"), (0.0004, "1ms"), (0.9996, "1s"), (1.23, "1.2s"),
        (5, "5s"), (9.96, "10s"), (42.7, "42s"), (60, "1m"), (245, "4m 05s"),
        (3596, "59m 56s"), (3600, "1h"), (10920, "3h 02m"), (86400, "1d"),
        (183600, "2d 03h"), (-1.5, "-1.5s"), (None, ""),
    ],
)  # fmt: skip
def test_a_duration_is_written_one_way(seconds, text):
    assert duration(seconds) == text


def test_times_from_now_and_ages_read_in_the_same_units():
    assert relative(3596) == "in 59m 56s" and relative(-5) == "5s ago"
    assert relative(timedelta(minutes=5)) == "in 5m"
    assert ago(5) == "5s ago" and ago(timedelta(seconds=-90)) == "1m 30s ago"
    assert duration_ms(15201.3) == "15s" and duration_ms(250) == "250ms"


def test_the_template_filters_use_the_same_format():
    template = Template(
        "{% load durations %}{{ a|duration }}|{{ b|duration_ms }}|{{ c|relative }}|{{ d|ago }}"
    )
    context = Context({"a": 10920, "b": 1200, "c": -5, "d": 3596})
    assert template.render(context) == "3h 02m|1.2s|5s ago|59m 56s ago"


# --- Locks ---------------------------------------------------------------------------------


def lock(name: str, expires_in: float, holder: str = "worker-9") -> Lock:
    now = database_now()
    return Lock.objects.create(
        name=name, holder=holder, token=5, locked_at=now - timedelta(hours=1),
        locked_until=now + timedelta(seconds=expires_in),
    )  # fmt: skip


def test_the_locks_page_polls_itself_keeping_what_it_shows(client_for):
    client = client_for("viewer")
    page = client.get("/locks/").content.decode()
    assert '<div id="locks" hx-get="/locks/" hx-trigger="every 5s" hx-swap="outerHTML">' in page
    page = client.get("/locks/", {"all": "1"}, headers=HTMX).content.decode()
    assert 'hx-get="/locks/?all=1" hx-trigger="every 5s"' in page
    assert "locks/lock_list.js" in client.get("/locks/").content.decode()


def test_an_expired_lock_shows_as_expired_and_stale_not_held(client_for):
    lock("export:old", -90)
    lock("report:eu", 300)
    page = client_for("viewer").get("/locks/").content.decode()
    expired_row = page[page.index("export:old") : page.index("report:eu")]
    assert "expired (stale)" in expired_row and ">held<" not in expired_row
    assert "expired 1m 30s ago and never released" in expired_row
    held_row = page[page.index("report:eu") :]
    assert ">held<" in held_row


def test_force_releasing_the_leader_lease_explains_what_happens_first(client_for):
    lock("cluster:leader", 10, holder="node-a")
    lock("report:eu", 300)
    client = client_for("operator")
    page = client.get("/locks/release/cluster%3Aleader").content.decode()
    assert "This is the leader lease." in page
    assert "A new leader is then elected" in page
    assert page.index("This is the leader lease.") < page.index("Force release</button>")
    inline = client.get("/locks/release/cluster%3Aleader", headers=HTMX).content.decode()
    assert "This is the leader lease." in inline
    other = client.get("/locks/release/report%3Aeu").content.decode()
    assert "leader lease" not in other


def test_the_force_release_button_is_kept_on_one_line(client_for):
    lock("report:eu", 300)
    page = client_for("operator").get("/locks/").content.decode()
    assert 'class="button danger force-release"' in page


# --- Overview: lag and upcoming fires ----------------------------------------------------


def test_the_overview_gives_fire_lag_in_human_units_and_plain_words(client_for):
    job = make_job("nightly-report")
    now = database_now()
    when = now - timedelta(minutes=1)
    Execution.objects.create(
        job=job, origin="schedule", state="succeeded", scheduled_for=when, created_at=when,
        dispatched_at=when + timedelta(milliseconds=15201.3),
    )  # fmt: skip
    page = client_for("viewer").get("/").content.decode()
    assert ">15s<" in page
    assert "15201.3" not in page and " ms<" not in page
    assert "dispatched_at" not in page and "scheduled_for" not in page
    assert "How late the cluster started the scheduled fires" in page


def test_the_upcoming_list_shows_no_raw_microseconds(client_for):
    job = make_job("nightly-report")
    run_at = database_now() + timedelta(hours=2, microseconds=123456)
    Trigger.objects.create(job=job, kind="once", run_at=run_at)
    page = client_for("viewer").get("/").content.decode()
    assert "123456" not in page
    assert "Once, at" in page


def test_an_interval_trigger_states_its_rate_once(client_for):
    job = make_job("poller")
    Trigger.objects.create(job=job, kind="interval", interval=90)
    for url in ("/jobs/", f"/jobs/{job.pk}/"):
        page = client_for("viewer").get(url).content.decode()
        assert page.lower().count("every 1m 30s") == 1, url
        assert "every 90 s" not in page


# --- Audit log ---------------------------------------------------------------------------


def test_the_audit_log_names_objects_and_shows_a_field_diff(client_for, role_users):
    job = make_job("nightly-report")
    trigger = Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *")
    execution = make_execution(job)
    admin = role_users["admin"]
    audit.record(admin, "job.change", "job", job.pk, "slower", {"timeout": 60, "paused": False},
                 {"timeout": 120, "paused": False})  # fmt: skip
    audit.record(admin, "trigger.change", "trigger", trigger.pk, "", {"cron": "0 2 * * *"},
                 {"cron": "0 3 * * *"})  # fmt: skip
    audit.record(admin, "execution.rerun", "execution", execution.pk, "")
    audit.record(admin, "job.delete", "job", 99999, "", {"name": "old-export", "timeout": 5})
    page = client_for("viewer").get("/audit/").content.decode()
    assert ">job nightly-report</a>" in page and f"job {job.pk}<" not in page
    assert f">trigger #{trigger.pk} of nightly-report</a>" in page
    assert f">execution #{execution.pk} of nightly-report</a>" in page
    assert ">job old-export</a>" in page  # deleted: the name it had
    assert (
        '<code>timeout</code>: <code class="json">60</code> &rarr; <code class="json">120</code>'
        in page
    )
    assert "<code>paused</code>" not in page  # unchanged fields are left out
    assert '<code class="json">&quot;0 3 * * *&quot;</code>' in page
    assert "{&quot;timeout&quot;:60" not in page  # no raw JSON for field sets


def test_the_audit_diff_stays_redacted_below_admin(client_for, role_users):
    job = make_job("billing")
    before, after = {"kwargs": {"password": "hunter2"}}, {"kwargs": {"password": "hunter3"}}
    audit.record(role_users["admin"], "job.change", "job", job.pk, "", before, after)
    assert "hunter" not in client_for("viewer").get("/audit/").content.decode()
    assert "hunter3" in client_for("admin").get("/audit/").content.decode()


# --- Executions ----------------------------------------------------------------------------


def test_the_run_now_reason_is_shown_on_the_execution_it_created(client_for, role_users):
    job = make_job("nightly-report")
    execution = run_now(job, role_users["operator"], reason="month-end close, rerun by hand")
    page = client_for("viewer").get(f"/executions/{execution.pk}/").content.decode()
    assert "<dt>Reason</dt><dd>month-end close, rerun by hand</dd>" in page


def test_a_chain_keeps_polling_until_every_attempt_is_finished(client_for):
    job = make_job("flaky", max_attempts=3)
    first = make_execution(job, state="failed", attempt=1)
    make_execution(job, state="failed", attempt=2, retry_of=first)
    third = make_execution(job, state="pending", attempt=3, retry_of=first, started_at=None,
                           finished_at=None)  # fmt: skip
    client = client_for("viewer")
    chain = {"HX-Request": "true", "HX-Target": "execution-chain"}
    fragment = client.get(f"/executions/{first.pk}/", headers=chain).content.decode()
    assert 'hx-trigger="every 5s"' in fragment  # the first attempt is done; the third is not
    Execution.objects.filter(pk=third.pk).update(state="succeeded")
    fragment = client.get(f"/executions/{first.pk}/", headers=chain).content.decode()
    assert "hx-trigger" not in fragment


# --- Favicon -------------------------------------------------------------------------------


def test_the_favicon_is_served_to_anyone_and_linked_from_every_page(client, client_for):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/svg+xml"
    assert b"<svg" in response.content
    page = client_for("viewer").get("/").content.decode()
    assert 'rel="icon" href="/static/controlplane/favicon.svg"' in page


def test_admin_times_are_formatted_with_seconds_and_zone():
    # The format module drives the admin's times: seconds and zone, never "p.m.".
    from django.utils import formats

    when = datetime(2026, 12, 4, 14, 0, 55, tzinfo=UTC)
    assert formats.date_format(when, "DATETIME_FORMAT") == "2026-12-04 14:00:55 UTC"
