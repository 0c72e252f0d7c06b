"""The dashboard in a real headless Chromium: what an operator does every day."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.models import AuditEntry
from jobs.models import Execution, Trigger, database_now, queue_manual_run
from locks.leases import acquire
from locks.models import Lock
from tests.browser.conftest import screenshot
from tests.conftest import wait_for
from tests.jobs.factories import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def mark_page(page) -> None:
    """Tag the loaded document; a reload or navigation would lose the tag."""
    page.evaluate("window.__not_reloaded = true")


def was_not_reloaded(page) -> bool:
    return page.evaluate("window.__not_reloaded === true")


def open_row_menu(row) -> None:
    """Open a jobs-list row's actions menu and wait for its actions to load."""
    row.locator("details.row-menu > summary").click()
    row.locator("details.row-menu .menu-actions").wait_for()


def test_an_operator_logs_in_and_sees_the_overview(page_for, live_server):
    page = page_for("operator")
    assert page.url == f"{live_server.url}/"
    assert page.locator("h1").first.inner_text().strip() != ""
    assert page.locator(".who").inner_text() == "otto"
    screenshot(page, "overview")


def test_a_running_execution_turns_succeeded_without_reloading(page_for, live_server, start_node):
    job = make_job("slow", "demo.sleep", kwargs={"seconds": 3})
    start_node("browser-node")
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "running", timeout=20)

    page = page_for("viewer")
    page.goto(f"{live_server.url}/executions/{execution.pk}/")
    assert page.locator("#execution-status .state-running").count() == 1
    assert page.locator("#execution-status").get_attribute("hx-trigger") == "every 2s"
    mark_page(page)
    page.locator("#execution-status .state-succeeded").wait_for(timeout=20_000)
    assert was_not_reloaded(page)
    # Finished: the fragment came back without its polling attribute.
    assert page.locator("#execution-status").get_attribute("hx-trigger") is None
    screenshot(page, "execution_detail")


def test_run_now_from_the_jobs_page_appears_and_succeeds(page_for, live_server, start_node):
    job = make_job("on demand", "demo.sleep", kwargs={"seconds": 1})
    start_node("browser-node")
    page = page_for("operator")
    page.goto(f"{live_server.url}/jobs/")
    screenshot(page, "jobs")
    row = page.locator(f"#job-{job.pk}")
    open_row_menu(row)
    row.locator("summary", has_text="Run now").click()
    row.locator("button", has_text="Run now").click()
    page.get_by_text("Open execution #").wait_for()
    execution = Execution.objects.get(job=job)
    assert execution.origin == "manual" and execution.requested_by.username == "otto"

    page.goto(f"{live_server.url}/executions/?job={job.pk}")
    mark_page(page)
    row = page.locator("tr", has=page.locator(f"a[href='/executions/{execution.pk}/']"))
    row.wait_for()
    row.locator(".state-succeeded").wait_for(timeout=20_000)
    assert was_not_reloaded(page)
    screenshot(page, "executions")


def test_rerun_a_failed_execution(page_for, live_server):
    job = make_job("flaky", "demo.fail", kwargs={"message": "disk full"})
    failed = Execution.objects.create(
        job=job, scheduled_for=database_now() - timedelta(hours=1), origin="schedule",
        state="failed", error="RuntimeError: disk full", args=[], kwargs={"message": "once"},
    )  # fmt: skip
    page = page_for("operator")
    page.goto(f"{live_server.url}/executions/{failed.pk}/")
    page.locator("#execution-status button", has_text="Rerun").click()
    rerun = wait_for(lambda: Execution.objects.filter(rerun_of=failed).first())
    page.wait_for_url(f"{live_server.url}/executions/{rerun.pk}/")
    assert rerun.origin == "rerun" and rerun.requested_by.username == "otto"
    assert rerun.kwargs == {"message": "once"} and rerun.scheduled_for == failed.scheduled_for
    assert f"#{failed.pk}" in page.content()
    assert AuditEntry.objects.filter(action="execution.rerun", object_id=str(failed.pk)).exists()


def test_pause_and_resume_a_trigger(page_for, live_server):
    job = make_job("nightly", "demo.noop")
    trigger = Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *")
    page = page_for("operator")
    page.goto(f"{live_server.url}/jobs/")
    mark_page(page)
    row = page.locator(f"#job-{job.pk}")
    open_row_menu(row)
    row.locator(".job-trigger button", has_text="Pause").click()
    # The answer is the row, swapped in place: the trigger shows paused, the menu closed.
    page.locator(f"#job-{job.pk} .job-schedule .state-pending", has_text="paused").wait_for()
    assert Trigger.objects.get(pk=trigger.pk).paused
    open_row_menu(row)
    row.locator(".job-trigger button", has_text="Resume").click()
    page.locator(f"#job-{job.pk} .job-schedule .state-pending").wait_for(state="detached")
    assert not Trigger.objects.get(pk=trigger.pk).paused
    assert was_not_reloaded(page)
    actions = list(
        AuditEntry.objects.filter(object_type="trigger").values_list("action", flat=True)
    )
    assert sorted(actions) == ["trigger.pause", "trigger.resume"]


