"""Schedules as code: the TOML file of jobs and their triggers, read and written.

The format (README, "Schedules as code") is one ``[[jobs]]`` table per job, with the
fields the admin has, and one ``[[jobs.triggers]]`` table per trigger below it::

    [[jobs]]
    name = "nightly report"
    target = "reports.nightly"
    kwargs = {region = "eu"}
    timeout = 600

    [[jobs.triggers]]
    kind = "cron"
    cron = "0 2 * * *"
    timezone = "Europe/London"

A field left out takes the admin's default. Reading checks every job and trigger with
the models' own validation and reports each problem with the line and field at fault;
jobs/schedule_sync.py applies what was read.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import tomlkit
from django.core.exceptions import ValidationError

from jobs.edits import JOB_FIELDS, TRIGGER_FIELDS
from jobs.models import Job, Trigger

JOB_KEYS = list(JOB_FIELDS)
TRIGGER_KEYS = [name for name in TRIGGER_FIELDS if name != "job"]
# The fields a trigger is matched on between the file and the database: the schedule.
SCHEDULE_KEYS = ["kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at"]

_STR, _INT, _NUMBER, _BOOL, _LIST, _TABLE, _DATETIME = (
    "a string", "an integer", "a number", "true or false", "an array", "a table",
    "a date-time with an offset (e.g. 2026-01-31T02:00:00Z)",
)  # fmt: skip
KEY_TYPES = {
    "name": _STR, "description": _STR, "target": _STR, "celery_task": _STR, "args": _LIST,
    "kwargs": _TABLE, "executor": _STR, "queue": _STR, "timeout": _INT,
    "max_attempts": _INT, "retry_backoff": _NUMBER, "recover": _BOOL,
    "concurrency_policy": _STR, "paused": _BOOL, "kind": _STR, "cron": _STR,
    "timezone": _STR, "interval": _INT, "run_at": _DATETIME, "start_at": _DATETIME,
    "end_at": _DATETIME, "misfire_policy": _STR, "misfire_grace": _INT,
}  # fmt: skip


class ScheduleFileError(Exception):
    """The file cannot be applied; ``problems`` lists each one with its line and field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class TriggerSpec:
    fields: dict
    line: int

    def schedule(self) -> tuple:
        return tuple(self.fields[key] for key in SCHEDULE_KEYS)


@dataclass
class JobSpec:
    fields: dict
    line: int
    triggers: list[TriggerSpec] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.fields["name"]


# --- reading ---------------------------------------------------------------------------


def read(text: str, source: str) -> list[JobSpec]:
    """The jobs of a schedule file, each checked; ScheduleFileError lists every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)".
        raise ScheduleFileError([f"{source}: not valid TOML: {e}"]) from None
    lines = _key_lines(text)
    problems: list[str] = []

    def problem(path: tuple, key: str | None, message: str) -> None:
        line = _line_of(lines, path, key)
        where = _describe(path) + (f".{key}" if key else "")
        problems.append(f"{source}:{line}: {where}: {message}")

    for key in data:
        if key != "jobs":
            problem((), key, "unknown key: a schedule file holds [[jobs]] tables only")
    entries = data.get("jobs", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problem((), "jobs", "must be [[jobs]] tables")
        entries = []
    specs, seen = [], {}
    for index, entry in enumerate(entries):
        path = ("jobs", index)
        spec = _read_job(entry, path, problem, lines)
        if spec is None:
            continue
        if spec.name in seen:
            problem(path, "name", f"{spec.name!r} is already the name of jobs[{seen[spec.name]}]")
            continue
        seen[spec.name] = index
        specs.append(spec)
    if problems:
        raise ScheduleFileError(problems)
    return specs


def _read_job(entry: dict, path: tuple, problem, lines) -> JobSpec | None:
    fields = _typed_fields(entry, JOB_KEYS, {"triggers"}, path, problem)
    triggers_raw = entry.get("triggers", [])
    if not isinstance(triggers_raw, list) or not all(isinstance(t, dict) for t in triggers_raw):
        problem(path, "triggers", "must be [[jobs.triggers]] tables")
        triggers_raw = []
    ok = fields is not None
    if ok and "name" not in fields:
        problem(path, None, "every job needs a name")
        ok = False
    if ok:
        job = Job(**fields)
        ok = _clean(job, path, problem, exclude=[])
        fields = {key: getattr(job, key) for key in JOB_KEYS}
    # The triggers are checked even when the job is not, so that every problem is listed.
    spec = JobSpec(fields or {}, _line_of(lines, path, None))
    for index, raw in enumerate(triggers_raw):
        trigger_path = (*path, "triggers", index)
        trigger_fields = _typed_fields(raw, TRIGGER_KEYS, set(), trigger_path, problem)
        if trigger_fields is None:
            ok = False
            continue
        trigger = Trigger(**trigger_fields)
        if not _clean(trigger, trigger_path, problem, exclude=["job"]):
            ok = False
            continue
        values = {key: getattr(trigger, key) for key in TRIGGER_KEYS}
        spec.triggers.append(TriggerSpec(values, _line_of(lines, trigger_path, None)))
    return spec if ok else None


def _typed_fields(entry: dict, keys, others: set, path: tuple, problem) -> dict | None:
    """The entry's fields, each of the type its model field needs (TOML has no null: a
    field left out takes the model's default)."""
    fields, ok = {}, True
    for key, value in entry.items():
        if key in others:
            continue
        if key not in keys:
            known = ", ".join([*keys, *sorted(others)])
            problem(path, key, f"unknown field (known: {known})")
            ok = False
            continue
        message = _type_error(KEY_TYPES[key], value)
        if message:
            problem(path, key, message)
            ok = False
            continue
        fields[key] = value
    return fields if ok else None


