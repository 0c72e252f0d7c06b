"""Targets declare their parameters: saving a job and every run with overrides are checked
against the signature, and an operator may override only what the target allows."""

from __future__ import annotations

import json
from typing import Optional

import pytest
from django.core.exceptions import ValidationError

from controlplane.models import AuditEntry
from jobs import actions, registry
from jobs.models import Execution, Job
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

API = "/api/v1"


def typed(
    day: int,
    rate: float = 1.0,
    label: str | None = None,
    flag: bool = False,
    items: list[int] | None = None,
    opts: Optional[dict] = None,  # noqa: UP045 - the old spelling must work too
    anything=None,
):
    return None


def flexible(path: str, *rest: int, **extra: str):
    return None


@pytest.fixture
def targets():
    registry.register("test.typed", overridable=("day",))(typed)
    registry.register("test.flexible", overridable=("rest",))(flexible)
    yield
    registry._targets.pop("test.typed")
    registry._targets.pop("test.flexible")


def errors_of(target: str, args=(), kwargs=None) -> dict:
    try:
        registry.check_call(registry.get_target(target), list(args), kwargs or {})
    except ValidationError as e:
        return e.message_dict
    return {}


# --- the registry ------------------------------------------------------------------------


def test_a_call_that_fits_the_signature_passes(targets):
    assert errors_of("test.typed", [3], {"rate": 2, "label": None, "flag": True}) == {}
    assert errors_of("test.typed", [], {"day": 1, "items": [1], "opts": {}, "anything": [{}]}) == {}
    assert errors_of("test.flexible", ["/x", 1, 2], {"free": "text"}) == {}


@pytest.mark.parametrize(
    "args, kwargs, field, message",
    [
        ([], {}, "kwargs", "day: this parameter is required."),
        ([], {"day": "3"}, "kwargs", "day: expected int, got str."),
        ([], {"day": True}, "kwargs", "day: expected int, got bool."),
        ([], {"day": 1.5}, "kwargs", "day: expected int, got float."),
        ([], {"day": 1, "rate": "fast"}, "kwargs", "rate: expected float, got str."),
        ([], {"day": 1, "label": 3}, "kwargs", "label: expected str or null, got int."),
        ([], {"day": 1, "items": {}}, "kwargs", "items: expected list or null, got dict."),
        ([], {"day": 1, "path": "/etc"}, "kwargs", "path: test.typed has no such parameter."),
        (["x"], {}, "args", "day (args[0]): expected int, got str."),
        ([1], {"day": 2}, "kwargs", "day: given in args too."),
        ([1, 2, "a", False, [], {}, 7, 8], {}, "args", "args[7]: test.typed takes at most 7"),
    ],
)
def test_a_call_that_does_not_fit_names_the_parameter(targets, args, kwargs, field, message):
    errors = errors_of("test.typed", args, kwargs)
    assert any(m.startswith(message) for m in errors[field]), errors


def test_var_positional_and_var_keyword_are_type_checked_too(targets):
    assert errors_of("test.flexible", ["/x", "two"]) == {
        "args": ["rest (args[1]): expected int, got str."]
    }
    assert errors_of("test.flexible", ["/x"], {"free": 1}) == {
        "kwargs": ["free: expected str, got int."]
    }


def test_a_secret_reference_counts_as_text(targets):
    assert errors_of("test.typed", [1], {"label": {"$secret": "LABEL"}}) == {}
    assert errors_of("test.typed", [{"$secret": "DAY"}])["args"] == [
        "day (args[0]): expected int, got dict."
    ]


def test_overridable_must_name_a_parameter():
    with pytest.raises(ValueError, match="has no parameter nope"):
        registry.register("test.bad", overridable=("nope",))(typed)
    assert not registry.is_registered("test.bad")


def test_the_demo_targets_declare_what_operators_may_override():
    expected = {
        "demo.sleep": {"seconds"},
        "demo.fail": {"message"},
        "demo.append_line": {"seconds"},
        "demo.record_run": {"seconds"},
        "demo.hold": {"seconds"},
        "demo.hang_once": {"seconds"},
        "demo.fail_times": {"times"},
        "demo.echo": {"args", "kwargs"},
        "demo.noop": {"args", "kwargs"},
    }
    for name, allowed in expected.items():
        assert registry.get_target(name).overridable == allowed, name


# --- saving a job ------------------------------------------------------------------------


def test_saving_a_job_checks_its_arguments_against_the_target(client_for):
    body = {"name": "bad", "target": "demo.sleep", "kwargs": {"seconds": "soon", "x": 1}}
    response = client_for("admin").post(f"{API}/jobs/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["kwargs"] == [
        "seconds: expected float, got str.",
        "x: demo.sleep has no such parameter.",
    ]
    assert not Job.objects.exists()

    job = Job(name="missing", target="demo.append_line", kwargs={})
    with pytest.raises(ValidationError) as e:
        job.full_clean()
    assert e.value.message_dict["kwargs"] == ["path: this parameter is required."]


