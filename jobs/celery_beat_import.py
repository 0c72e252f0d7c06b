"""A way in from django-celery-beat: its periodic tasks as Celery-executor jobs.

``read_periodic_tasks(url)`` reads django-celery-beat's tables from another database in
a read-only transaction (plain SQL: django-celery-beat need not be installed here).
``plan(tasks)`` maps each one to a job and a trigger, or says why it cannot;
``import_tasks`` creates them, audited, in one transaction.

What maps (PeriodicTask -> Job and Trigger): name, task (the job's Celery task), args and
kwargs (JSON text), queue, enabled (disabled -> paused), description, start_time (the
window's start), expires (the window's end: django-celery-beat disables the task then),
and the schedule: crontab with its time zone -> cron, interval -> interval (its phase kept
from the last run), clocked -> once, one-off -> once (at its start_time, else at
its schedule's next time, as django-celery-beat runs it).

What does not, reported for each task and never dropped silently: solar schedules, a
crontab restricting both day of month and day of week (celery needs both to match, this
scheduler either, as Vixie cron does), sub-second intervals, JSON that is not a list or
an object, a job name already taken (skipped); and, kept as notes on the job (its
description) since the rest of it imports: exchange, routing_key, priority, headers and
expire_seconds, which this scheduler's own messages do not carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from django.core.exceptions import ValidationError
from django.db import transaction
from psycopg.rows import dict_row

from controlplane import audit
from jobs import schedule
from jobs.edits import JOB_FIELDS, TRIGGER_FIELDS, snapshot
from jobs.models import Job, Trigger, validate_celery_task_name

ACTOR = "manage.py import_celery_beat"

# Every column this reads; the names are django-celery-beat's since 2.x (up to 2.9).
PERIODIC_TASKS_SQL = """
SELECT t.id, t.name, t.task, t.args, t.kwargs, t.queue, t.exchange, t.routing_key,
       t.headers, t.priority, t.expires, t.expire_seconds, t.one_off, t.start_time,
       t.enabled, t.last_run_at, t.description,
       c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week,
       c.timezone AS crontab_timezone,
       i.every, i.period,
       k.clocked_time,
       s.event AS solar_event, s.latitude, s.longitude,
       t.crontab_id, t.interval_id, t.clocked_id, t.solar_id
FROM django_celery_beat_periodictask t
LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id
LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id
ORDER BY t.id
"""

PERIOD_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1, "microseconds": 1e-6}


class SourceError(Exception):
    """The source database cannot be read as django-celery-beat's."""


@dataclass
class Mapped:
    """One periodic task: the job and trigger it becomes, or why it is skipped."""

    task_id: int
    name: str
    job: dict | None = None
    trigger: dict | None = None
    notes: list[str] = field(default_factory=list)  # lossy or changed semantics
    skip_reason: str = ""

    def describe(self) -> str:
        trigger = Trigger(**self.trigger) if self.trigger else None
        return f"celery task {self.job['celery_task']}, {trigger.describe()}, queue " + repr(
            self.job["queue"]
        )


