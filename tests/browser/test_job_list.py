"""The jobs list's search and the executions page's job picker, in a real browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from jobs.models import Execution, database_now
from tests.jobs.factories import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_searching_jobs_swaps_the_table_and_the_job_picker_suggests_names(page_for, live_server):
    billing = make_job("billing sync", "demo.noop")
    make_job("cache warmup", "demo.noop")
    Execution.objects.create(job=billing, scheduled_for=database_now(), origin="manual",
                             state="failed")  # fmt: skip
    page = page_for("viewer")
    page.goto(f"{live_server.url}/jobs/")
    page.evaluate("window.__not_reloaded = true")
    page.fill("#id_q", "bill")
    page.wait_for_url("**/jobs/?q=bill**")
    page.locator("#job-table .job-row").first.wait_for()
    assert page.locator("#job-table .job-row").count() == 1
    assert page.locator(f"#job-{billing.pk}").count() == 1
    assert page.evaluate("window.__not_reloaded === true")  # htmx swapped the table only

    page.goto(f"{live_server.url}/executions/")
    picker = page.locator("input.job-picker")
    picker.fill("sync")
    expect(page.locator("#job-names option")).to_have_count(1)  # polls, no eval (CSP)
    assert page.locator("#job-names option").get_attribute("value") == "billing sync"
    picker.fill("billing sync")
    page.locator("form.execution-filters button[type=submit]").click()
    page.wait_for_url(lambda url: "job=billing%20sync" in url)  # pushed by htmx
    page.locator("#executions a", has_text="billing sync").first.wait_for()
    assert "cache warmup" not in page.locator("#executions").inner_text()
