"""Trends, the run strip and the timeline in a real headless Chromium."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.models import Trigger, database_now
from tests.browser.conftest import screenshot
from tests.jobs.factories import make_execution, make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_overview_switches_its_trends_between_24_hours_and_7_days(page_for, live_server):
    job = make_job("hourly")
    now = database_now()
    for hours, state in ((1, "succeeded"), (2, "failed"), (50, "succeeded")):
        make_execution(job, state=state, created_at=now - timedelta(hours=hours))

    page = page_for("viewer")
    trends = page.locator("#trends[data-window='24h']")
    trends.wait_for()
    assert trends.locator("svg.chart").count() == 3
    assert "2 finished runs in the last 24 hours" in trends.inner_text()
    page.evaluate("window.__not_reloaded = true")
    page.get_by_role("link", name="7 days").click()
    week = page.locator("#trends[data-window='7d']")
    week.wait_for()
    assert "3 finished runs in the last 7 days" in week.inner_text()
    assert page.evaluate("window.__not_reloaded === true")  # swapped in place by htmx
    assert page.url == f"{live_server.url}/"
    screenshot(page, "overview_trends_7d")

    # On a phone the charts shrink with the page: none is wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    widths = page.evaluate(
        "[...document.querySelectorAll('#trends, #trends svg')]"
        ".map(e => Math.ceil(e.getBoundingClientRect().right))"
    )
    assert widths and max(widths) <= 390
    screenshot(page, "overview_trends_7d_phone")


def test_a_square_of_the_job_page_strip_opens_its_run(page_for, live_server):
    job = make_job("strip")
    Trigger.objects.create(job=job, kind="cron", cron="*/15 * * * *")
    now = database_now()
    make_execution(job, created_at=now - timedelta(minutes=20))
    failed = make_execution(job, state="failed", created_at=now - timedelta(minutes=5))

    page = page_for("viewer")
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    marks = page.locator("ol.run-strip a.run-mark")
    assert marks.count() == 2
    newest = marks.last
    assert newest.get_attribute("title").startswith(f"#{failed.pk} failed")
    box = newest.bounding_box()
    assert box["width"] >= 10 and box["height"] >= 10  # a visible, coloured square
    screenshot(page, "job_detail_trends")
    newest.click()
    page.wait_for_url(f"{live_server.url}/executions/{failed.pk}/")

    page.goto(f"{live_server.url}/timeline/")
    assert page.locator("svg.chart rect.fire").count() == 96
    screenshot(page, "timeline")