def read_periodic_tasks(url: str) -> list[dict]:
    """Every PeriodicTask with its schedule's columns, read only."""
    try:
        with psycopg.connect(url, connect_timeout=10, row_factory=dict_row) as conn:
            conn.read_only = True  # the source is someone else's: never write to it
            with conn.transaction():
                return conn.execute(PERIODIC_TASKS_SQL).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise SourceError(f"no django-celery-beat tables there: {_first_line(e)}") from None
    except psycopg.errors.UndefinedColumn as e:
        raise SourceError(f"an unknown django-celery-beat schema: {_first_line(e)}") from None
    except psycopg.Error as e:
        raise SourceError(f"cannot read it: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def plan(rows: list[dict], now: datetime, default_queue: str) -> list[Mapped]:
    names = [row["name"] for row in rows]
    taken = set(Job.objects.filter(name__in=names).values_list("name", flat=True))
    return [_map(row, now, default_queue, taken) for row in rows]


def _map(row: dict, now: datetime, default_queue: str, taken: set[str]) -> Mapped:
    mapped = Mapped(row["id"], row["name"])

    def skip(reason: str) -> Mapped:
        mapped.skip_reason = reason
        return mapped

    if row["name"] in taken:
        return skip("a job of that name exists already (imported before?)")
    if len(row["name"]) > Job._meta.get_field("name").max_length:
        return skip("its name is longer than a job name may be (200 characters)")
    try:
        validate_celery_task_name(row["task"])
    except ValidationError:
        return skip(f"task {row['task']!r} is not a Celery task name")
    try:
        args, kwargs = json.loads(row["args"] or "[]"), json.loads(row["kwargs"] or "{}")
    except json.JSONDecodeError as e:
        return skip(f"its args or kwargs are not JSON ({e.msg})")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return skip("its args must be a JSON list and its kwargs a JSON object")

    trigger, reason = _trigger(row, now, mapped.notes)
    if trigger is None:
        return skip(reason)

    queue = row["queue"] or default_queue
    if not row["queue"]:
        mapped.notes.append(
            f"no queue: its runs go to {queue!r}; django-celery-beat sent it to the task's "
            "default route"
        )
    for option in ("exchange", "routing_key"):
        if row[option]:
            mapped.notes.append(
                f"{option} {row[option]!r} is not supported: runs are sent to queue {queue!r}"
            )
    if row["priority"] is not None:
        mapped.notes.append(f"priority {row['priority']} is not supported: dropped")
    headers = (row["headers"] or "").strip()
    if headers not in ("", "{}"):
        mapped.notes.append(f"headers {headers} are not supported: dropped")
    if row["expire_seconds"] is not None:
        mapped.notes.append(
            f"expire_seconds {row['expire_seconds']} (a message not started within it is "
            "discarded) is not supported: a run waits until a worker takes it"
        )
    if not row["enabled"]:
        mapped.notes.append("disabled there: imported paused")

    description = row["description"] or ""
    if mapped.notes:
        lines = "\n".join(f"- {note}" for note in mapped.notes)
        imported = f"Imported from django-celery-beat (PeriodicTask #{row['id']}):\n{lines}"
        description = f"{description}\n\n{imported}" if description else imported
    mapped.job = {
        "name": row["name"],
        "description": description,
        "executor": Job.Executor.CELERY,
        "target": "",
        "celery_task": row["task"],
        "queue": queue,
        "args": args,
        "kwargs": kwargs,
        "paused": not row["enabled"],
    }
    mapped.trigger = trigger
    problem = _validate(mapped)
    if problem:
        return skip(problem)
    return mapped


def _trigger(row: dict, now: datetime, notes: list[str]) -> tuple[dict | None, str]:
    """The trigger's fields, or None and why there is none."""
    window = {"start_at": row["start_time"], "end_at": row["expires"]}
    if row["solar_id"] is not None:
        return None, (
            f"solar schedules ({row['solar_event']} at {float(row['latitude']):g}, "
            f"{float(row['longitude']):g}) have no equivalent here"
        )
    if row["clocked_id"] is not None:
        if row["clocked_time"] <= now:
            notes.append("its clocked time has passed: the trigger will not fire")
        return {"kind": Trigger.Kind.ONCE, "run_at": row["clocked_time"], **window}, ""
    if row["crontab_id"] is not None:
        fields = [row["minute"], row["hour"], row["day_of_month"], row["month_of_year"],
                  row["day_of_week"]]  # fmt: skip
        day_of_month, day_of_week = row["day_of_month"].strip(), row["day_of_week"].strip()
        if day_of_month != "*" and day_of_week != "*":
            return None, (
                f"its crontab restricts both day of month ({day_of_month}) and day of week "
                f"({day_of_week}): celery fires on days matching both, this scheduler (as "
                "Vixie cron) on days matching either"
            )
        trigger = {"kind": Trigger.Kind.CRON, "cron": " ".join(f.strip() for f in fields),
                   "timezone": str(row["crontab_timezone"] or "UTC"), **window}  # fmt: skip
    elif row["interval_id"] is not None:
        seconds = row["every"] * PERIOD_SECONDS.get(row["period"], 0)
        if seconds < 1 or seconds != int(seconds):
            return None, f"an interval of {row['every']} {row['period']} is not whole seconds"
        trigger = {"kind": Trigger.Kind.INTERVAL, "interval": int(seconds), **window}
        if row["start_time"] is None and row["last_run_at"] is not None:
            # Keeps celery's cadence (every N after the last run) as the interval's phase;
            # a start in the past changes nothing else.
            trigger["start_at"] = row["last_run_at"]
    else:
        return None, "it has no schedule"

    if row["one_off"]:
        # django-celery-beat runs a one-off task once: at its start_time when it has one
        # (a task never run counts as overdue then), else at its schedule's next time.
        if row["start_time"] is not None:
            run_at = row["start_time"]
        else:
            try:
                upcoming = schedule.next_fire_times(Trigger(**trigger), now, 1)
            except ValueError as e:
                return None, str(e)
            if not upcoming:
                return None, "one-off, and its schedule has no fire time left"
            run_at = upcoming[0]
        notes.append(f"one-off: a trigger that runs once, at {run_at.isoformat()}")
        if run_at <= now:
            notes.append("that time has passed: the trigger will not fire")
        return {"kind": Trigger.Kind.ONCE, "run_at": run_at, **window}, ""
    return trigger, ""


def _validate(mapped: Mapped) -> str:
    """The models' own checks (a cron field celery takes and this scheduler does not)."""
    job = Job(**mapped.job)
    trigger = Trigger(**mapped.trigger)
    try:
        job.full_clean(validate_unique=False)
        trigger.full_clean(exclude=["job"])
    except ValidationError as e:
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in e.message_dict.items())
    return ""


def import_tasks(mapped: list[Mapped], by=ACTOR) -> list[Job]:
    """Create the jobs and triggers of the tasks that map, in one transaction."""
    jobs = []
    with transaction.atomic():
        for item in mapped:
            if item.skip_reason:
                continue
            reason = f"imported from django-celery-beat PeriodicTask #{item.task_id}"
            job = Job.objects.create(**item.job)
            audit.record(by, "job.create", "job", job.pk, reason, None, snapshot(job, JOB_FIELDS))
            trigger = Trigger(job=job, **item.trigger)
            trigger.save()
            after = snapshot(trigger, TRIGGER_FIELDS)
            audit.record(by, "trigger.create", "trigger", trigger.pk, reason, None, after)
            jobs.append(job)
    return jobs
