"""The API of the run itself: an execution's log (paged by offset), cancel, and the
result, progress, cancel, lost-lock and timeline fields of an execution; by principal."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.models import AuditEntry
from jobs.models import Execution, ExecutionEvent, ExecutionLogLine, queue_manual_run
from tests.conftest import wait_for
from tests.jobs.conftest import TOKEN_OWNERS
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

API = "/api/v1"
PRINCIPALS = ["anonymous", "viewer", "operator", "admin", "token"]
READ = {"anonymous": 401, "viewer": 200, "operator": 200, "admin": 200, "token": 200}
OPERATE = {"anonymous": 401, "viewer": 403, "operator": 200, "admin": 200, "token": 200}
BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def job():
    return make_job("reports", target="demo.echo")


def running(job, **fields) -> Execution:
    values = {"state": "running", "finished_at": None, "node": "node-1", "started_at": BASE}
    return make_execution(job, **{**values, **fields})


def write_log(execution, *messages, first_seq=0, level="INFO") -> None:
    ExecutionLogLine.objects.bulk_create(
        ExecutionLogLine(
            execution=execution,
            seq=first_seq + i,
            level=level,
            message=message,
            at=BASE + timedelta(seconds=first_seq + i),
        )  # fmt: skip
        for i, message in enumerate(messages)
    )


def cancel(client, execution_id, body=None, **kwargs):
    return client.post(f"{API}/executions/{execution_id}/cancel/", body, format="json", **kwargs)


# --- the log -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
def test_every_role_reads_the_log_and_anonymous_gets_401(api, job, who):
    execution = running(job)
    write_log(execution, "one", "two")
    response = api(who).get(f"{API}/executions/{execution.pk}/log/")
    assert response.status_code == READ[who]
    if READ[who] != 200:
        assert response["WWW-Authenticate"] == "Token"
        return
    body = response.json()
    assert body == {
        "execution": execution.pk,
        "lines": [
            {"seq": 0, "at": "2026-03-01T12:00:00Z", "level": "INFO", "message": "one",
             "truncation": False},
            {"seq": 1, "at": "2026-03-01T12:00:01Z", "level": "INFO", "message": "two",
             "truncation": False},
        ],
        "next_offset": 2,
        "more": False,
        "finished": False,
    }  # fmt: skip


def test_the_log_pages_by_offset_until_the_finished_run_has_no_more(api, job):
    execution = running(job)
    write_log(execution, *[f"line {i}" for i in range(5)])
    client = api("viewer")
    url = f"{API}/executions/{execution.pk}/log/"
    page = client.get(url, {"offset": 0, "limit": 2}).json()
    assert [line["seq"] for line in page["lines"]] == [0, 1]
    assert (page["next_offset"], page["more"], page["finished"]) == (2, True, False)
    page = client.get(url, {"offset": 2, "limit": 2}).json()
    assert [line["message"] for line in page["lines"]] == ["line 2", "line 3"]
    page = client.get(url, {"offset": 4, "limit": 2}).json()
    assert [line["seq"] for line in page["lines"]] == [4]
    assert (page["next_offset"], page["more"], page["finished"]) == (5, False, False)
    nothing = client.get(url, {"offset": 5}).json()
    assert (nothing["lines"], nothing["next_offset"], nothing["more"]) == ([], 5, False)

    write_log(execution, "last", first_seq=5)
    Execution.objects.filter(pk=execution.pk).update(state="succeeded", finished_at=BASE)
    page = client.get(url, {"offset": 5}).json()
    assert [line["message"] for line in page["lines"]] == ["last"]
    assert (page["next_offset"], page["more"], page["finished"]) == (6, False, True)


def test_the_log_marks_the_truncation_line(api, job):
    execution = make_execution(job)
    write_log(execution, "output")
    marker = "[log truncated: this run's output passed SCHEDULER_LOG_LIMIT (1024 bytes)]"
    write_log(execution, marker, first_seq=1, level="WARNING")
    lines = api("viewer").get(f"{API}/executions/{execution.pk}/log/").json()["lines"]
    assert [line["truncation"] for line in lines] == [False, True]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": 2**31}, "offset"),
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"limit": ""}, "limit"),
    ],
)
def test_bad_log_parameters_are_400s_naming_them(api, job, params, field):
    execution = running(job)
    response = api("viewer").get(f"{API}/executions/{execution.pk}/log/", params)
    assert response.status_code == 400
    assert field in response.json()


def test_the_log_of_a_missing_execution_is_404(api):
    assert api("viewer").get(f"{API}/executions/999999/log/").status_code == 404
    assert api("viewer").get(f"{API}/executions/x/log/").status_code == 404


@pytest.mark.parametrize("who, sees", [("viewer", False), ("operator", False), ("token", False),
                                       ("admin", True), ("admin_token", True)])  # fmt: skip
def test_log_lines_result_and_progress_message_are_redacted_below_the_admin_role(
    api, job, who, sees
):
    execution = running(
        job, result={"db": {"password": "hunter2"}, "rows": 3},
        progress_done=1, progress_message="with token=abc", progress_at=BASE,
        error="OperationalError: postgres://app:pw@db/x", note="not JSON: {'token': 'tk'}",
    )  # fmt: skip
    write_log(execution, "password=hunter2", '{"api_key": "k"}')
    client = api(who)
    messages = [
        line["message"]
        for line in client.get(f"{API}/executions/{execution.pk}/log/").json()["lines"]
    ]
    body = client.get(f"{API}/executions/{execution.pk}/").json()
    if sees:
        assert messages == ["password=hunter2", '{"api_key": "k"}']
        assert body["result"] == {"db": {"password": "hunter2"}, "rows": 3}
        assert body["progress_message"] == "with token=abc"
        assert body["error"] == "OperationalError: postgres://app:pw@db/x"
        assert body["note"] == "not JSON: {'token': 'tk'}"
    else:
        assert messages == ["password=••••", '{"api_key": "••••"}']
        assert body["result"] == {"db": {"password": "••••"}, "rows": 3}
        assert body["progress_message"] == "with token=••••"
        assert body["error"] == "OperationalError: postgres://app:••••@db/x"
        assert body["note"] == "not JSON: {'token': '••••'}"


# --- execution fields --------------------------------------------------------------------


def test_an_execution_shows_its_result_progress_cancel_lock_and_fence(api, role_users, job):
    execution = running(
        job, reason="month end", requested_by=role_users["operator"], fence=77,
        result=None, progress_done=3, progress_total=None, progress_message="rows",
        progress_at=BASE + timedelta(seconds=3), lock_lost_at=BASE + timedelta(seconds=4),
    )  # fmt: skip
    ExecutionEvent.objects.create(
        execution=execution, kind="lock_lost", actor="otto", message="force released",
        at=BASE + timedelta(seconds=4),
    )  # fmt: skip
    body = api("viewer").get(f"{API}/executions/{execution.pk}/").json()
    assert body["reason"] == "month end" and body["fence"] == 77 and body["result"] is None
    assert (body["progress_done"], body["progress_total"], body["progress_message"]) == (
        3.0, None, "rows",
    )  # fmt: skip
    assert body["progress_at"] == "2026-03-01T12:00:03Z"
    assert body["lock_lost_at"] == "2026-03-01T12:00:04Z"
    assert (body["cancel_requested_at"], body["cancel_requested_by"], body["cancel_reason"]) == (
        None, "", "",
    )  # fmt: skip
    kinds = [(entry["kind"], entry["actor"], entry["message"]) for entry in body["timeline"]]
    assert kinds == [
        ("created", "otto", "Run now: month end"),
        ("started", "node-1", "Started with fencing token 77"),
        ("lock_lost", "otto", "force released"),
    ]
    assert body["timeline"][0]["execution"] is None


def test_the_timeline_links_the_retry(api, job):
    first = make_execution(job, state="failed", attempt=1)
    retry = make_execution(
        job, state="pending", attempt=2, retry_of=first, origin="retry", started_at=None,
        finished_at=None, created_at=first.finished_at,
    )  # fmt: skip
    timeline = api("viewer").get(f"{API}/executions/{first.pk}/").json()["timeline"]
    assert timeline[-1] == {
        "at": timeline[-1]["at"], "kind": "retried", "actor": "scheduler",
        "message": f"Retried as #{retry.pk} (attempt 2)", "execution": retry.pk,
        "state": "pending",
    }  # fmt: skip


# --- cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
def test_operators_cancel_a_pending_run_viewers_get_403_anonymous_401(api, role_users, job, who):
    execution = make_execution(job, state="pending", started_at=None, finished_at=None)
    response = cancel(api(who), execution.pk, {"reason": "not today"})
    assert response.status_code == OPERATE[who]
    execution.refresh_from_db()
    if OPERATE[who] != 200:
        assert "detail" in response.json()
        assert execution.state == "pending" and not AuditEntry.objects.exists()
        return
    body = response.json()
    user = role_users[TOKEN_OWNERS.get(who, who)]
    assert body["id"] == execution.pk and body["state"] == "cancelled"
    assert (body["cancel_requested_by"], body["cancel_reason"]) == (user.username, "not today")
    assert body["finished_at"] is not None
    entry = AuditEntry.objects.get(action="execution.cancel")
    assert (entry.user, entry.reason, entry.object_id) == (user, "not today", str(execution.pk))


def test_cancelling_a_dispatched_run_cancels_it_at_once(api, job):
    execution = make_execution(job, state="dispatched", started_at=None, finished_at=None,
                               node="node-1")  # fmt: skip
    body = cancel(api("operator"), execution.pk, {"reason": "wrong"}).json()
    assert body["state"] == "cancelled"


def test_cancelling_a_running_run_asks_it_to_stop(api, job):
    execution = running(job)
    response = cancel(api("token"), execution.pk, {"reason": "stuck"})
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "running"
    assert body["cancel_requested_at"] is not None
    assert (body["cancel_requested_by"], body["cancel_reason"]) == ("otto", "stuck")
    assert body["timeline"][-1]["kind"] == "cancel_requested"
    assert body["timeline"][-1]["message"] == "stuck"
    again = cancel(api("admin"), execution.pk, {"reason": "again"}).json()
    assert again["cancel_reason"] == "stuck"  # the first request stands


@pytest.mark.parametrize("state", ["succeeded", "failed", "timed_out", "cancelled",
                                   "abandoned", "skipped"])  # fmt: skip
def test_cancelling_a_finished_run_is_409_and_changes_nothing(api, job, state):
    execution = make_execution(job, state=state)
    response = cancel(api("operator"), execution.pk, {"reason": "late"})
    assert response.status_code == 409
    assert response.json() == {"detail": f"#{execution.pk} has already finished ({state})."}
    execution.refresh_from_db()
    assert execution.cancel_requested_at is None and not AuditEntry.objects.exists()


@pytest.mark.parametrize("body", [None, {}, {"reason": ""}, {"reason": "   "}, {"reason": 5},
                                  {"reason": "x" * 501}])  # fmt: skip
def test_cancelling_without_a_reason_is_400_naming_it(api, job, body):
    execution = running(job)
    response = cancel(api("operator"), execution.pk, body)
    assert response.status_code == 400
    assert "reason" in response.json()
    execution.refresh_from_db()
    assert execution.cancel_requested_at is None and not AuditEntry.objects.exists()


def test_cancelling_a_missing_execution_is_404(api):
    assert cancel(api("operator"), 999999, {"reason": "x"}).status_code == 404
    assert cancel(api("operator"), "x", {"reason": "x"}).status_code == 404


def test_cancelling_with_a_form_body_is_415(api, job):
    execution = running(job)
    response = api("operator").post(f"{API}/executions/{execution.pk}/cancel/", {"reason": "x"})
    assert response.status_code == 415


def test_the_schema_documents_the_log_and_cancel_with_every_answer(api):
    schema = api("viewer").get("/api/schema/", {"format": "json"}).json()
    log = schema["paths"]["/api/v1/executions/{id}/log/"]["get"]
    assert set(log["responses"]) == {"200", "400", "401", "403", "404"}
    assert {p["name"] for p in log["parameters"]} == {"id", "offset", "limit"}
    post = schema["paths"]["/api/v1/executions/{id}/cancel/"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "403", "404", "409", "415"}
    request = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema["components"]["schemas"][request.rsplit("/", 1)[1]]["required"] == ["reason"]


# --- with a real node ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_chatty_runs_log_read_by_offset_is_whole_once_finished(api, start_node):
    job = make_job("chatty", "demo.chatty", kwargs={"lines": 30, "seconds": 3})
    start_node("log-node")
    execution = queue_manual_run(job)
    client, url = api("viewer"), f"{API}/executions/{execution.pk}/log/"
    lines, offset, answers = [], 0, 0
    while True:
        body = client.get(url, {"offset": offset, "limit": 7}).json()
        answers += 1
        lines += body["lines"]
        offset = body["next_offset"]
        if body["finished"] and not body["more"]:
            break
        if not body["more"]:
            time.sleep(0.3)
    assert answers > 2
    assert [line["seq"] for line in lines] == list(range(60))
    messages = [line["message"] for line in lines]
    assert sum("log line" in m for m in messages) == 30
    assert sum(m.startswith("print line") for m in messages) == 30
    assert ExecutionLogLine.objects.filter(execution=execution).count() == 60


@pytest.mark.django_db(transaction=True)
def test_a_timed_out_runs_later_output_still_arrives(api, start_node):
    job = make_job("late", "test.late_output", kwargs={"seconds": 4}, timeout=1)
    start_node(
        "late-node", extra_env={"SCHEDULER_TARGET_MODULES": "tests.jobs.late_output_targets"}
    )
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "timed_out", timeout=30)
    url = f"{API}/executions/{execution.pk}/log/"

    def messages():
        return [line["message"] for line in api("viewer").get(url).json()["lines"]]

    assert "after the timeout" not in messages()
    wait_for(lambda: "after the timeout" in messages(), timeout=30)
    assert api("viewer").get(url).json()["finished"] is True