def test_the_admin_form_shows_a_parameter_error_beside_the_field(client_for, role_users):
    role_users["admin"].is_superuser = True
    role_users["admin"].save()
    form = {
        "name": "nightly", "description": "", "target": "demo.sleep", "celery_task": "",
        "args": "[]", "kwargs": '{"seconds": "x"}', "executor": "inline", "queue": "scheduler",
        "timeout": "", "max_attempts": "1", "retry_backoff": "10", "concurrency_policy": "allow",
        "triggers-TOTAL_FORMS": "0", "triggers-INITIAL_FORMS": "0",
    }  # fmt: skip
    response = client_for("admin").post("/admin/jobs/job/add/", form)
    assert response.status_code == 200
    assert "seconds: expected float, got str." in response.content.decode()
    assert not Job.objects.exists()


# --- run-time overrides -----------------------------------------------------------------


@pytest.fixture
def appender(tmp_path):
    return make_job("append", target="demo.append_line", kwargs={"path": str(tmp_path / "a")})


@pytest.mark.parametrize("who", ["operator", "admin"])
def test_an_operator_may_override_what_the_target_declares(client_for, appender, who):
    kwargs = {**appender.kwargs, "seconds": 0.5}
    response = client_for(who).post(
        f"{API}/jobs/{appender.pk}/run/", {"kwargs": kwargs}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert Execution.objects.get().kwargs == kwargs


@pytest.mark.parametrize(
    "body",
    [
        {"kwargs": {"path": "/tmp/evil.pth"}},
        {"kwargs": {"path": "ignored", "line": "import os"}},
        {"args": ["/tmp/evil.pth"], "kwargs": {}},
    ],
)
def test_only_the_admin_role_may_override_other_parameters(client_for, appender, body):
    url = f"{API}/jobs/{appender.pk}/run/"
    refused = client_for("operator").post(url, body, content_type="application/json")
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert "Only a schedule editor (admin) may override" in detail and "path" in detail
    assert "an operator may override: seconds" in detail
    assert not Execution.objects.exists()
    assert not AuditEntry.objects.exists()
    allowed = client_for("admin").post(url, body, content_type="application/json")
    assert allowed.status_code == 201


def test_the_dashboard_refuses_the_same_override_beside_the_form(client_for, appender):
    form = {"kwargs": json.dumps({"path": "/tmp/evil.pth"})}
    page = client_for("operator").post(f"/jobs/{appender.pk}/run/", form)
    assert page.status_code == 400
    assert "Only a schedule editor (admin) may override path" in page.content.decode()
    htmx = client_for("operator").post(
        f"/jobs/{appender.pk}/run/",
        form,
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET=f"run-{appender.pk}",
    )
    assert htmx.status_code == 200 and b"may override path" in htmx.content
    assert not Execution.objects.exists()


def test_a_run_with_arguments_that_do_not_fit_is_400_naming_the_parameter(client_for, appender):
    body = {"kwargs": {**appender.kwargs, "seconds": "long"}}
    response = client_for("admin").post(
        f"{API}/jobs/{appender.pk}/run/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json() == {"kwargs": ["seconds: expected float, got str."]}
    page = client_for("admin").post(
        f"/jobs/{appender.pk}/run/", {"kwargs": json.dumps(body["kwargs"])}
    )
    assert page.status_code == 400 and b"seconds: expected float, got str." in page.content
    assert not Execution.objects.exists()


def test_an_operator_may_not_pass_a_secret_reference(role_users):
    job = make_job("noisy", target="demo.fail")
    with pytest.raises(actions.OverrideNotAllowed, match="secret references"):
        actions.run_now(job, role_users["operator"], kwargs={"message": {"$secret": "KEY"}})
    assert actions.run_now(job, role_users["admin"], kwargs={"message": {"$secret": "KEY"}})


def test_an_operator_may_not_override_a_celery_task_jobs_arguments(role_users):
    job = make_job("beat", target="", celery_task="reports.nightly", executor="celery")
    with pytest.raises(actions.OverrideNotAllowed, match="Celery task job"):
        actions.run_now(job, role_users["operator"], args=[1])
    assert actions.run_now(job, role_users["operator"]).args == []


def test_a_job_whose_target_is_not_registered_cannot_run(role_users):
    job = make_job("gone", target="demo.removed")
    with pytest.raises(ValidationError, match="not a registered job target"):
        actions.run_now(job, role_users["admin"])


def test_a_rerun_is_checked_against_the_targets_signature_now(client_for):
    job = make_job("sleepy", target="demo.sleep")
    old = make_execution(job, state="failed", kwargs={"seconds": 1, "gone": True})
    response = client_for("operator").post(
        f"{API}/executions/{old.pk}/rerun/", {}, content_type="application/json"
    )
    assert response.status_code == 409
    assert "gone: demo.sleep has no such parameter." in response.json()["detail"]
    assert Execution.objects.count() == 1


def test_the_admins_run_now_action_reports_a_job_that_cannot_run(client_for, role_users):
    bad = make_job("bad", target="demo.sleep", kwargs={"seconds": "soon"})
    good = make_job("good", target="demo.sleep", kwargs={"seconds": 1})
    response = client_for("operator").post(
        "/admin/jobs/job/",
        {"action": "run_selected_now", "_selected_action": [bad.pk, good.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "Not run: bad: seconds: expected float, got str." in html
    assert list(Execution.objects.values_list("job__name", flat=True)) == ["good"]
