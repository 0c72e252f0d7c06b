"""Every dashboard page at a phone's size (390 x 844) and a desktop's (1440 x 900): no page
wider than the screen, every action button and link reachable, a screenshot of each."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest

from controlplane import audit
from jobs.models import Execution, Trigger, database_now
from locks.leases import acquire
from locks.models import Lock, SchedulerNode
from tests.browser.conftest import ARTIFACTS, REPORT_CSP_VIOLATIONS, is_csp_message
from tests.jobs.factories import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

SIZES = [(390, 844), (1440, 900)]

# Runs in the page: scrolls each visible control into view (its own scroll box first, as a
# user would) and reports those that are still outside the screen, covered or empty.
# Controls inside a closed <details> are not shown yet: its <summary> is checked instead.
UNREACHABLE = """
() => {
  const width = document.documentElement.clientWidth;
  const selector = "header a, header button, main a, main button, main summary, "
    + "main input[type=submit], #header a, #content a, #content button, "
    + "#content input[type=submit]";
  const bad = [];
  for (const el of document.querySelectorAll(selector)) {
    if (!el.checkVisibility()) continue;
    el.scrollIntoView({block: "center", inline: "center"});
    const r = el.getBoundingClientRect();
    const label = (el.innerText || el.value || el.getAttribute("href") || el.tagName).trim();
    if (r.width === 0 || r.height === 0) continue;  // e.g. an empty anchor
    if (r.left < -1 || r.right > width + 1) {
      bad.push(`${label}: x ${Math.round(r.left)}..${Math.round(r.right)} of ${width}`);
      continue;
    }
    const x = Math.min(Math.max(r.left + Math.min(r.width / 2, 8), 0), width - 1);
    const y = r.top + r.height / 2;
    const hit = document.elementFromPoint(x, y);
    if (hit && !el.contains(hit) && !hit.contains(el)) {
      bad.push(`${label}: covered by ${hit.tagName}.${hit.className}`);
    }
  }
  window.scrollTo(0, 0);
  return bad;
}
"""


@pytest.fixture
def world(role_users):
    """One of everything the pages show; returns the pages to visit, by name."""
    role_users["admin"].is_superuser = True  # the admin index lists every app
    role_users["admin"].save()
    job = make_job("nightly billing export with a long name", "demo.echo", args=["report"])
    Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *", timezone="Europe/Berlin")
    Trigger.objects.create(job=job, kind="interval", interval=3600)
    make_job("manual only", "demo.noop")
    now = database_now()
    failed = Execution.objects.create(
        job=job, scheduled_for=now - timedelta(minutes=5), origin="schedule", state="failed",
        node="worker-a:4101:7f3a", started_at=now - timedelta(minutes=5), finished_at=now,
        error="ConnectionError: timed out talking to billing-api:443 after 30s " * 3,
        traceback="Traceback (most recent call last):\n  File \"x.py\", line 1\n" * 5,
    )  # fmt: skip
    Execution.objects.create(job=job, scheduled_for=now, origin="manual", state="running",
                             node="worker-a:4101:7f3a", started_at=now)  # fmt: skip
    SchedulerNode.objects.create(id="worker-a:4101:7f3a", hostname="worker-a", pid=4101)
    SchedulerNode.objects.create(id="worker-b:4102:dead", hostname="worker-b", pid=4102,
                                 state="dead", declared_dead_by="worker-a:4101:7f3a")  # fmt: skip
    acquire("billing:invoices:2026-12", holder="worker-a:4101:7f3a", at_most=600)
    Lock.objects.create(name="reports:nightly", holder="worker-b:4102:dead", token=3,
                        locked_at=now - timedelta(hours=2),
                        locked_until=now - timedelta(hours=1))  # fmt: skip
    audit.record(role_users["operator"], "job.pause", "job", job.pk, "deploying billing v2")
    return [
        ("overview", "/"),
        ("jobs", "/jobs/"),
        ("job", f"/jobs/{job.pk}/"),
        ("executions", "/executions/"),
        ("execution", f"/executions/{failed.pk}/"),
        ("locks", "/locks/"),
        ("lock_release", f"/locks/release/{quote('billing:invoices:2026-12')}"),
        ("nodes", "/nodes/"),
        ("audit_log", "/audit/"),
        ("targets", "/targets/"),
        ("timeline", "/timeline/"),
        ("bulk_confirm", "/executions/bulk/?action=rerun&all_matching=on&state=failed"),
        ("admin", "/admin/"),
        ("admin_job", f"/admin/jobs/job/{job.pk}/change/"),
    ]


def check_page(page, name: str, width: int, height: int) -> list[str]:
    """What is wrong with the loaded page at this size; saves its screenshot."""
    problems = []
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    if scroll_width > width:
        problems.append(f"{name}: page is {scroll_width}px wide on a {width}px screen")
    problems += [f"{name}: {what}" for what in page.evaluate(UNREACHABLE)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"responsive_{name}_{width}x{height}.png"),
                    full_page=True)  # fmt: skip
    return problems


@pytest.mark.parametrize(("width", "height"), SIZES, ids=["phone", "desktop"])
def test_every_page_fits_the_screen_and_every_action_is_reachable(
    browser, live_server, role_users, csp_violations, world, width, height
):
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.on("console", lambda m: csp_violations.append(m.text) if is_csp_message(m.text) else None)
    page.set_default_timeout(15_000)
    problems = []
    try:
        page.goto(f"{live_server.url}/login/")
        problems += check_page(page, "login", width, height)
        page.fill("#id_username", role_users["admin"].username)
        page.fill("#id_password", "pw")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        for name, path in world:
            response = page.goto(f"{live_server.url}{path}")
            assert response.status == 200, path
            if name == "jobs":
                # A row's menu opens where it is and its actions are reachable too.
                page.locator("details.row-menu summary").first.click()
                page.locator("details.row-menu .menu-actions").first.wait_for()
            problems += check_page(page, name, width, height)
    finally:
        context.close()
    assert problems == []
