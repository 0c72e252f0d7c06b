"""The job form shows the chosen target's description and parameters, in a real browser."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_choosing_a_target_in_the_job_form_shows_what_it_takes(page_for, live_server):
    page = page_for("admin")
    page.goto(f"{live_server.url}/admin/jobs/job/add/")
    help_box = page.locator(".target-help-box")
    help_box.get_by_text("Choose a target").wait_for()
    page.select_option("#id_target", "demo.sleep")
    help_box.get_by_text("Sleep for").wait_for()
    assert help_box.locator("code", has_text="seconds").count() == 1
    page.select_option("#id_target", "demo.fail")
    help_box.get_by_text("Raise an error").wait_for()
    assert "Sleep for" not in help_box.inner_text()
