"""Bulk actions on the executions list in a real headless Chromium at 1440x900: tick rows,
or everything the filter matches, confirm with the count and a reason, read the result.
Under the site's CSP (page_for fails on a violation)."""

from __future__ import annotations

import pytest

from controlplane.models import AuditEntry
from jobs.models import Execution, database_now
from tests.browser.conftest import screenshot
from tests.jobs.factories import make_execution, make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def open_list(page_for, live_server, query: str):
    page = page_for("operator")
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{live_server.url}/executions/{query}")
    return page


def test_tick_rows_confirm_with_a_reason_and_see_the_result(page_for, live_server):
    job = make_job("reports")
    first, second, third = (
        make_execution(job, state="failed", error=f"ValueError: boom {i}") for i in range(3)
    )
    page = open_list(page_for, live_server, "?state=failed")
    rerun = page.get_by_role("button", name="Rerun selected…")
    assert rerun.is_disabled()
    assert page.locator(f"#execution-{first.pk} td.error-line").inner_text() == "ValueError: boom 0"

    page.check(f"#execution-{first.pk} input[data-bulk-row]")
    page.check(f"#execution-{third.pk} input[data-bulk-row]")
    assert page.locator("[data-bulk-count]").inner_text() == "2 selected."
    screenshot(page, "executions-bulk-selected-1440")
    rerun.click()

    page.wait_for_url("**/executions/bulk/**")
    assert page.locator("[data-bulk-confirm-count]").inner_text() == "2"
    assert Execution.objects.count() == 3  # the confirm page changes nothing
    screenshot(page, "executions-bulk-confirm-1440")
    page.fill("#id_reason", "flaky upstream")
    page.get_by_role("button", name="Rerun 2 executions").click()

    page.wait_for_url("**/executions/?state=failed")
    assert page.locator(".messages").inner_text() == "Reran 2 of 2 executions."
    reruns = Execution.objects.filter(origin="rerun")
    assert sorted(r.rerun_of_id for r in reruns) == sorted([first.pk, third.pk])
    assert AuditEntry.objects.get().action == "execution.bulk_rerun"
    assert second.reruns.count() == 0


def test_select_all_matching_survives_the_live_refresh_and_cancels_them(page_for, live_server):
    job = make_job("nightly")
    other = make_job("other")
    now = database_now()
    pending = [make_execution(job, state="pending", finished_at=None) for _ in range(3)]
    running = make_execution(job, state="running", started_at=now, finished_at=None)
    untouched = make_execution(other, state="pending", finished_at=None)
    page = open_list(page_for, live_server, f"?job={job.pk}")

    # The table refreshes itself while runs are live: a tick must outlive the swap.
    page.check("input[data-bulk-page]")
    assert page.locator("[data-bulk-count]").inner_text() == "4 selected."
    page.evaluate(
        """() => new Promise((resolve) =>
             document.body.addEventListener("htmx:afterSettle", resolve, {once: true}))"""
    )
    assert page.locator("input[data-bulk-row]:checked").count() == 4

    page.get_by_label("Select all 4 matching this filter").check()
    assert page.locator("[data-bulk-count]").inner_text() == "All matching this filter selected."
    assert page.locator("input[data-bulk-row]:disabled").count() == 4
    screenshot(page, "executions-bulk-all-matching-1440")
    page.get_by_role("button", name="Cancel selected…").click()

    page.wait_for_url("**/executions/bulk/**")
    assert page.locator("[data-bulk-confirm-count]").inner_text() == "4"
    page.fill("#id_reason", "incident 7")
    page.get_by_role("button", name="Cancel 4 executions").click()

    page.wait_for_url(f"**/executions/?job={job.pk}")
    assert page.locator(".messages").inner_text() == "Cancelled 4 of 4 executions."
    states = set(Execution.objects.filter(pk__in=[e.pk for e in pending]).values_list("state"))
    assert states == {("cancelled",)}
    running.refresh_from_db()
    untouched.refresh_from_db()
    assert running.cancel_requested_at is not None and untouched.state == "pending"
