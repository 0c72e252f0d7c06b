"""The execution page in a real headless Chromium: a run's log and progress arriving live,
cancel with a reason, a lost lock. Under the site's CSP (page_for fails on a violation).

The first tests drive the page with the rows the engine writes (log lines, progress,
events), written here; the last ones run real jobs (demo.chatty, demo.progress) on a real
node.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.models import AuditEntry
from jobs.models import Execution, ExecutionEvent, ExecutionLogLine, database_now, queue_manual_run
from locks.models import Lock
from tests.browser.conftest import screenshot
from tests.conftest import wait_for
from tests.jobs.factories import make_execution, make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def mark_page(page) -> None:
    page.evaluate("window.__not_reloaded = true")


def was_not_reloaded(page) -> bool:
    return page.evaluate("window.__not_reloaded === true")


def running(job, **fields) -> Execution:
    now = database_now()
    values = {"state": "running", "finished_at": None, "node": "node-1", "started_at": now}
    return make_execution(job, **{**values, **fields})


def log(execution, seq: int, message: str, level: str = "INFO") -> None:
    ExecutionLogLine.objects.create(
        execution=execution, seq=seq, at=database_now(), level=level, message=message
    )


# --- driven by the rows the engine writes ---------------------------------------------------


def test_log_lines_and_progress_arrive_without_a_reload(page_for, live_server):
    execution = running(make_job("chatty", "demo.echo"))
    log(execution, 0, "starting")
    page = page_for("viewer")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    mark_page(page)
    assert page.locator(".log-line .log-message").all_inner_texts() == ["starting"]

    for seq in range(1, 4):
        log(execution, seq, f"row {seq} with password=hunter2", level="WARNING")
    Execution.objects.filter(pk=execution.pk).update(
        progress_done=3, progress_total=10, progress_message="copying", progress_at=database_now()
    )
    page.locator(".log-line", has_text="row 3").wait_for(timeout=10_000)
    page.locator("#run-progress", has_text="3 of 10 (30%)").wait_for(timeout=10_000)
    assert page.locator("#run-progress progress").get_attribute("value") == "3.0"
    assert page.locator(".log-line .log-message").all_inner_texts() == [
        "starting", *[f"row {seq} with password=••••" for seq in range(1, 4)]
    ]  # fmt: skip
    screenshot(page, "execution_log_live")

    log(execution, 4, "done")
    Execution.objects.filter(pk=execution.pk).update(
        state="succeeded", finished_at=database_now(), result={"rows": 3}
    )
    page.locator("#execution-status .state-succeeded").wait_for(timeout=10_000)
    page.locator("#log-follow", has_text="End of the log: 5 lines.").wait_for(timeout=10_000)
    assert page.locator(".log-line").count() == 5  # each line once
    assert page.locator("#log-follow").get_attribute("hx-trigger") is None
    assert "rows" in page.locator("pre.execution-result").inner_text()
    assert was_not_reloaded(page)


def test_an_indeterminate_bar_without_a_total(page_for, live_server):
    execution = running(make_job("counting", "demo.echo"), progress_done=7,
                        progress_at=database_now())  # fmt: skip
    page = page_for("viewer")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    bar = page.locator("#run-progress progress")
    assert bar.get_attribute("value") is None
    assert bar.evaluate("element => element.position") == -1  # indeterminate
    assert "7 done, total unknown" in page.locator("#run-progress").inner_text()


def test_cancel_a_pending_run_with_a_reason(page_for, live_server):
    execution = queue_manual_run(make_job("later", "demo.noop"))
    page = page_for("operator")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    mark_page(page)
    page.fill(f"#cancel-reason-{execution.pk}", "not on a holiday")
    page.locator("#execution-status button", has_text="Cancel run").click()
    page.locator("#execution-status .state-cancelled").wait_for()
    status = page.locator("#execution-status").inner_text()
    assert f"Cancelled #{execution.pk}: it will not run." in status
    assert "Cancelled by otto before it started: not on a holiday" in status
    assert page.locator("#execution-status button", has_text="Cancel run").count() == 0
    assert was_not_reloaded(page)
    execution.refresh_from_db()
    assert (execution.state, execution.cancel_reason) == ("cancelled", "not on a holiday")
    assert AuditEntry.objects.filter(action="execution.cancel", actor="otto").count() == 1


def test_a_cancel_reason_is_required_in_the_browser(page_for, live_server):
    execution = running(make_job("busy", "demo.noop"))
    page = page_for("operator")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    page.locator("#execution-status button", has_text="Cancel run").click()
    reason = page.locator(f"#cancel-reason-{execution.pk}")
    assert reason.evaluate("input => input.validity.valueMissing") is True
    assert Execution.objects.get(pk=execution.pk).cancel_requested_at is None


def test_a_lost_lock_appears_live(page_for, live_server):
    execution = running(make_job("guarded", "demo.noop"))
    page = page_for("viewer")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    mark_page(page)
    assert page.locator("#lock-lost").count() == 0
    Execution.objects.filter(pk=execution.pk).update(lock_lost_at=database_now())
    ExecutionEvent.objects.create(execution=execution, kind="lock_lost", actor="otto",
                                  message="force released: wedged")  # fmt: skip
    page.locator("#lock-lost", has_text="by otto: force released: wedged").wait_for(timeout=10_000)
    page.locator(".timeline-lock_lost", has_text="force released: wedged").wait_for(timeout=10_000)
    assert was_not_reloaded(page)
    screenshot(page, "execution_lock_lost")


def test_the_execution_page_of_each_kind_renders_under_the_csp(page_for, live_server):
    job = make_job("kinds", "demo.echo")
    now = database_now()
    first = make_execution(job, state="failed", error="boom", traceback="Traceback",
                           result={"token": "t"}, progress_done=2, progress_total=2,
                           progress_at=now, lock_lost_at=now)  # fmt: skip
    make_execution(
        job, state="pending", attempt=2, retry_of=first, origin="retry", started_at=None,
        finished_at=None, created_at=now + timedelta(seconds=5),
    )  # fmt: skip
    page = page_for("admin")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(f"{live_server.url}/executions/{first.pk}/")
    assert response.status == 200
    page.wait_for_load_state("networkidle")
    stylesheet = page.evaluate(
        "[...document.styleSheets].some(s => (s.href || '').endsWith('/jobs/execution.css'))"
    )
    assert stylesheet
    screenshot(page, "execution_failed_with_retry")
    assert errors == []


# --- with a real node running real jobs (the engine of issue 11) ----------------------------


def test_a_running_jobs_log_and_progress_appear_live(page_for, live_server, start_node):
    job = make_job("steps", "demo.progress", kwargs={"steps": 6, "seconds": 6, "message": "step"})
    start_node("browser-node")
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "running", timeout=20)
    page = page_for("viewer")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    mark_page(page)
    page.locator("#run-progress progress[max]").wait_for(timeout=15_000)
    page.locator("#run-progress", has_text=" of 6 (").wait_for(timeout=15_000)
    page.locator("#execution-status .state-succeeded").wait_for(timeout=30_000)
    page.locator("#run-progress", has_text="6 of 6 (100%)").wait_for(timeout=10_000)
    page.locator("#log-follow", has_text="End of the log").wait_for(timeout=10_000)
    assert was_not_reloaded(page)

    chatty = queue_manual_run(make_job("chatty", "demo.chatty", kwargs={"lines": 8,
                                                                       "seconds": 4}))  # fmt: skip
    wait_for(lambda: Execution.objects.get(pk=chatty.pk).state == "running", timeout=20)
    page.goto(f"{live_server.url}/executions/{chatty.pk}/")
    mark_page(page)
    shown_at_first = page.locator(".log-line").count()
    page.locator("#execution-status .state-succeeded").wait_for(timeout=30_000)
    page.locator("#log-follow", has_text="End of the log").wait_for(timeout=10_000)
    lines = ExecutionLogLine.objects.filter(execution=chatty).count()
    assert lines >= 8 and shown_at_first < lines
    assert page.locator(".log-line").count() == lines
    assert was_not_reloaded(page)
    screenshot(page, "execution_chatty")


def test_cancel_a_running_job_from_its_page(page_for, live_server, start_node):
    job = make_job("long", "demo.progress", kwargs={"steps": 600, "seconds": 600})
    start_node("browser-node")
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "running", timeout=20)
    page = page_for("operator")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    page.fill(f"#cancel-reason-{execution.pk}", "wrong month")
    page.locator("#execution-status button", has_text="Cancel run").click()
    page.locator("#cancel-request", has_text="Cancel requested by otto: wrong month").wait_for()
    page.locator("#execution-status .state-cancelled").wait_for(timeout=30_000)
    page.locator(".timeline-cancel_requested", has_text="wrong month").wait_for(timeout=10_000)
    execution.refresh_from_db()
    assert execution.state == "cancelled" and execution.cancel_requested_by == "otto"
    screenshot(page, "execution_cancelled")


def test_a_force_release_from_the_locks_page_shows_as_a_lost_lock(
    page_for, live_server, start_node
):
    job = make_job("exclusive", "demo.progress", concurrency_policy="forbid",
                   kwargs={"steps": 600, "seconds": 600})  # fmt: skip
    start_node("browser-node")
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "running", timeout=20)
    held = wait_for(lambda: Lock.objects.filter(name=job.lock_name).exclude(holder="").first())

    watching = page_for("viewer")
    watching.goto(f"{live_server.url}/executions/{execution.pk}/")
    mark_page(watching)
    assert watching.locator("#lock-lost").count() == 0

    page = page_for("operator")
    page.goto(f"{live_server.url}/locks/")
    row = page.locator("tr", has_text=job.lock_name)
    row.get_by_text("Force release").click()
    row.locator("textarea[name=reason]").fill("stuck since the deploy")
    row.locator("button", has_text="Force release").click()
    wait_for(lambda: Lock.objects.get(name=job.lock_name).token > held.token)

    # The page open since before the release shows it, without a reload.
    lost = watching.locator("#lock-lost", has_text="by otto")
    lost.wait_for(timeout=30_000)
    assert "stuck since the deploy" in lost.inner_text()
    watching.locator(".timeline-lock_lost", has_text="stuck since the deploy").wait_for(
        timeout=10_000
    )
    assert was_not_reloaded(watching)
    execution.refresh_from_db()
    assert execution.lock_lost_at is not None
    screenshot(watching, "execution_lock_lost_real")
