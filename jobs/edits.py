"""Schedule edits for the audit log: snapshots of a job's or trigger's fields, and diffs.

Shared by the admin and the API, so both record the same before/after.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.forms import JobForm, TriggerForm
from jobs.models import Job

JOB_FIELDS = JobForm._meta.fields
TRIGGER_FIELDS = TriggerForm._meta.fields


def jsonable(value):
    # Datetimes as ISO strings in UTC, so a value's zone never reads as a change.
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def snapshot(obj, names) -> dict:
    return {name: jsonable(obj._meta.get_field(name).value_from_object(obj)) for name in names}


def changes(before: dict, after: dict) -> tuple[dict, dict]:
    names = [name for name in after if before.get(name) != after[name]]
    return {n: before.get(n) for n in names}, {n: after[n] for n in names}


def locked_snapshots(model, pks, names) -> dict:
    # Read under a row lock (the admin saves inside a transaction): what the audit calls
    # "before" is exactly what this save overwrites, even if two people edit at once.
    rows = model.objects.select_for_update().filter(pk__in=pks).order_by("pk")
    return {obj.pk: snapshot(obj, names) for obj in rows}


def job_snapshot_with_triggers(job: Job) -> dict:
    before = snapshot(job, JOB_FIELDS)
    before["triggers"] = [
        {"id": t.pk, **snapshot(t, TRIGGER_FIELDS)} for t in job.triggers.order_by("pk")
    ]
    return before
