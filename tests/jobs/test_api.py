"""The REST API for jobs, triggers and executions: roles, audit, validation, paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.routers import SimpleRouter

from controlplane.models import AuditEntry
from jobs import api as jobs_api
from jobs.models import Execution, Job, Trigger, database_now
from tests.jobs.conftest import TOKEN_OWNERS
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

API = "/api/v1"
# "token" is the operator's API token; "admin_token" the admin's.
PRINCIPALS = ["anonymous", "viewer", "operator", "admin", "token"]
READ = {"anonymous": 401, "viewer": 200, "operator": 200, "admin": 200, "token": 200}
OPERATE = {"anonymous": 401, "viewer": 403, "operator": 200, "admin": 200, "token": 200}
EDIT = {"anonymous": 401, "viewer": 403, "operator": 403, "admin": 200, "token": 403}


@pytest.fixture
def user_of(role_users):
    return lambda who: role_users[TOKEN_OWNERS.get(who, who)]


@pytest.fixture
def job():
    return make_job("nightly", target="demo.echo", args=["a"], kwargs={"n": 1})


@pytest.fixture
def trigger(job):
    return Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *", timezone="Asia/Kolkata")


@pytest.fixture
def finished(job, trigger):
    return make_execution(job, trigger=trigger, origin="schedule", state="failed",
                          args=[1, 2], kwargs={"x": "y"}, error="ValueError: boom")  # fmt: skip


def expected(table: dict, who: str, ok: int) -> int:
    return ok if table[who] == 200 else table[who]


def assert_denied(response, who: str, table: dict) -> None:
    assert response.status_code == table[who]
    assert "detail" in response.json()
    if who == "anonymous":
        assert response["WWW-Authenticate"] == "Token"


def audit_entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action))


# --- reads, by principal -----------------------------------------------------------------


READ_URLS = {
    "jobs": lambda o: f"{API}/jobs/",
    "job": lambda o: f"{API}/jobs/{o['job'].pk}/",
    "triggers": lambda o: f"{API}/triggers/",
    "trigger": lambda o: f"{API}/triggers/{o['trigger'].pk}/",
    "next_fire_times": lambda o: f"{API}/triggers/{o['trigger'].pk}/next_fire_times/",
    "executions": lambda o: f"{API}/executions/",
    "execution": lambda o: f"{API}/executions/{o['execution'].pk}/",
}


@pytest.mark.parametrize("endpoint", READ_URLS)
@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_lets_every_role_read_and_answers_401_to_anonymous(
    api, who, endpoint, job, trigger, finished
):
    url = READ_URLS[endpoint]({"job": job, "trigger": trigger, "execution": finished})
    response = api(who).get(url)
    if READ[who] != 200:
        assert_denied(response, who, READ)
        return
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


def test_it_shows_a_job_with_its_triggers_in_brief(api, job, trigger):
    body = api("viewer").get(f"{API}/jobs/{job.pk}/").json()
    assert body["name"] == "nightly"
    assert body["target"] == "demo.echo"
    assert body["args"] == ["a"]
    assert body["kwargs"] == {"n": 1}
    assert body["paused"] is False
    assert body["created_at"] and body["updated_at"]
    assert body["triggers"] == [
        {
            "id": trigger.pk,
            "kind": "cron",
            "summary": "At 02:00 (Asia/Kolkata time)",
            "paused": False,
            "next_fire_at": trigger.next_fire_at.isoformat().replace("+00:00", "Z"),
        }
    ]


def test_it_filters_triggers_by_job(api, job, trigger):
    other = make_job("other")
    Trigger.objects.create(job=other, kind="interval", interval=60)
    client = api("viewer")
    filtered = client.get(f"{API}/triggers/?job={job.pk}").json()["results"]
    assert [t["id"] for t in filtered] == [trigger.pk]
    assert len(client.get(f"{API}/triggers/").json()["results"]) == 2
    for bad in ("abc", "", "0"):
        response = client.get(f"{API}/triggers/?job={bad}")
        assert response.status_code == 400
        assert "job" in response.json()


def test_it_answers_404_as_json_for_a_missing_object(api):
    client = api("operator")
    requests = [
        (client.get, f"{API}/jobs/999999/"),
        (client.get, f"{API}/triggers/abc/"),
        (client.get, f"{API}/executions/1.5/"),
        (client.get, f"{API}/executions/99999999999999999999999/"),
        (client.post, f"{API}/jobs/1.5/run/"),
    ]
    for request, url in requests:
        response = request(url)
        assert response.status_code == 404, url
        assert "detail" in response.json()


# --- run now -----------------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_runs_a_job_now_for_operators_and_audits_it(api, user_of, who, job):
    response = api(who).post(f"{API}/jobs/{job.pk}/run/", {"reason": "deploy"}, format="json")
    if OPERATE[who] != 200:
        assert_denied(response, who, OPERATE)
        assert not Execution.objects.exists()
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 201
    body = response.json()
    execution = Execution.objects.get()
    assert body["id"] == execution.pk
    assert body["origin"] == "manual"
    assert body["state"] == "pending"
    assert body["args"] == ["a"] and body["kwargs"] == {"n": 1}
    assert body["requested_by"] == user_of(who).username
    assert body["job"] == job.pk and body["job_name"] == "nightly"
    assert body["scheduled_for"] and body["created_at"]
    [entry] = audit_entries("job.run_now")
    assert entry.user == user_of(who)
    assert entry.reason == "deploy"
    assert entry.after["execution"] == execution.pk


def test_it_runs_a_job_with_other_arguments(api, job):
    body = {"args": [1, "two"], "kwargs": {"seconds": 5}}
    response = api("operator").post(f"{API}/jobs/{job.pk}/run/", body, format="json")
    assert response.status_code == 201
    execution = Execution.objects.get()
    assert (execution.args, execution.kwargs) == ([1, "two"], {"seconds": 5})


def test_it_accepts_nulls_inside_arguments(api, job):
    body = {"args": [None, 1], "kwargs": {"x": None}}
    response = api("operator").post(f"{API}/jobs/{job.pk}/run/", body, format="json")
    assert response.status_code == 201
    assert (response.json()["args"], response.json()["kwargs"]) == ([None, 1], {"x": None})
    response = api("admin").patch(f"{API}/jobs/{job.pk}/", body, format="json")
    assert response.status_code == 200
    job.refresh_from_db()
    assert (job.args, job.kwargs) == ([None, 1], {"x": None})


def test_it_runs_a_job_with_an_empty_body(api, job):
    response = api("operator").post(f"{API}/jobs/{job.pk}/run/")
    assert response.status_code == 201
    assert Execution.objects.get().args == ["a"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"args": {"a": 1}}, "args"),
        ({"args": "[1]"}, "args"),
        ({"kwargs": [1]}, "kwargs"),
        ({"kwargs": "x"}, "kwargs"),
        ({"args": ["\u0000"]}, "args"),
        ({"reason": "x" * 501}, "reason"),
    ],
)
def test_it_refuses_run_arguments_of_the_wrong_type(api, job, body, field):
    response = api("operator").post(f"{API}/jobs/{job.pk}/run/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Execution.objects.exists()
    assert not AuditEntry.objects.exists()


def test_it_answers_404_for_running_a_missing_job(api):
    response = api("operator").post(f"{API}/jobs/999999/run/", format="json")
    assert response.status_code == 404


# --- pause and resume --------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("kind", ["job", "trigger"])
def test_it_pauses_and_resumes_for_operators_and_audits_it(api, user_of, who, kind, job, trigger):
    obj = job if kind == "job" else trigger
    client = api(who)
    url = f"{API}/{kind}s/{obj.pk}"
    response = client.post(f"{url}/pause/", {"reason": "incident"}, format="json")
    if OPERATE[who] != 200:
        assert_denied(response, who, OPERATE)
        assert client.post(f"{url}/resume/").status_code == OPERATE[who]
        obj.refresh_from_db()
        assert obj.paused is False
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["paused"], body["changed"]) == (obj.pk, True, True)
    obj.refresh_from_db()
    assert obj.paused is True
    [entry] = audit_entries(f"{kind}.pause")
    assert (entry.user, entry.reason, entry.object_id) == (user_of(who), "incident", str(obj.pk))
    assert (entry.before, entry.after) == ({"paused": False}, {"paused": True})

    response = client.post(f"{url}/resume/", format="json")
    assert response.status_code == 200
    assert (response.json()["paused"], response.json()["changed"]) == (False, True)
    obj.refresh_from_db()
    assert obj.paused is False
    assert audit_entries(f"{kind}.resume")[0].user == user_of(who)


@pytest.mark.parametrize("kind", ["job", "trigger"])
def test_it_answers_200_unchanged_when_already_paused(api, kind, job, trigger):
    obj = job if kind == "job" else trigger
    client = api("operator")
    client.post(f"{API}/{kind}s/{obj.pk}/pause/")
    response = client.post(f"{API}/{kind}s/{obj.pk}/pause/")
    assert response.status_code == 200
    assert (response.json()["paused"], response.json()["changed"]) == (True, False)
    assert len(audit_entries(f"{kind}.pause")) == 1


def test_it_refuses_a_too_long_pause_reason(api, trigger):
    response = api("operator").post(
        f"{API}/triggers/{trigger.pk}/pause/", {"reason": "x" * 501}, format="json"
    )
    assert response.status_code == 400
    assert "reason" in response.json()
    trigger.refresh_from_db()
    assert trigger.paused is False


# --- rerun -------------------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_reruns_an_execution_for_operators_and_audits_it(api, user_of, who, finished):
    response = api(who).post(
        f"{API}/executions/{finished.pk}/rerun/", {"reason": "flaky"}, format="json"
    )
    if OPERATE[who] != 200:
        assert_denied(response, who, OPERATE)
        assert Execution.objects.count() == 1
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 201
    body = response.json()
    rerun = Execution.objects.get(rerun_of=finished)
    assert body["id"] == rerun.pk
    assert (body["origin"], body["state"], body["rerun_of"]) == ("rerun", "pending", finished.pk)
    assert (body["args"], body["kwargs"]) == ([1, 2], {"x": "y"})
    assert body["requested_by"] == user_of(who).username
    [entry] = audit_entries("execution.rerun")
    assert (entry.user, entry.reason, entry.object_id) == (user_of(who), "flaky", str(finished.pk))


def test_it_answers_404_for_rerunning_a_missing_execution(api):
    response = api("operator").post(f"{API}/executions/999999/rerun/", format="json")
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize("state", ["pending", "dispatched"])
def test_it_answers_409_for_rerunning_an_execution_that_has_not_run(api, job, state):
    waiting = make_execution(job, state=state, started_at=None, finished_at=None)
    response = api("operator").post(f"{API}/executions/{waiting.pk}/rerun/", format="json")
    assert response.status_code == 409
    assert response.json() == {"detail": f"#{waiting.pk} has not run yet ({state})."}
    assert Execution.objects.count() == 1
    assert not AuditEntry.objects.exists()


# --- schedule edits (admin) --------------------------------------------------------------


JOB_BODY = {
    "name": "report",
    "description": "Weekly report",
    "target": "demo.sleep",
    "args": [],
    "kwargs": {"seconds": 1},
    "executor": "inline",
    "timeout": 60,
    "max_attempts": 3,
    "retry_backoff": 5.0,
    "recover": True,
    "concurrency_policy": "forbid",
}


@pytest.mark.parametrize("who", [*PRINCIPALS, "admin_token"])
def test_it_lets_only_admins_create_a_job_and_audits_it(api, user_of, who):
    response = api(who).post(f"{API}/jobs/", {**JOB_BODY, "reason": "new report"}, format="json")
    if who != "admin_token" and EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        assert not Job.objects.exists()
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 201
    body = response.json()
    job = Job.objects.get()
    assert body["id"] == job.pk
    assert {k: body[k] for k in JOB_BODY} == JOB_BODY
    assert body["paused"] is False and body["triggers"] == []
    assert body["created_at"] and body["updated_at"]
    assert "reason" not in body
    [entry] = audit_entries("job.create")
    assert (entry.user, entry.reason, entry.before) == (user_of(who), "new report", None)
    assert entry.after["name"] == "report" and entry.after["kwargs"] == {"seconds": 1}


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_lets_only_admins_change_a_job_and_audits_the_changed_fields(api, user_of, who, job):
    client = api(who)
    body = {"description": "now documented", "max_attempts": 2, "reason": "tidy"}
    response = client.patch(f"{API}/jobs/{job.pk}/", body, format="json")
    if EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        assert client.put(f"{API}/jobs/{job.pk}/", JOB_BODY, format="json").status_code == EDIT[who]
        job.refresh_from_db()
        assert (job.name, job.description, job.max_attempts) == ("nightly", "", 1)
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 200
    assert response.json()["description"] == "now documented"
    job.refresh_from_db()
    assert (job.description, job.max_attempts) == ("now documented", 2)
    [entry] = audit_entries("job.change")
    assert (entry.user, entry.reason) == (user_of(who), "tidy")
    assert entry.before == {"description": "", "max_attempts": 1}
    assert entry.after == {"description": "now documented", "max_attempts": 2}

    response = client.put(f"{API}/jobs/{job.pk}/", JOB_BODY, format="json")
    assert response.status_code == 200
    job.refresh_from_db()
    assert (job.name, job.target, job.concurrency_policy) == ("report", "demo.sleep", "forbid")
    assert len(audit_entries("job.change")) == 2


def test_it_stamps_updated_at_on_a_job_change(api, job):
    created = job.updated_at
    Job.objects.filter(pk=job.pk).update(updated_at=created - timedelta(hours=1))
    body = api("admin").patch(f"{API}/jobs/{job.pk}/", {"timeout": 5}, format="json").json()
    job.refresh_from_db()
    assert job.updated_at >= created
    assert body["updated_at"] == job.updated_at.isoformat().replace("+00:00", "Z")


def test_it_audits_nothing_for_a_change_that_changes_nothing(api, job):
    response = api("admin").patch(f"{API}/jobs/{job.pk}/", {"name": "nightly"}, format="json")
    assert response.status_code == 200
    assert not AuditEntry.objects.exists()


def test_it_ignores_paused_in_a_job_edit(api, job):
    response = api("admin").patch(f"{API}/jobs/{job.pk}/", {"paused": True}, format="json")
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.paused is False


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_lets_only_admins_delete_a_job_and_audits_it(api, user_of, who, job, trigger):
    response = api(who).delete(f"{API}/jobs/{job.pk}/?reason=retired")
    if EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        assert Job.objects.filter(pk=job.pk).exists()
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 204
    assert not Job.objects.exists() and not Trigger.objects.exists()
    [entry] = audit_entries("job.delete")
    assert (entry.user, entry.reason, entry.object_id) == (user_of(who), "retired", str(job.pk))
    assert entry.before["name"] == "nightly"
    assert entry.before["triggers"][0]["id"] == trigger.pk


TRIGGER_BODY = {
    "kind": "cron",
    "cron": "30 6 * * 1-5",
    "timezone": "Europe/Paris",
    "misfire_policy": "skip",
    "misfire_grace": 120,
}


@pytest.mark.parametrize("who", [*PRINCIPALS, "admin_token"])
def test_it_lets_only_admins_create_a_trigger_and_audits_it(api, user_of, who, job):
    body = {**TRIGGER_BODY, "job": job.pk, "reason": "weekday mornings"}
    response = api(who).post(f"{API}/triggers/", body, format="json")
    if who != "admin_token" and EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        assert not Trigger.objects.exists()
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 201
    trigger = Trigger.objects.get()
    data = response.json()
    assert {k: data[k] for k in TRIGGER_BODY} == TRIGGER_BODY
    assert (data["id"], data["job"], data["paused"]) == (trigger.pk, job.pk, False)
    assert trigger.next_fire_at is not None
    assert data["next_fire_at"] == trigger.next_fire_at.isoformat().replace("+00:00", "Z")
    assert data["summary"].startswith("At 06:30")
    [entry] = audit_entries("trigger.create")
    assert (entry.user, entry.reason, entry.before) == (user_of(who), "weekday mornings", None)
    assert entry.after["cron"] == "30 6 * * 1-5"


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_lets_only_admins_change_a_trigger_and_audits_it(api, user_of, who, trigger):
    before = trigger.next_fire_at
    response = api(who).patch(
        f"{API}/triggers/{trigger.pk}/", {"cron": "0 3 * * *", "reason": "later"}, format="json"
    )
    if EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        trigger.refresh_from_db()
        assert trigger.cron == "0 2 * * *"
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 200
    trigger.refresh_from_db()
    assert trigger.cron == "0 3 * * *"
    # The next 03:00 in Kolkata: an hour after the old 02:00 fire, or, between 02:00 and
    # 03:00 there, 23 hours before it (that fire is then tomorrow's).
    assert trigger.next_fire_at - before in (timedelta(hours=1), timedelta(hours=-23))
    assert database_now() < trigger.next_fire_at <= database_now() + timedelta(days=1)
    [entry] = audit_entries("trigger.change")
    assert (entry.user, entry.reason) == (user_of(who), "later")
    assert (entry.before, entry.after) == ({"cron": "0 2 * * *"}, {"cron": "0 3 * * *"})


def test_it_replaces_a_trigger_with_put(api, job, trigger):
    body = {"job": job.pk, "kind": "interval", "interval": 300}
    response = api("admin").put(f"{API}/triggers/{trigger.pk}/", body, format="json")
    assert response.status_code == 200
    trigger.refresh_from_db()
    assert (trigger.kind, trigger.interval) == ("interval", 300)


@pytest.mark.parametrize("who", PRINCIPALS)
def test_it_lets_only_admins_delete_a_trigger_and_audits_it(api, user_of, who, trigger):
    response = api(who).delete(f"{API}/triggers/{trigger.pk}/")
    if EDIT[who] != 200:
        assert_denied(response, who, EDIT)
        assert Trigger.objects.filter(pk=trigger.pk).exists()
        assert not AuditEntry.objects.exists()
        return
    assert response.status_code == 204
    assert not Trigger.objects.exists()
    [entry] = audit_entries("trigger.delete")
    assert (entry.user, entry.object_id) == (user_of(who), str(trigger.pk))
    assert entry.before["cron"] == "0 2 * * *"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target": "os.system"}, "target"),
        ({"args": {"not": "a list"}}, "args"),
        ({"args": "1, 2"}, "args"),
        ({"kwargs": ["not", "an object"]}, "kwargs"),
        ({"kwargs": {"k": "nul\u0000"}}, "kwargs"),
        ({"celery_task": "reports.nightly"}, "celery_task"),
        ({"executor": "celery", "celery_task": "not a task name!", "target": ""}, "celery_task"),
        ({"executor": "celery", "celery_task": "reports.nightly"}, "target"),
        ({"executor": "k8s"}, "executor"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"timeout": 0}, "timeout"),
        ({"name": ""}, "name"),
        ({"name": "nightly"}, "name"),
        ({"name": "x\u0000"}, "name"),
        ({"name": 7}, "name"),
        ({"description": ["x"]}, "description"),
        ({"reason": 0}, "reason"),
        ({"recover": "yes"}, "recover"),
        ({"recover": 1}, "recover"),
        ({"reason": "x" * 501}, "reason"),
    ],
)
def test_it_refuses_an_invalid_job_naming_the_field(api, job, change, field):
    client = api("admin")
    response = client.post(f"{API}/jobs/", {**JOB_BODY, **change}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Job.objects.count() == 1
    if change.get("name") != "nightly":
        response = client.patch(f"{API}/jobs/{job.pk}/", change, format="json")
        assert response.status_code == 400
        assert field in response.json()
    job.refresh_from_db()
    assert (job.name, job.target, job.args, job.kwargs) == ("nightly", "demo.echo", ["a"], {"n": 1})
    assert not AuditEntry.objects.exists()


def test_it_requires_the_job_fields_a_put_replaces(api, job):
    response = api("admin").put(f"{API}/jobs/{job.pk}/", {"name": "x"}, format="json")
    assert response.status_code == 400
    assert "target" in response.json()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "not cron"}, "cron"),
        ({"cron": ""}, "cron"),
        ({"cron": 5}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"kind": "interval"}, "interval"),
        ({"kind": "interval", "interval": 0}, "interval"),
        ({"kind": "once"}, "run_at"),
        ({"kind": "weekly"}, "kind"),
        ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
        ({"start_at": "2030-01-01T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
        ({"run_at": "yesterday"}, "run_at"),
        ({"misfire_policy": "retry"}, "misfire_policy"),
        ({"misfire_grace": -1}, "misfire_grace"),
        ({"job": 999999}, "job"),
    ],
)
def test_it_refuses_an_invalid_trigger_naming_the_field(api, job, trigger, change, field):
    client = api("admin")
    body = {**TRIGGER_BODY, "job": job.pk, **change}
    response = client.post(f"{API}/triggers/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Trigger.objects.count() == 1
    response = client.patch(f"{API}/triggers/{trigger.pk}/", change, format="json")
    assert response.status_code == 400
    assert field in response.json()
    trigger.refresh_from_db()
    assert (trigger.kind, trigger.cron, trigger.timezone) == ("cron", "0 2 * * *", "Asia/Kolkata")
    assert not AuditEntry.objects.exists()


def test_it_says_what_a_time_zone_should_look_like(api, job):
    body = {"job": job.pk, "kind": "interval", "interval": 60, "timezone": "Europe/Londres"}
    response = api("admin").post(f"{API}/triggers/", body, format="json")
    assert response.json() == {
        "timezone": [
            "Unknown time zone 'Europe/Londres': use an IANA name such as 'Europe/London' or 'UTC'."
        ]
    }


def test_it_checks_a_trigger_change_against_the_stored_fields(api, trigger):
    # Only end_at is sent; the stored start_at makes it invalid.
    Trigger.objects.filter(pk=trigger.pk).update(start_at=datetime(2030, 1, 1, tzinfo=UTC))
    response = api("admin").patch(
        f"{API}/triggers/{trigger.pk}/", {"end_at": "2029-12-31T00:00:00Z"}, format="json"
    )
    assert response.status_code == 400
    assert "end_at" in response.json()


WRITE_ENDPOINTS = {
    "job create": ("post", lambda o: f"{API}/jobs/"),
    "job put": ("put", lambda o: f"{API}/jobs/{o['job'].pk}/"),
    "job patch": ("patch", lambda o: f"{API}/jobs/{o['job'].pk}/"),
    "job run": ("post", lambda o: f"{API}/jobs/{o['job'].pk}/run/"),
    "job pause": ("post", lambda o: f"{API}/jobs/{o['job'].pk}/pause/"),
    "job resume": ("post", lambda o: f"{API}/jobs/{o['job'].pk}/resume/"),
    "trigger create": ("post", lambda o: f"{API}/triggers/"),
    "trigger put": ("put", lambda o: f"{API}/triggers/{o['trigger'].pk}/"),
    "trigger patch": ("patch", lambda o: f"{API}/triggers/{o['trigger'].pk}/"),
    "trigger pause": ("post", lambda o: f"{API}/triggers/{o['trigger'].pk}/pause/"),
    "trigger resume": ("post", lambda o: f"{API}/triggers/{o['trigger'].pk}/resume/"),
    "execution rerun": ("post", lambda o: f"{API}/executions/{o['execution'].pk}/rerun/"),
}


@pytest.mark.parametrize("endpoint", WRITE_ENDPOINTS)
def test_it_answers_a_malformed_json_body_with_a_json_400(api, endpoint, job, trigger, finished):
    method, url = WRITE_ENDPOINTS[endpoint]
    target = url({"job": job, "trigger": trigger, "execution": finished})
    client = api("admin")
    response = getattr(client, method)(target, '{"name": "x",', content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "JSON parse error" in response.json()["detail"]
    assert (Job.objects.count(), Trigger.objects.count(), Execution.objects.count()) == (1, 1, 1)
    assert not AuditEntry.objects.exists()


def test_it_answers_a_body_that_is_not_an_object_with_a_400(api, job):
    response = api("admin").post(f"{API}/jobs/", [1, 2], format="json")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()


@pytest.mark.parametrize("endpoint", WRITE_ENDPOINTS)
def test_it_accepts_only_json_bodies(api, endpoint, job, trigger, finished):
    method, url = WRITE_ENDPOINTS[endpoint]
    target = url({"job": job, "trigger": trigger, "execution": finished})
    response = getattr(api("admin"), method)(target, {"name": "x"}, format="multipart")
    assert response.status_code == 415
    assert "detail" in response.json()
    assert (Job.objects.count(), Trigger.objects.count(), Execution.objects.count()) == (1, 1, 1)


# --- next fire times ---------------------------------------------------------------------


def test_it_lists_a_triggers_next_fire_times_in_utc_and_its_zone(api, trigger):
    body = api("viewer").get(f"{API}/triggers/{trigger.pk}/next_fire_times/").json()
    assert (body["trigger"], body["timezone"]) == (trigger.pk, "Asia/Kolkata")
    assert body["paused"] is False
    assert len(body["fire_times"]) == 5
    first, second = body["fire_times"][:2]
    # 02:00 in Kolkata (UTC+05:30) is 20:30 UTC the day before.
    assert first["utc"].endswith("T20:30:00Z")
    assert first["local"].endswith("T02:00:00+05:30")
    assert first["zone_abbreviation"] == "IST"
    assert datetime.fromisoformat(first["utc"]) == datetime.fromisoformat(first["local"])
    assert datetime.fromisoformat(second["utc"]) - datetime.fromisoformat(first["utc"]) == (
        timedelta(days=1)
    )
    assert datetime.fromisoformat(first["utc"]) > datetime.fromisoformat(body["after"])


def test_it_lists_as_many_fire_times_as_asked_and_fewer_when_the_trigger_ends(api, job, trigger):
    client = api("viewer")
    url = f"{API}/triggers/{trigger.pk}/next_fire_times/"
    assert len(client.get(url, {"count": 100}).json()["fire_times"]) == 100
    assert len(client.get(url, {"count": 1}).json()["fire_times"]) == 1
    once = Trigger.objects.create(job=job, kind="once", run_at=database_now() + timedelta(days=1))
    body = client.get(f"{API}/triggers/{once.pk}/next_fire_times/", {"count": 5}).json()
    assert len(body["fire_times"]) == 1


def test_it_says_when_the_listed_fire_times_wait_for_a_resume(api, job, trigger):
    Job.objects.filter(pk=job.pk).update(paused=True)
    body = api("viewer").get(f"{API}/triggers/{trigger.pk}/next_fire_times/").json()
    assert body["paused"] is True


@pytest.mark.parametrize("count", ["0", "101", "-1", "five", "2.5", ""])
def test_it_refuses_a_bad_count(api, trigger, count):
    url = f"{API}/triggers/{trigger.pk}/next_fire_times/"
    response = api("viewer").get(url, {"count": count})
    assert response.status_code == 400
    assert "count" in response.json()


def test_it_answers_409_for_fire_times_of_a_trigger_saved_around_validation(api, job):
    [broken] = Trigger.objects.bulk_create([Trigger(job=job, kind="cron", cron="nonsense")])
    response = api("viewer").get(f"{API}/triggers/{broken.pk}/next_fire_times/")
    assert response.status_code == 409
    assert "detail" in response.json()


# --- executions --------------------------------------------------------------------------


def test_it_shows_every_field_of_an_execution(api, role_users, job, trigger, finished):
    rerun = make_execution(
        job, trigger=trigger, origin="rerun", rerun_of=finished,
        requested_by=role_users["operator"], node="node-a", note="why", traceback="Traceback...",
    )  # fmt: skip
    body = api("operator").get(f"{API}/executions/{rerun.pk}/").json()
    assert body["job"] == job.pk and body["job_name"] == "nightly"
    assert (body["trigger"], body["rerun_of"], body["retry_of"]) == (trigger.pk, finished.pk, None)
    assert (body["origin"], body["state"], body["attempt"], body["node"]) == (
        "rerun", "succeeded", 1, "node-a",
    )  # fmt: skip
    assert (body["note"], body["traceback"], body["error"]) == ("why", "Traceback...", "")
    assert body["requested_by"] == "otto"
    assert body["duration"] == 2.0 and body["lag"] is None
    assert body["dispatched_at"] is None
    for name in ("scheduled_for", "created_at", "run_after", "started_at", "finished_at"):
        assert body[name]
    body = api("viewer").get(f"{API}/executions/{finished.pk}/").json()
    assert (body["args"], body["kwargs"], body["error"]) == ([1, 2], {"x": "y"}, "ValueError: boom")
    assert body["requested_by"] is None


@pytest.mark.parametrize("who, sees", [("viewer", False), ("operator", True), ("admin", True),
                                       ("token", True)])  # fmt: skip
def test_only_operators_and_admins_see_an_executions_traceback(api, job, who, sees):
    failed = make_execution(job, state="failed", error="KeyError: 'x'",
                            traceback='File "/srv/app/billing.py", line 9')  # fmt: skip
    body = api(who).get(f"{API}/executions/{failed.pk}/").json()
    assert body["error"] == "KeyError: 'x'"
    assert body["traceback"] == ('File "/srv/app/billing.py", line 9' if sees else None)


@pytest.mark.parametrize("who, sees", [("viewer", False), ("operator", False), ("admin", True),
                                       ("token", False), ("admin_token", True)])  # fmt: skip
def test_secret_looking_arguments_read_as_dots_below_the_admin_role(api, who, sees):
    secret = {"db_password": "hunter2", "nested": {"API_KEY": "k"}, "day": 3}
    job = make_job("billing", target="demo.echo", args=[{"token": "t"}], kwargs=secret)
    execution = make_execution(job, args=[{"token": "t"}], kwargs=secret)
    for url in [f"{API}/jobs/{job.pk}/", f"{API}/executions/{execution.pk}/"]:
        body = api(who).get(url).json()
        if sees:
            assert (body["args"], body["kwargs"]) == ([{"token": "t"}], secret)
        else:
            assert body["args"] == [{"token": "••••"}]
            assert body["kwargs"] == {"db_password": "••••", "nested": {"API_KEY": "••••"},
                                      "day": 3}  # fmt: skip


def test_it_filters_executions_like_the_dashboard(api, job, finished):
    other = make_job("other")
    day = datetime(2026, 1, 1, tzinfo=UTC)
    old = make_execution(other, state="failed", node="node-b")
    Execution.objects.filter(pk=old.pk).update(created_at=day)
    recent = make_execution(other, origin="rerun", node="node-a")
    client = api("viewer")

    def ids(**params) -> list[int]:
        response = client.get(f"{API}/executions/", params)
        assert response.status_code == 200, response.json()
        return [e["id"] for e in response.json()["results"]]

    assert ids() == [recent.pk, finished.pk, old.pk]
    assert ids(job=job.pk) == [finished.pk]
    assert ids(state="failed") == [finished.pk, old.pk]
    assert ids(origin="rerun") == [recent.pk]
    assert ids(node="node-b") == [old.pk]
    assert ids(state="failed", job=other.pk) == [old.pk]
    assert ids(created_from="2026-01-01T00:00:00Z", created_to="2026-01-02T00:00:00Z") == [old.pk]
    assert ids(created_to="2026-01-01T00:00:00") == []  # exclusive, and naive times are UTC


@pytest.mark.parametrize(
    "params, field",
    [
        ({"state": "exploded"}, "state"),
        ({"origin": "cron"}, "origin"),
        ({"job": "nightly"}, "job"),
        ({"created_from": "last tuesday"}, "created_from"),
        ({"created_from": "2026-01-02T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
         "created_to"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"node": "a\u0000b"}, "node"),
        ({"job": ""}, "job"),
        ({"state": ""}, "state"),
        ({"created_to": ""}, "created_to"),
    ],
)  # fmt: skip
def test_it_refuses_bad_execution_filters_naming_them(api, finished, params, field):
    response = api("viewer").get(f"{API}/executions/", params)
    assert response.status_code == 400
    assert field in response.json()


def test_it_walks_execution_pages_with_the_cursor_both_ways(api, job):
    # Rows made in one transaction share created_at: the id breaks the tie.
    made = Execution.objects.bulk_create(
        [Execution(job=job, scheduled_for=database_now(), origin="manual", state="succeeded")
         for _ in range(7)]
    )  # fmt: skip
    newest_first = [e.pk for e in reversed(made)]
    client = api("token")
    url, pages, previous = f"{API}/executions/?page_size=3&state=succeeded", [], []
    while url:
        body = client.get(url).json()
        pages.append([e["id"] for e in body["results"]])
        previous.append(body["previous"])
        url = body["next"]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    assert previous[0] is None
    assert "state=succeeded" in previous[2] and "page_size=3" in previous[2]
    back = client.get(previous[2]).json()
    assert [e["id"] for e in back["results"]] == newest_first[3:6]
    assert [e["id"] for e in client.get(back["previous"]).json()["results"]] == newest_first[0:3]


def test_it_pages_100_executions_by_default_and_at_most_500(api, job):
    Execution.objects.bulk_create(
        [Execution(job=job, scheduled_for=database_now(), origin="manual", state="succeeded")
         for _ in range(501)]
    )  # fmt: skip
    client = api("viewer")
    body = client.get(f"{API}/executions/", {"page_size": 500}).json()
    assert len(body["results"]) == 500 and body["next"]
    assert len(client.get(f"{API}/executions/").json()["results"]) == 100
    response = client.get(f"{API}/executions/", {"page_size": 501})
    assert response.status_code == 400 and list(response.json()) == ["page_size"]


def test_it_lists_executions_in_a_bounded_number_of_queries(
    api, role_users, job, trigger, django_assert_max_num_queries
):
    for i in range(30):
        make_execution(job, trigger=trigger, requested_by=role_users["admin"], node=f"n{i}")
    client = api("token")
    with django_assert_max_num_queries(6):
        body = client.get(f"{API}/executions/").json()
    assert len(body["results"]) == 30
    assert body["results"][0]["requested_by"] == "ada"
    assert "traceback" not in body["results"][0]


# --- schema ------------------------------------------------------------------------------


def test_the_schema_of_these_endpoints_has_no_warnings_and_validates():
    router = SimpleRouter()
    jobs_api.register(router)
    GENERATOR_STATS.reset()
    schema = SchemaGenerator(patterns=router.urls).get_schema(request=None, public=True)
    assert not GENERATOR_STATS, dict(GENERATOR_STATS._warn_cache or GENERATOR_STATS._error_cache)
    validate_schema(schema)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            assert {"401", "403"} <= declared, (method, path)
            if "{id}" in path:
                assert "404" in declared, (method, path)
            if method in ("post", "put", "patch"):
                assert {"400", "415"} <= declared, (method, path)
                assert set(operation["requestBody"]["content"]) == {"application/json"}


def test_the_project_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    paths = yaml.safe_load(out.read_text())["paths"]
    assert "/api/v1/triggers/{id}/next_fire_times/" in paths
    assert "/api/v1/executions/{id}/rerun/" in paths


@pytest.mark.parametrize("kind", ["job", "trigger"])
def test_it_stamps_updated_at_on_pause_and_resume(api, kind, job, trigger):
    obj = {"job": job, "trigger": trigger}[kind]
    client = api("operator")
    before = obj.updated_at
    paused = client.post(f"{API}/{kind}s/{obj.pk}/pause/").json()
    obj.refresh_from_db()
    assert obj.updated_at > before
    assert paused["updated_at"] == obj.updated_at.isoformat().replace("+00:00", "Z")
    resumed = client.post(f"{API}/{kind}s/{obj.pk}/resume/").json()
    assert resumed["updated_at"] > paused["updated_at"]


# --- one list shape ------------------------------------------------------------------------

LISTS = ["jobs", "triggers", "executions", "locks", "nodes"]


@pytest.mark.parametrize("name", LISTS)
def test_every_list_pages_the_same_way(api, name, job, trigger, finished):
    client = api("viewer")
    body = client.get(f"{API}/{name}/", {"page_size": 1}).json()
    assert list(body) == ["next", "previous", "results"]
    assert body["previous"] is None
    for params in ({"page_size": 0}, {"page_size": 501}, {"page_size": "x"}):
        response = client.get(f"{API}/{name}/", params)
        assert response.status_code == 400 and list(response.json()) == ["page_size"]
    response = client.get(f"{API}/{name}/", {"cursor": "not-a-cursor"})
    assert response.status_code == 400 and list(response.json()) == ["cursor"]


def test_it_walks_the_job_list_by_name(api):
    for name in ["c", "a", "b"]:
        make_job(name)
    client = api("viewer")
    first = client.get(f"{API}/jobs/", {"page_size": 2}).json()
    second = client.get(first["next"]).json()
    assert [j["name"] for j in first["results"]] == ["a", "b"]
    assert [j["name"] for j in second["results"]] == ["c"] and second["next"] is None


# --- a job with its triggers ---------------------------------------------------------------

NEW_JOB = {"name": "reports", "target": "demo.echo", "kwargs": {"n": 1}}


def test_it_creates_a_job_with_its_triggers_in_one_go_and_audits_each(api):
    body = {**NEW_JOB, "reason": "new", "triggers": [
        {"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/London"},
        {"kind": "interval", "interval": 300, "misfire_policy": "skip"},
    ]}  # fmt: skip
    response = api("admin").post(f"{API}/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = Job.objects.get(name="reports")
    triggers = list(job.triggers.order_by("pk"))
    assert [(t.kind, t.cron, t.timezone, t.interval, t.misfire_policy) for t in triggers] == [
        ("cron", "0 2 * * *", "Europe/London", None, "fire_once"),
        ("interval", "", "UTC", 300, "skip"),
    ]
    assert all(t.next_fire_at is not None for t in triggers)
    assert [t["id"] for t in response.json()["triggers"]] == [t.pk for t in triggers]
    assert response.json()["triggers"][0]["summary"] == "At 02:00 (Europe/London time)"
    entries = audit_entries("trigger.create")
    assert sorted(e.object_id for e in entries) == sorted(str(t.pk) for t in triggers)
    assert {e.reason for e in entries} == {"new"}


def test_an_invalid_nested_trigger_creates_nothing_and_names_the_field(api):
    body = {**NEW_JOB, "triggers": [
        {"kind": "interval", "interval": 60}, {"kind": "cron", "cron": "61 * * * *"},
    ]}  # fmt: skip
    response = api("admin").post(f"{API}/jobs/", body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["triggers"]
    # DRF keys a list's errors by the index of the item at fault.
    assert list(response.json()["triggers"]) == ["1"]
    assert list(response.json()["triggers"]["1"]) == ["cron"]
    assert not Job.objects.exists() and not Trigger.objects.exists()
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("method", ["put", "patch"])
def test_it_refuses_triggers_in_a_job_change_instead_of_dropping_them(api, method, job, trigger):
    body = {**NEW_JOB, "triggers": [{"kind": "interval", "interval": 60}]}
    response = getattr(api("admin"), method)(f"{API}/jobs/{job.pk}/", body, format="json")
    assert response.status_code == 400
    assert "/api/v1/triggers/" in response.json()["triggers"][0]
    job.refresh_from_db()
    assert job.name == "nightly" and list(job.triggers.all()) == [trigger]