def _type_error(expected: str, value) -> str:
    if expected == _STR:
        good = isinstance(value, str)
    elif expected == _INT:
        good = isinstance(value, int) and not isinstance(value, bool)
    elif expected == _NUMBER:
        good = isinstance(value, int | float) and not isinstance(value, bool)
        if good and not math.isfinite(value):
            return "must be a finite number"
    elif expected == _BOOL:
        good = isinstance(value, bool)
    elif expected == _DATETIME:
        good = isinstance(value, datetime) and value.tzinfo is not None
    else:
        good = isinstance(value, list if expected == _LIST else dict)
        if good and not _json_like(value):
            return "may hold strings, numbers, booleans, arrays and tables only (no dates)"
    return "" if good else f"must be {expected}, not {_toml_type(value)}"


def _json_like(value) -> bool:
    if isinstance(value, dict):
        return all(_json_like(v) for v in value.values())
    if isinstance(value, list):
        return all(_json_like(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | float | bool)


def _toml_type(value) -> str:
    if isinstance(value, datetime) and value.tzinfo is None:
        return "a date-time without an offset"
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), f"a {type(value).__name__}")


def _clean(obj, path: tuple, problem, exclude: list[str]) -> bool:
    # The models' own validation, as the admin and the API run it; a name that exists
    # already is what applying updates, so uniqueness is not checked here.
    try:
        obj.full_clean(exclude=exclude, validate_unique=False)
    except ValidationError as e:
        for key, messages in e.message_dict.items():
            for message in messages:
                problem(path, None if key == "__all__" else key, message)
        return False
    return True


# --- where things are in the text ----------------------------------------------------------

_HEADER = re.compile(r"\s*\[\[\s*([\w.-]+)\s*\]\]")
_TABLE = re.compile(r"\s*\[\s*([\w.-]+)\s*\]")
_KEY = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([\w-]+))\s*=""")


def _key_lines(text: str) -> dict[tuple, int]:
    """Line numbers of tables and keys: ("jobs", 0) -> its [[jobs]] header, ("jobs", 0,
    "name") -> its name, ("jobs", 0, "triggers", 1, "cron") -> that trigger's cron.

    tomllib gives positions for syntax errors only; this reads the layout that
    export_schedules writes and people write by hand. Anything else falls back to the
    nearest enclosing table (see _line_of).
    """
    found: dict[tuple, int] = {}
    job, trigger, table = -1, -1, None
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(line):
            name = header.group(1)
            if name == "jobs":
                job, trigger = job + 1, -1
                table = ("jobs", job)
            elif name == "jobs.triggers" and job >= 0:
                trigger += 1
                table = ("jobs", job, "triggers", trigger)
            else:
                table = None
            if table is not None:
                found.setdefault(table, number)
        elif sub := _TABLE.match(line):
            # [jobs.kwargs]: the job's kwargs, written as a table of its own.
            parts = sub.group(1).split(".")
            table = None
            if parts[0] == "jobs" and len(parts) == 2 and job >= 0:
                found.setdefault(("jobs", job, parts[1]), number)
        elif table is not None and (key := _KEY.match(line)):
            name = next(group for group in key.groups() if group is not None)
            found.setdefault((*table, name), number)
    return found


def _line_of(lines: dict[tuple, int], path: tuple, key: str | None) -> int:
    candidates = [(*path, key)] if key else []
    candidates += [path[:n] for n in range(len(path), 0, -1)]
    for candidate in candidates:
        if candidate in lines:
            return lines[candidate]
    return 1


def _describe(path: tuple) -> str:
    if not path:
        return "file"
    text = f"jobs[{path[1]}]"
    if len(path) > 2:
        text += f".triggers[{path[3]}]"
    return text


# --- writing ---------------------------------------------------------------------------


def write(jobs, header: str = "") -> str:
    """``jobs`` (with their triggers) in the format read() reads; None and "" left out."""
    doc = tomlkit.document()
    for line in header.splitlines():
        doc.add(tomlkit.comment(line))
    if header:
        doc.add(tomlkit.nl())
    problems = [
        f"job {job.name!r}: {key} holds a null, which TOML cannot write; replace it first"
        for job in jobs
        for key in ("args", "kwargs")
        if _has_null(getattr(job, key))
    ]
    if problems:
        raise ScheduleFileError(problems)
    tables = tomlkit.aot()
    for job in jobs:
        table = _table(job, JOB_KEYS)
        triggers = tomlkit.aot()
        for trigger in job.triggers.order_by("pk"):
            triggers.append(_table(trigger, TRIGGER_KEYS))
        if len(triggers):
            table.add("triggers", triggers)
        tables.append(table)
    doc.add("jobs", tables)
    return tomlkit.dumps(doc)


def _has_null(value) -> bool:
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return value is None


def _table(obj, keys) -> tomlkit.items.Table:
    table = tomlkit.table()
    for key in keys:
        value = getattr(obj, key)
        if value is None or value == "":
            continue
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
        elif key == "kwargs":
            inline = tomlkit.inline_table()
            inline.update(value)
            value = inline
        table.add(key, value)
    return table
