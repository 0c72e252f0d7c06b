"""The admin's cancel action on executions (reason required, audited through
jobs.actions.cancel_execution), and what the execution page of the admin shows below
the admin role."""

from __future__ import annotations

import pytest

from controlplane.models import AuditEntry
from jobs.models import Execution
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

URL = "/admin/jobs/execution/"


@pytest.fixture
def job():
    return make_job("reports", target="demo.echo")


def unstarted(job, state="pending"):
    return make_execution(job, state=state, started_at=None, finished_at=None)


def running(job):
    return make_execution(job, state="running", finished_at=None, node="node-1")


def cancel_action(client, executions, reason=None):
    data = {"action": "cancel_selected", "_selected_action": [str(e.pk) for e in executions]}
    if reason is not None:
        data.update(confirm="1", reason=reason)
    return client.post(URL, data, follow=True)


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_the_action_asks_for_a_reason_then_cancels_each_execution_audited(
    client_for, role_users, job, role
):
    pending, dispatched, busy = unstarted(job), unstarted(job, "dispatched"), running(job)
    done = make_execution(job, state="succeeded")
    client = client_for(role)
    everything = [pending, dispatched, busy, done]

    confirm = cancel_action(client, everything).content.decode()
    assert "A reason is required" not in confirm and 'name="reason"' in confirm
    assert f"#{busy.pk} of reports: running" in confirm
    assert Execution.objects.filter(state="cancelled").count() == 0  # nothing yet

    page = cancel_action(client, everything, reason="wrong data").content.decode()
    assert f"Cancelled #{pending.pk} of reports: it will not run." in page
    assert f"Cancelled #{dispatched.pk} of reports: it will not run." in page
    assert f"Asked #{busy.pk} of reports to stop." in page
    assert f"#{done.pk} has already finished (succeeded)." in page
    states = dict(Execution.objects.values_list("pk", "state"))
    assert [states[e.pk] for e in everything] == ["cancelled", "cancelled", "running", "succeeded"]
    busy.refresh_from_db()
    assert (busy.cancel_requested_by, busy.cancel_reason) == (role_users[role].username,
                                                              "wrong data")  # fmt: skip
    entries = AuditEntry.objects.filter(action="execution.cancel").order_by("object_id")
    assert sorted(int(e.object_id) for e in entries) == [pending.pk, dispatched.pk, busy.pk]
    assert {(e.user, e.reason) for e in entries} == {(role_users[role], "wrong data")}


def test_a_blank_reason_shows_the_form_again_and_changes_nothing(client_for, job):
    execution = unstarted(job)
    page = cancel_action(client_for("operator"), [execution], reason="   ").content.decode()
    assert "A reason is required." in page or "This field is required." in page
    execution.refresh_from_db()
    assert execution.state == "pending" and not AuditEntry.objects.exists()


def test_staff_without_the_cancel_permission_have_no_such_action(role_users, client, job):
    vera = role_users["viewer"]
    vera.is_staff = True
    vera.save()
    client.force_login(vera)
    execution = unstarted(job)
    assert "cancel_selected" not in client.get(URL).content.decode()
    cancel_action(client, [execution], reason="no")
    execution.refresh_from_db()
    assert execution.state == "pending" and not AuditEntry.objects.exists()


def test_operators_see_the_action_and_the_result_redacted(client_for, job):
    execution = make_execution(job, result={"password": "hunter2", "rows": 1},
                               error="failed with token=abc")  # fmt: skip
    client = client_for("operator")
    assert "cancel_selected" in client.get(URL).content.decode()
    page = client.get(f"{URL}{execution.pk}/change/").content.decode()
    assert "hunter2" not in page and "token=abc" not in page
    assert "••••" in page
    admin_page = client_for("admin").get(f"{URL}{execution.pk}/change/").content.decode()
    assert "hunter2" in admin_page and "token=abc" in admin_page
