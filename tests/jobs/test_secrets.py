"""Secret references: {"$secret": "NAME"} in a job's arguments, resolved only where it runs."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from controlplane.models import AuditEntry
from jobs import secrets
from jobs.models import Execution, Job
from tests.conftest import wait_for
from tests.jobs.factories import make_job

ENV = {"SCHEDULER_SECRET_BILLING_API_KEY": "sk-live-42", "SECRET_KEY": "the-sites-own"}


def test_references_are_replaced_anywhere_in_the_arguments():
    args = [{"$secret": "BILLING_API_KEY"}, {"deep": [{"$secret": "BILLING_API_KEY"}]}]
    kwargs = {"api_key": {"$secret": "BILLING_API_KEY"}, "day": 3}
    resolved_args, resolved_kwargs = secrets.resolve_secrets(args, kwargs, ENV)
    assert resolved_args == ["sk-live-42", {"deep": ["sk-live-42"]}]
    assert resolved_kwargs == {"api_key": "sk-live-42", "day": 3}
    # The stored arguments are left as they were.
    assert kwargs["api_key"] == {"$secret": "BILLING_API_KEY"}


def test_an_unknown_secret_names_itself_and_never_a_value():
    with pytest.raises(secrets.UnknownSecret) as e:
        secrets.resolve_secrets([], {"k": {"$secret": "MISSING"}}, ENV)
    assert "'MISSING' is not set on this node" in str(e.value)
    assert "SCHEDULER_SECRET_MISSING" in str(e.value)
    assert "sk-live-42" not in str(e.value)


def test_the_processs_own_settings_cannot_be_named():
    # SECRET_KEY is in the environment, but only SCHEDULER_SECRET_* variables are secrets.
    with pytest.raises(secrets.UnknownSecret):
        secrets.resolve_secrets([], {"k": {"$secret": "SECRET_KEY"}}, ENV)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"$secret": "A", "extra": 1}, 'only the key "$secret"'),
        ({"$secret": "1ABC"}, "is not a secret name"),
        ({"$secret": 7}, "is not a secret name"),
        ({"$secret": "x-y"}, "is not a secret name"),
    ],
)
@pytest.mark.django_db
def test_a_malformed_reference_is_refused_when_the_job_is_saved(value, message):
    assert message in secrets.reference_errors([value])[0]
    job = Job(name="bad", target="demo.echo", kwargs={"k": value})
    with pytest.raises(ValidationError) as e:
        job.full_clean()
    assert message in e.value.message_dict["kwargs"][0]


@pytest.mark.cluster
def test_a_node_resolves_a_secret_at_run_time_and_stores_only_the_reference(start_node, tmp_path):
    out = tmp_path / "out"
    ok = make_job(
        "uses a secret",
        "demo.append_line",
        kwargs={"path": str(out), "line": {"$secret": "BILLING_API_KEY"}},
    )
    missing = make_job(
        "misses a secret",
        "demo.append_line",
        kwargs={"path": str(out), "line": {"$secret": "NOPE"}},
    )
    from jobs.actions import run_now

    first, second = run_now(ok, "tests"), run_now(missing, "tests")
    node = start_node("secret-node", extra_env=ENV)

    def finished():
        rows = Execution.objects.filter(pk__in=[first.pk, second.pk], finished_at__isnull=False)
        return rows.count() == 2

    wait_for(finished, message="both runs finished")
    assert out.read_text() == "sk-live-42\n"
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == "succeeded"
    assert first.kwargs["line"] == {"$secret": "BILLING_API_KEY"}
    assert second.state == "failed"
    assert "UnknownSecret: secret 'NOPE' is not set on this node" in second.error
    stored = [first.error, first.traceback, second.error, second.traceback, node.log()]
    stored += [str(e.before) + str(e.after) for e in AuditEntry.objects.all()]
    assert not any("sk-live-42" in text for text in stored)
