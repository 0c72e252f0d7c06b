"""Applying a schedule file: make the database's jobs what the file says, audited.

``apply(specs, source, by, prune, dry_run)`` works out and applies, in one transaction,
what to create, change, pause or delete, and returns that plan; a dry run rolls the
transaction back, so what it reports is exactly what a real run would do.

- A job of the file is found by name. A new one is created; an existing one is changed
  where its fields differ. Every job applied is marked ``managed_by`` the file, and a job
  that another file manages is refused.
- A job's triggers are matched to the file's by schedule (kind, cron, time zone,
  interval, times), then the rest in order: a matched trigger keeps its id, its history
  and, when its schedule is unchanged, its next fire time.
- A job that the file managed and no longer lists is paused; with ``prune``, deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Q

from controlplane import audit
from jobs.actions import set_job_paused
from jobs.edits import JOB_FIELDS, TRIGGER_FIELDS, job_snapshot_with_triggers, jsonable, snapshot
from jobs.models import Job, Trigger
from jobs.schedule_files import SCHEDULE_KEYS, TRIGGER_KEYS, JobSpec, ScheduleFileError

ACTOR = "manage.py apply_schedules"


@dataclass
class Step:
    """One line of the plan: what happens to one job, and to its triggers."""

    action: str  # create, change, adopt, pause, delete
    job: str
    details: list[str] = field(default_factory=list)


@dataclass
class Plan:
    source: str
    steps: list[Step] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for step in self.steps if step.action == action)

    @property
    def changes_anything(self) -> bool:
        return bool(self.steps)

    def summary(self) -> str:
        counts = [f"{self.count(a)} to {a}" for a in ("create", "change", "pause", "delete")]
        text = ", ".join(counts)
        if self.count("adopt"):
            text += f"; {self.count('adopt')} existing job(s) to mark as managed by it"
        return text


class _DryRun(Exception):
    pass


def apply(specs: list[JobSpec], source: str, by=ACTOR, prune=False, dry_run=False) -> Plan:
    """Make the jobs managed by ``source`` what ``specs`` say; see the module docstring."""
    plan = Plan(source)
    try:
        with transaction.atomic():
            _apply(specs, plan, by, prune)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return plan


def _apply(specs: list[JobSpec], plan: Plan, by, prune: bool) -> None:
    source = plan.source
    reason = f"applied from {source}"
    names = [spec.name for spec in specs]
    with connection.cursor() as cursor:
        # Two applies of the same file at once (two CI jobs) run one after the other; the
        # second then sees the first's jobs instead of failing on their unique names.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"apply_schedules:{source}"])
    # Row locks on every job this touches: an edit in the admin or the API waits for this
    # transaction (and this one for it), so neither overwrites the other half-way.
    existing = {
        job.name: job
        for job in Job.objects.select_for_update()
        .filter(Q(name__in=names) | Q(managed_by=source))
        .order_by("pk")
    }
    problems = [
        f"{source}:{spec.line}: job {spec.name!r} is managed by "
        f"{existing[spec.name].managed_by}; remove it there first"
        for spec in specs
        if spec.name in existing and existing[spec.name].managed_by not in ("", source)
    ]
    if problems:
        raise ScheduleFileError(problems)

    for spec in specs:
        job = existing.get(spec.name)
        if job is None:
            plan.steps.append(_create(spec, source, by, reason))
        else:
            step = _update(job, spec, source, by, reason)
            if step is not None:
                plan.steps.append(step)

    listed = set(names)
    for job in existing.values():
        if job.name in listed or job.managed_by != source:
            continue
        if prune:
            audit.record(by, "job.delete", "job", job.pk, f"removed from {source} (--prune)",
                         job_snapshot_with_triggers(job))  # fmt: skip
            job.delete()
            plan.steps.append(Step("delete", job.name, [f"removed from {source} (--prune)"]))
        elif set_job_paused(job, True, by, f"removed from {source}"):
            plan.steps.append(Step("pause", job.name, [f"removed from {source}"]))

    if plan.steps:
        audit.record(by, "schedules.apply", "schedule_file", source, reason,
                     after={a: plan.count(a) for a in
                            ("create", "change", "adopt", "pause", "delete")})  # fmt: skip


def _create(spec: JobSpec, source: str, by, reason: str) -> Step:
    job = Job(**spec.fields, managed_by=source)
    job.save()
    audit.record(by, "job.create", "job", job.pk, reason, None, snapshot(job, JOB_FIELDS))
    details = []
    for trigger_spec in spec.triggers:
        trigger = _create_trigger(job, trigger_spec.fields, by, reason)
        details.append(f"create trigger: {trigger.describe()}")
    return Step("create", spec.name, details)


def _create_trigger(job: Job, fields: dict, by, reason: str) -> Trigger:
    trigger = Trigger(job=job, **fields)
    trigger.save()  # computes next_fire_at
    after = snapshot(trigger, TRIGGER_FIELDS)
    audit.record(by, "trigger.create", "trigger", trigger.pk, reason, None, after)
    return trigger


def _update(job: Job, spec: JobSpec, source: str, by, reason: str) -> Step | None:
    details = []
    before = snapshot(job, JOB_FIELDS)
    after = {key: jsonable(value) for key, value in spec.fields.items()}
    changed = [key for key in JOB_FIELDS if before[key] != after[key]]
    if changed:
        for key in changed:
            setattr(job, key, spec.fields[key])
            details.append(f"{key}: {_show(before[key])} -> {_show(after[key])}")
    adopted = job.managed_by != source
    if changed or adopted:
        job.managed_by = source
        job.save()
    if changed:
        audit.record(by, "job.change", "job", job.pk, reason,
                     {k: before[k] for k in changed}, {k: after[k] for k in changed})  # fmt: skip
    if adopted:
        audit.record(by, "job.manage", "job", job.pk, reason,
                     {"managed_by": ""}, {"managed_by": source})  # fmt: skip
    details += _sync_triggers(job, spec, by, reason)
    if details:
        return Step("change", job.name, details)
    if adopted:
        return Step("adopt", job.name, [f"now managed by {source}"])
    return None


def _sync_triggers(job: Job, spec: JobSpec, by, reason: str) -> list[str]:
    current = list(Trigger.objects.select_for_update().filter(job=job).order_by("pk"))
    wanted = list(spec.triggers)
    pairs = []
    # Same schedule first: such a trigger keeps its next fire time.
    for trigger_spec in list(wanted):
        key = _schedule_key(trigger_spec.fields)
        match = next((t for t in current if _schedule_key(_fields(t)) == key), None)
        if match is not None:
            pairs.append((match, trigger_spec))
            current.remove(match)
            wanted.remove(trigger_spec)
    # Then in order: a changed schedule keeps the trigger's id and history.
    while current and wanted:
        pairs.append((current.pop(0), wanted.pop(0)))

    details = []
    for trigger, trigger_spec in pairs:
        before = snapshot(trigger, TRIGGER_KEYS)
        after = {key: jsonable(value) for key, value in trigger_spec.fields.items()}
        changed = [key for key in TRIGGER_KEYS if before[key] != after[key]]
        if not changed:
            continue
        for key in changed:
            setattr(trigger, key, trigger_spec.fields[key])
        trigger.save()  # a changed schedule is rescheduled from now
        audit.record(by, "trigger.change", "trigger", trigger.pk, reason,
                     {k: before[k] for k in changed}, {k: after[k] for k in changed})  # fmt: skip
        shown = ", ".join(f"{k}: {_show(before[k])} -> {_show(after[k])}" for k in changed)
        details.append(f"change trigger #{trigger.pk}: {shown}")
    for trigger_spec in wanted:
        trigger = _create_trigger(job, trigger_spec.fields, by, reason)
        details.append(f"create trigger: {trigger.describe()}")
    for trigger in current:
        audit.record(by, "trigger.delete", "trigger", trigger.pk, reason,
                     snapshot(trigger, TRIGGER_FIELDS))  # fmt: skip
        details.append(f"delete trigger #{trigger.pk}: {trigger.describe()}")
        trigger.delete()
    return details


def _fields(trigger: Trigger) -> dict:
    return {key: getattr(trigger, key) for key in TRIGGER_KEYS}


def _schedule_key(fields: dict) -> tuple:
    return tuple(jsonable(fields[key]) for key in SCHEDULE_KEYS)


def _show(value) -> str:
    return "(none)" if value is None or value == "" else repr(value)
