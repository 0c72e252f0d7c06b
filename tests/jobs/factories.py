from __future__ import annotations

from datetime import timedelta

from jobs.models import Execution, Job, Trigger, database_now


def make_job(name="job", target="demo.noop", **options) -> Job:
    return Job.objects.create(name=name, target=target, **options)


def due_triggers(job: Job, count: int, spread_seconds: float = 0.0, **options) -> list[Trigger]:
    """One-off triggers due now (or spread over the next ``spread_seconds``), in bulk."""
    now = database_now()
    triggers = []
    for i in range(count):
        when = now + timedelta(seconds=spread_seconds * i / max(count, 1))
        triggers.append(Trigger(job=job, kind="once", run_at=when, next_fire_at=when, **options))
    return Trigger.objects.bulk_create(triggers)


def make_execution(job, **fields) -> Execution:
    """A finished manual execution of ``job`` (fields override), timed in database time."""
    now = database_now()
    values = {
        "scheduled_for": now,
        "origin": "manual",
        "state": "succeeded",
        "started_at": now,
        "finished_at": now + timedelta(seconds=2),
    }
    values.update(fields)
    return Execution.objects.create(job=job, **values)