def test_force_release_a_lock_with_a_reason_and_find_the_audit_entry(page_for, live_server):
    lease = acquire("billing:invoices", holder="worker-9", at_most=600)
    page = page_for("operator")
    page.goto(f"{live_server.url}/locks/")
    row = page.locator("tr", has_text="billing:invoices")
    row.get_by_text("Force release").click()
    row.locator("textarea[name=reason]").fill("worker-9 is wedged since the deploy")
    row.locator("button", has_text="Force release").click()
    page.get_by_text("worker-9", exact=False).first.wait_for()
    wait_for(lambda: Lock.objects.get(name="billing:invoices").holder == "")
    assert Lock.objects.get(name="billing:invoices").token == lease.token + 1
    screenshot(page, "locks")

    page.goto(f"{live_server.url}/audit/")
    entry = page.locator("tr", has_text="worker-9 is wedged since the deploy")
    assert entry.count() == 1
    assert "otto" in entry.inner_text() and "lock.force_release" in entry.inner_text()
    screenshot(page, "audit_log")


def test_clean_up_a_stale_lock(page_for, live_server):
    Lock.objects.create(
        name="reports:nightly", holder="old-worker", token=3,
        locked_at=database_now() - timedelta(hours=2),
        locked_until=database_now() - timedelta(hours=1),
    )  # fmt: skip
    page = page_for("operator")
    page.goto(f"{live_server.url}/locks/")
    row = page.locator("tr", has_text="reports:nightly")
    # Its status (expired, so stale: never "held") and the stale reason.
    assert row.locator(".stale").all_inner_texts() == ["expired (stale)", "stale"]
    page.locator("button", has_text="Clean up stale locks").click()
    wait_for(lambda: Lock.objects.get(name="reports:nightly").holder == "")
    page.locator("tr", has_text="reports:nightly").wait_for(state="detached")
    assert AuditEntry.objects.filter(action="lock.cleanup_stale", actor="otto").count() == 1


ACTION_BUTTONS = ["Run now", "Pause", "Resume", "Rerun", "Force release", "Clean up stale locks"]


@pytest.mark.parametrize(("role", "sees_buttons"), [("viewer", False), ("operator", True)])
def test_only_those_allowed_see_action_buttons(page_for, live_server, role, sees_buttons):
    job = make_job("visible", "demo.noop")
    Trigger.objects.create(job=job, kind="interval", interval=3600)
    finished = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="failed"
    )
    acquire("held:lock", holder="w", at_most=600)
    Lock.objects.create(name="stale:lock", holder="gone", token=1,
                        locked_at=database_now() - timedelta(hours=1),
                        locked_until=database_now() - timedelta(minutes=5))  # fmt: skip
    page = page_for(role)
    seen = set()
    for path in ["/jobs/", f"/executions/{finished.pk}/", "/locks/"]:
        page.goto(f"{live_server.url}{path}")
        if path == "/jobs/":
            open_row_menu(page.locator(f"#job-{job.pk}"))
        for label in ACTION_BUTTONS:
            if page.locator("button, a.button, summary", has_text=label).count():
                seen.add(label)
    if sees_buttons:
        assert seen == set(ACTION_BUTTONS) - {"Resume"}
    else:
        assert seen == set()


def test_main_pages_render_without_script_errors(page_for, live_server):
    job = make_job("<script>alert(1)</script>", "demo.noop")
    Trigger.objects.create(job=job, kind="interval", interval=60)
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="failed",
        error="<img src=x onerror=alert(2)>",
    )  # fmt: skip
    page = page_for("admin")
    errors, dialogs = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for name, path in [
        ("overview", "/"), ("jobs", "/jobs/"), ("job_detail", f"/jobs/{job.pk}/"),
        ("executions", "/executions/"), ("execution_failed", f"/executions/{execution.pk}/"),
        ("locks", "/locks/"), ("nodes", "/nodes/"), ("audit_log", "/audit/"),
    ]:  # fmt: skip
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        screenshot(page, f"page_{name}")
    assert errors == []
    assert dialogs == []  # the escaped <script> and onerror never ran


def test_every_page_works_under_the_content_security_policy(
    page_for, live_server, role_users, csp_violations
):
    job = make_job("csp", "demo.echo", kwargs={"password": "x"})
    Trigger.objects.create(job=job, kind="cron", cron="*/5 * * * *")
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="failed", error="boom",
        traceback="Traceback", started_at=database_now(), finished_at=database_now(),
    )  # fmt: skip
    acquire("csp:lock", holder="w", at_most=600)
    role_users["admin"].is_superuser = True
    role_users["admin"].save()
    page = page_for("admin")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pages = [
        "/", "/jobs/", f"/jobs/{job.pk}/", "/executions/", f"/executions/{execution.pk}/",
        "/locks/", "/locks/release/csp%3Alock", "/nodes/", "/audit/", "/tokens/", "/admin/",
        "/admin/jobs/job/", f"/admin/jobs/job/{job.pk}/change/", "/admin/jobs/trigger/add/",
        "/admin/locks/lock/", "/admin/controlplane/apitoken/", "/admin/axes/accessattempt/",
    ]  # fmt: skip
    for path in pages:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
    # htmx works: a run-now through its form swaps the answer in.
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    page.fill(f"#run-{job.pk}-reason", "csp check")
    page.locator(f"#run-{job.pk} button[type=submit]").click()
    page.locator(f"#run-{job.pk} a", has_text="Open execution").wait_for()
    # Swagger UI: its script is a file of its own; it renders the operations.
    page.goto(f"{live_server.url}/api/docs/")
    page.locator(".opblock").first.wait_for(timeout=20_000)
    screenshot(page, "api_docs_under_csp")
    # A token made on the dashboard is shown once.
    page.goto(f"{live_server.url}/tokens/")
    page.fill("#id_name", "browser")
    page.click(".token-form button[type=submit]")
    assert len(page.locator(".token-key").inner_text().strip()) == 64
    assert errors == [] and csp_violations == []
