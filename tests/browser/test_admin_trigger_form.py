"""The admin's trigger form in a real browser: only the chosen kind's fields, a time zone
typed in any case, and the schedule described while it is typed, before saving."""

from __future__ import annotations

import pytest

from jobs.models import Trigger
from tests.browser.conftest import screenshot
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db(transaction=True)


def visible(page, field: str, scope: str = "") -> bool:
    return page.locator(f"{scope} .form-row.field-{field}").first.is_visible()


def test_the_trigger_page_switches_kind_canonicalises_the_zone_and_previews_live(
    page_for, live_server
):
    trigger = Trigger.objects.create(
        job=make_job("nightly-report"), kind="cron", cron="0 9 * * *", timezone="Europe/Berlin"
    )
    page = page_for("admin")
    page.goto(f"{live_server.url}/admin/jobs/trigger/{trigger.pk}/change/")
    preview = page.locator(".trigger-preview")
    preview.get_by_text("At 09:00 (Europe/Berlin time)").wait_for()

    # Only the chosen kind's field shows.
    assert visible(page, "cron") and not visible(page, "interval") and not visible(page, "run_at")
    page.select_option("#id_kind", "interval")
    assert visible(page, "interval") and not visible(page, "cron")
    page.fill("#id_interval", "5400")
    preview.get_by_text("Every 1h 30m").wait_for()

    # A zone typed in lower case becomes its IANA spelling; the date-times say their zone.
    page.select_option("#id_kind", "cron")
    page.fill("#id_timezone", "america/new_york")
    page.locator("#id_timezone").dispatch_event("change")
    assert page.input_value("#id_timezone") == "America/New_York"
    assert "(America/New_York)" in page.locator(".field-start_at label").inner_text()

    # The description and next fires follow the typing, before anything is saved.
    page.fill("#id_cron", "30 6 * * *")
    preview.get_by_text("At 06:30 (America/New_York time)").wait_for()
    assert preview.locator("th", has_text="America/New_York").count() == 1
    screenshot(page, "admin-trigger-form")
    page.fill("#id_cron", "61 * * * *")
    preview.get_by_text("Cannot preview this schedule yet").wait_for()
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.timezone) == ("0 9 * * *", "Europe/Berlin")


def test_a_trigger_added_on_the_job_page_gets_the_same_form(page_for, live_server):
    job = make_job("adhoc")
    page = page_for("admin")
    page.goto(f"{live_server.url}/admin/jobs/job/{job.pk}/change/")
    page.get_by_text("Add another Trigger").click()
    row = "#triggers-0"
    page.locator(f"{row} .field-kind select").wait_for()
    assert visible(page, "cron", row) and not visible(page, "interval", row)
    page.select_option(f"{row} .field-kind select", "interval")
    assert visible(page, "interval", row) and not visible(page, "cron", row)
    page.fill(f"{row} .field-interval input", "60")
    page.locator(f"{row} .trigger-preview").get_by_text("Every 1m").wait_for()
    # A UTC trigger: one time column.
    assert page.locator(f"{row} .trigger-preview th").all_inner_texts() == ["UTC"]
    assert not Trigger.objects.exists()
