"""The locks page in a real browser: it refreshes itself like the other pages, shows an
expired lock as expired (stale) rather than held, and keeps Force release in one piece."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.models import database_now
from locks.models import Lock
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_the_locks_page_refreshes_itself_without_reloading(page_for, live_server):
    page = page_for("operator")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/locks/")
    page.get_by_text("No lock is held.").wait_for()
    page.evaluate("window.__not_reloaded = true")

    now = database_now()
    Lock.objects.create(
        name="report:eu", holder="worker-1", token=4, locked_at=now,
        locked_until=now + timedelta(minutes=5),
    )  # fmt: skip
    Lock.objects.create(
        name="export:old", holder="worker-2", token=9, locked_at=now - timedelta(hours=1),
        locked_until=now - timedelta(minutes=2),
    )  # fmt: skip

    # The next poll (every 5 s) brings both in; the page itself stays.
    expired = page.locator("tr", has=page.locator("code", has_text="export:old"))
    expired.locator(".badge", has_text="expired (stale)").wait_for(timeout=12_000)
    held = page.locator("tr", has=page.locator("code", has_text="report:eu"))
    assert held.locator(".badge", has_text="held").count() == 1
    assert expired.locator(".badge", has_text="held").count() == 0
    assert page.evaluate("window.__not_reloaded === true")

    # Force release stays one button on a phone: one box, one line.
    button = held.locator("a.force-release")
    assert button.evaluate("b => b.getClientRects().length") == 1
    box = button.bounding_box()
    line = button.evaluate("b => parseFloat(getComputedStyle(b).lineHeight) || 20")
    assert box["height"] < 2 * line
    screenshot(page, "locks-390")
