"""Bad input gets a clear error naming the field, and nothing is saved."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from jobs.models import Job, Trigger


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def job_form(**overrides) -> dict:
    data = {
        "name": "nightly",
        "description": "",
        "target": "demo.echo",
        "args": "[]",
        "kwargs": "{}",
        "executor": "inline",
        "timeout": "",
        "max_attempts": "1",
        "retry_backoff": "10",
        "concurrency_policy": "allow",
        "queue": "scheduler",
        "celery_task": "",
        "triggers-TOTAL_FORMS": "1",
        "triggers-INITIAL_FORMS": "0",
        "triggers-MIN_NUM_FORMS": "0",
        "triggers-MAX_NUM_FORMS": "1000",
        "triggers-0-kind": "cron",
        "triggers-0-cron": "0 2 * * *",
        "triggers-0-timezone": "Europe/London",
        "triggers-0-interval": "",
        "triggers-0-misfire_policy": "fire_once",
        "triggers-0-misfire_grace": "60",
    }
    data.update(overrides)
    return data


def errors_of(response) -> dict:
    """Field name -> errors, from the admin's job form and its trigger inline."""
    found = {}
    form = response.context["adminform"].form
    found.update({k: " ".join(v) for k, v in form.errors.items()})
    for formset in response.context["inline_admin_formsets"]:
        for f in formset.formset.forms:
            found.update({f"trigger.{k}": " ".join(v) for k, v in f.errors.items()})
    return found


def test_a_valid_job_with_a_cron_trigger_is_saved_with_its_next_fire_time(admin_client):
    response = admin_client.post("/admin/jobs/job/add/", job_form())
    assert response.status_code == 302, errors_of(response)
    trigger = Trigger.objects.get(job__name="nightly")
    assert trigger.next_fire_at is not None
    assert trigger.next_fire_at.astimezone(trigger.tzinfo()).hour == 2


@pytest.mark.parametrize(
    ("field", "value", "error_field", "says"),
    [
        ("triggers-0-cron", "61 * * * *", "trigger.cron", ""),
        ("triggers-0-cron", "* * *", "trigger.cron", "field"),
        ("triggers-0-timezone", "Mars/Olympus_Mons", "trigger.timezone", "Mars/Olympus_Mons"),
        ("args", "[1, 2", "args", "JSON"),
        ("kwargs", "[1, 2]", "kwargs", "JSON object"),
        ("target", "os.system", "target", "os.system"),
    ],
)
def test_bad_input_is_rejected_beside_its_field_and_nothing_is_saved(
    admin_client, field, value, error_field, says
):
    response = admin_client.post("/admin/jobs/job/add/", job_form(**{field: value}))
    assert response.status_code == 200
    errors = errors_of(response)
    assert error_field in errors, errors
    assert says in errors[error_field]
    assert not Job.objects.exists()
    assert not Trigger.objects.exists()


def test_window_that_ends_before_it_starts_is_rejected(admin_client):
    data = job_form(**{
        "triggers-0-start_at_0": "2030-01-02", "triggers-0-start_at_1": "00:00:00",
        "triggers-0-end_at_0": "2030-01-01", "triggers-0-end_at_1": "00:00:00",
    })  # fmt: skip
    response = admin_client.post("/admin/jobs/job/add/", data)
    assert "trigger.end_at" in errors_of(response)
    assert not Job.objects.exists()


def test_model_validation_names_the_field_for_an_unregistered_target(db):
    job = Job(name="x", target="builtins.exec")
    with pytest.raises(ValidationError) as e:
        job.full_clean()
    assert "target" in e.value.message_dict
    assert "not a registered job target" in e.value.message_dict["target"][0]


def test_model_validation_rejects_an_unknown_time_zone_and_bad_cron(db):
    job = Job.objects.create(name="x", target="demo.noop")
    trigger = Trigger(job=job, kind="cron", cron="0 25 * * *", timezone="Nowhere/Town")
    with pytest.raises(ValidationError) as e:
        trigger.full_clean()
    assert set(e.value.message_dict) >= {"timezone", "cron"}
