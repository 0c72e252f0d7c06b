"""The trend pages and fragments, the job page's strip and charts, and the timeline:
who may see them, and that they draw what the rollup and the schedule say."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.models import Trigger, database_now
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def job():
    job = make_job("nightly")
    now = database_now()
    make_execution(job, origin="schedule", scheduled_for=now,
                   dispatched_at=now + timedelta(milliseconds=120))  # fmt: skip
    make_execution(job, state="failed", created_at=now - timedelta(hours=2))
    return job


def urls(job) -> list[str]:
    return [
        "/overview/trends/",
        "/overview/trends/?window=7d",
        f"/jobs/{job.pk}/trends/?window=7d",
        f"/jobs/{job.pk}/",
        "/timeline/",
    ]


def test_anonymous_users_are_sent_to_log_in(client_for, job):
    for url in urls(job):
        response = client_for(None).get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_sees_the_trends_and_the_timeline(client_for, job, role):
    client = client_for(role)
    for url in urls(job):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert "style=" not in body, url  # the CSP blocks style attributes
        assert "<script>" not in body, url


def test_a_user_without_a_role_is_refused(client, django_user_model, job):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw"))
    for url in urls(job):
        assert client.get(url).status_code == 403, url


def test_an_unknown_window_is_a_clear_400(client_for, job):
    for url in ("/overview/trends/?window=1y", f"/jobs/{job.pk}/trends/?window=month"):
        response = client_for("viewer").get(url)
        assert response.status_code == 400
        assert b"24h, 7d" in response.content


def test_overview_trends_draw_three_charts_with_titles_axes_and_summaries(client_for, job):
    response = client_for("viewer").get("/overview/trends/?window=7d", **HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="trends"')  # the fragment only
    assert 'data-window="7d"' in body
    assert body.count("<svg") == 3
    assert body.count("<desc") == 3 and body.count("<title id=") == 3
    assert "Runs per 6 hours by state" in body
    assert "2 finished runs in the last 7 days: 1 succeeded, 1 failed." in body
    assert "Failure rate over the last 7 days: 50.0%" in body
    assert "Fire lag p95" in body and "120 ms" in body
    assert 'class="s-failed"' in body and 'class="tick"' in body
    page = client_for("viewer").get("/overview/trends/").content.decode()
    assert "<h1>Trends</h1>" in page and 'data-window="24h"' in page


def test_the_overview_loads_its_trends_after_the_page(client_for):
    body = client_for("viewer").get("/").content.decode()
    assert 'hx-get="/overview/trends/?window=24h"' in body
    assert 'href="/overview/trends/?window=24h"' in body  # works without htmx too


def test_the_job_page_shows_runs_and_charts_before_its_settings(client_for, job):
    body = client_for("operator").get(f"/jobs/{job.pk}/").content.decode()
    positions = [body.index(marker) for marker in (
        'class="run-strip"', 'id="job-trends"', "Recent executions", 'id="job-schedule"',
        "Run now",
    )]  # fmt: skip
    assert positions == sorted(positions)
    marks = re.findall(
        r'<a class="run-mark s-(\w+)" href="/executions/(\d+)/" title="([^"]+)"', body
    )
    assert [m[0] for m in marks] == ["failed", "succeeded"]  # oldest first
    assert "took 2s" in marks[1][2] and "UTC" in marks[1][2]
    assert "Runs, last 24 hours" in body
    assert "2 runs of nightly in the last 24 hours, 1 of them failed" in body
    assert "Run duration" in body and "Success rate" in body


def test_the_job_page_strip_is_one_query_and_capped_at_50(client_for, job):
    now = database_now()
    for i in range(60):
        make_execution(job, created_at=now - timedelta(minutes=i, seconds=30))
    client = client_for("viewer")
    with CaptureQueriesContext(connection) as queries:
        body = client.get(f"/jobs/{job.pk}/").content.decode()
    assert body.count('class="run-mark') == 50
    assert sum("LATERAL" in q["sql"] for q in queries.captured_queries) == 1


def test_the_timeline_shows_next_fires_of_unpaused_jobs_and_their_collisions(client_for):
    for name in ("alpha", "beta"):
        Trigger.objects.create(job=make_job(name), kind="cron", cron="*/30 * * * *")
    Trigger.objects.create(job=make_job("sleeper", paused=True), kind="cron", cron="* * * * *")
    Trigger.objects.create(job=make_job("busy"), kind="interval", interval=60)
    body = client_for("viewer").get("/timeline/").content.decode()
    assert "alpha" in body and "beta" in body and "sleeper" not in body
    assert "Busiest minutes" in body and "alpha, beta, busy" in body
    # 48 half-hourly fires each for alpha and beta, and busy's cut at 200 of 1,440.
    assert body.count('class="fire"') == 48 * 2 + 200
    assert "Cut at 200 fires: busy." in body
    assert 'href="/timeline/"' in body  # the navigation link


def test_run_strips_for_a_list_of_jobs_render_compact(job):
    from django.template.loader import render_to_string

    from jobs.trend_views import run_strips

    other = make_job("idle")
    strips = run_strips([job.pk, other.pk])
    assert [m["state"] for m in strips[job.pk]] == ["failed", "succeeded"]
    assert strips[other.pk] == []
    html = render_to_string("jobs/_run_strip.html", {"runs": strips[job.pk], "compact": True})
    assert 'class="run-strip compact"' in html and html.count('class="run-mark s-') == 2
    assert "No runs yet." in render_to_string("jobs/_run_strip.html", {"runs": []})
