"""What the jobs and executions pages read, in a bounded number of queries.

Execution history is paged by keyset on (created_at DESC, id DESC), the order of
``execution_recent_idx``: a page costs an index range scan of about one page of rows
however deep it is, and nothing counts the whole table.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cron_descriptor import ExpressionDescriptor, Options
from django.db.models import (
    BooleanField,
    F,
    Func,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    prefetch_related_objects,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Left, Now

from controlplane import durations, redaction
from controlplane.models import AuditEntry
from jobs import search
from jobs.models import Execution, Job, Trigger

PAGE_SIZE = 50
# Runs in each row's strip on the jobs list (the job's own page shows 50): 50 rows of 50
# linked squares took most of the page's render time.
LIST_STRIP_RUNS = 20
MAX_PAGE_SIZE = 200
RECENT_EXECUTIONS = 20
SCHEDULE_HISTORY = 100

# Row comparisons, not (a < x OR (a = x AND id < y)): PostgreSQL turns a row comparison
# into one index range bound, so the scan starts right at the cursor.
_OLDER_THAN = '("jobs_execution"."created_at", "jobs_execution"."id") < (%s, %s)'
_NEWER_THAN = '("jobs_execution"."created_at", "jobs_execution"."id") > (%s, %s)'

# The list and its polling never show these, and a traceback can be large.
_LIST_DEFERRED = ("args", "kwargs", "error", "traceback", "note")


# --- jobs ---------------------------------------------------------------------------


def job_rows(jobs: QuerySet[Job]) -> list[Job]:
    """Jobs with their triggers, next fire and last finished execution, in three queries.

    Sets on each job: ``trigger_list`` (each trigger with ``summary``), ``next_fire`` (the
    earliest next_fire_at among unpaused triggers; None when the job or all its triggers
    are paused) and ``last_result`` (its latest finished execution, or None).
    """
    # Served by execution_job_recent_idx (job, -created_at): one short backward scan per job.
    last_finished = (
        Execution.objects.filter(job=OuterRef("pk"), state__in=Execution.FINAL_STATES)
        .order_by("-created_at")
        .values("pk")[:1]
    )
    return job_rows_of(list(jobs.annotate(last_finished_id=Subquery(last_finished))))


def job_rows_of(rows: list[Job]) -> list[Job]:
    """job_rows() for jobs already loaded with a ``last_finished_id`` annotation (a
    page of the jobs list), in three more queries."""
    prefetch_related_objects(
        rows, Prefetch("triggers", queryset=Trigger.objects.order_by("id"), to_attr="trigger_list")
    )
    last = Execution.objects.only("id", "job_id", "state", "created_at", "finished_at").in_bulk(
        [job.last_finished_id for job in rows if job.last_finished_id]
    )
    # The last-runs strip of every job on the page, in one more query.
    from jobs.trend_views import run_strips  # trend_views imports this module

    strips = run_strips([job.pk for job in rows], n=LIST_STRIP_RUNS)
    for job in rows:
        job.last_result = last.get(job.last_finished_id)
        job.strip = strips.get(job.pk, [])
        for trigger in job.trigger_list:
            trigger.summary = summary(trigger)
        fires = [t.next_fire_at for t in job.trigger_list if not t.paused and t.next_fire_at]
        job.next_fire = None if job.paused else min(fires, default=None)
    return rows


def summary(trigger: Trigger) -> str:
    """A cron expression in words ("" for the other kinds, whose line says it all)."""
    if trigger.kind == Trigger.Kind.CRON:
        return _cron_words(trigger.cron)
    # An interval trigger's line (jobs/_trigger.html) already states its rate: saying
    # "every 1m" again here would state it twice.
    return ""


# Cached: cron_descriptor parses its translation catalogue for every description (about
# half a millisecond), and a page of jobs repeats the same few expressions.
@functools.lru_cache(maxsize=4096)
def _cron_words(cron: str) -> str:
    options = Options()
    options.use_24hour_time_format = True
    try:
        return ExpressionDescriptor(cron, options).get_description()
    except Exception:  # cron_descriptor raises several kinds on odd input
        return ""


def recent_executions(job: Job, limit: int = RECENT_EXECUTIONS) -> list[Execution]:
    rows = list(job.executions.defer(*_LIST_DEFERRED).order_by("-created_at", "-id")[:limit])
    return with_timings(rows)


def schedule_history(job: Job, trigger_ids: list[int], user, limit: int = SCHEDULE_HISTORY):
    """Audit entries about the job and its triggers, newest first, each with ``changes``;
    arguments in them are redacted for ``user`` (controlplane.redaction)."""
    about = Q(object_type="job", object_id=str(job.pk))
    if trigger_ids:
        about |= Q(object_type="trigger", object_id__in=[str(t) for t in trigger_ids])
    entries = list(AuditEntry.objects.filter(about)[:limit])
    for entry in entries:
        entry.before = redaction.audit_values(entry.before, user)
        entry.after = redaction.audit_values(entry.after, user)
        entry.changes = changes(entry.before, entry.after)
        entry.before_json = json_text(entry.before)
        entry.after_json = json_text(entry.after)
    return entries


def changes(before, after) -> list[tuple[str, str, str]] | None:
    """(field, before, after) as JSON text for each field that differs; None unless both
    are objects."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    keys = list(before) + [k for k in after if k not in before]
    return [
        (k, json_text(before.get(k)), json_text(after.get(k)))
        for k in keys
        if before.get(k) != after.get(k)
    ]


def json_text(value) -> str:
    """Compact JSON for display; empty for None (nothing recorded)."""
    return "" if value is None else json.dumps(value, default=str, ensure_ascii=False)


# --- executions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A position in (created_at DESC, id DESC) and which way to read from it."""

    created_at: datetime
    id: int
    newer: bool

    def encode(self) -> str:
        raw = f"{'n' if self.newer else 'o'}|{self.created_at.isoformat()}|{self.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises ValueError for anything encode() did not make."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            direction, when, pk = raw.split("|")
            created_at = datetime.fromisoformat(when)
            if direction not in ("n", "o") or created_at.tzinfo is None:
                raise ValueError
            return cls(created_at, int(pk), direction == "n")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise ValueError("Not a valid page cursor.") from None


@dataclass
class Page:
    rows: list[Execution]
    newer: Cursor | None
    older: Cursor | None

    @property
    def live(self) -> bool:
        """Whether a shown execution may still change (the table keeps polling)."""
        return any(not e.is_finished for e in self.rows)


def filter_executions(
    job: Job | None = None,
    state: str = "",
    origin: str = "",
    node: str = "",
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    since: timedelta | None = None,
    q: str = "",
) -> QuerySet[Execution]:
    """Executions matching the list's filters (empty ones ignored); ``created_to`` excluded.

    ``node`` is a prefix of the node id (execution_node_prefix_idx); ``since`` a window
    back from the database's now (the overview's counts link with it); ``q`` text in the
    error or arguments, as stored: below the admin role, callers check the rows found
    again with search.visible_match.
    """
    qs = Execution.objects.all()
    if job is not None:
        qs = qs.filter(job=job)
    if state:
        qs = qs.filter(state=state)
    if origin:
        qs = qs.filter(origin=origin)
    if node:
        qs = qs.filter(node__startswith=node)
    if created_from is not None:
        qs = qs.filter(created_at__gte=created_from)
    if created_to is not None:
        qs = qs.filter(created_at__lt=created_to)
    if since is not None:
        qs = qs.filter(created_at__gte=Now() - since)
    if q:
        qs = qs.filter(search.matching(q))
    return qs


# "15m", "24h", "7d": the windows the overview counts over, as a query parameter.
_WINDOW = re.compile(r"^([1-9][0-9]{0,3})([mhd])$")
_WINDOW_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
WINDOW_MAX = timedelta(days=366)


def parse_window(text: str) -> timedelta:
    """'24h' -> 24 hours. Raises ValueError, saying what is accepted, for anything else."""
    found = _WINDOW.match(text)
    if found is None:
        raise ValueError('A window is a whole number and a unit, m, h or d: "24h", "7d".')
    window = timedelta(**{_WINDOW_UNITS[found[2]]: int(found[1])})
    if window > WINDOW_MAX:
        raise ValueError(f"A window is at most {WINDOW_MAX.days} days.")
    return window


def window_text(window: timedelta) -> str:
    """The inverse of parse_window for whole days, hours or minutes."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise ValueError(f"{window} is not a whole number of minutes")


# The first line of the error (bounded): what the executions list shows of it.
ERROR_FIRST_LINE = Left(
    Func(F("error"), Value("\n"), Value(1), function="split_part", output_field=TextField()),
    1000,
)


def with_error_lines(rows: list[Execution], user) -> list[Execution]:
    """Set ``error_line`` on each row (from execution_page) to its error's first line as
    ``user`` may see it: redacted below the admin role like the error on its own page."""
    for e in rows:
        e.error_line = redaction.text_for_user(getattr(e, "error_first_line", "") or "", user)
    return rows


def execution_page(qs: QuerySet[Execution], cursor: Cursor | None, limit: int, keep=None) -> Page:
    """One page of ``qs`` after (older) or before (newer) ``cursor``, newest first.

    Reads limit + 1 rows: the extra one only says whether there is a further page.
    ``keep(execution)``, when given, drops rows the SQL found but the reader may not
    (search.visible_match): rows are then read in chunks until the page is full, for
    at most KEEP_SCAN_CHUNKS chunks; a page cut short there links on from the last row
    read, so the next page goes on where this one stopped.
    """
    qs = qs.select_related("job").defer(*(_LIST_DEFERRED if keep is None else _KEEP_DEFERRED))
    if cursor is not None and cursor.newer:
        found, last = _read(qs, cursor, limit + 1, keep, newer=True)
        rows = found[:limit][::-1]
        more_newer = len(found) > limit or last is not None
        if last is not None:
            newer = last
        else:
            newer = _position(rows[0], newer=True) if rows and more_newer else None
        older = _position(rows[-1], newer=False) if rows else None
        return Page(with_timings(rows), newer, older)
    found, last = _read(qs, cursor, limit + 1, keep, newer=False)
    rows = found[:limit]
    newer = _position(rows[0], newer=True) if rows and cursor is not None else None
    if last is not None:
        older = last
    else:
        older = _position(rows[-1], newer=False) if len(found) > limit else None
    return Page(with_timings(rows), newer, older)


# With ``keep``, the columns it reads stay loaded.
_KEEP_DEFERRED = ("traceback", "note")
KEEP_SCAN_CHUNKS = 20
KEEP_CHUNK = 200


def _read(qs, cursor: Cursor | None, wanted: int, keep, newer: bool):
    """Up to ``wanted`` rows from ``cursor`` in one direction, and the position of the
    last row read when the scan stopped early (None when it did not)."""
    template, order = (_NEWER_THAN, ("created_at", "id")) if newer else (
        _OLDER_THAN, ("-created_at", "-id"))  # fmt: skip
    position = cursor
    kept: list[Execution] = []
    chunk = wanted if keep is None else max(wanted, KEEP_CHUNK)
    for _ in range(1 if keep is None else KEEP_SCAN_CHUNKS):
        page = qs
        if position is not None:
            bound = (position.created_at, position.id)
            page = page.filter(RawSQL(template, bound, output_field=BooleanField()))
        found = list(page.order_by(*order)[:chunk])
        kept += found if keep is None else [e for e in found if keep(e)]
        if len(kept) >= wanted or len(found) < chunk:
            return kept[:wanted], None
        position = _position(found[-1], newer=newer)
    return kept[:wanted], position


def _position(execution: Execution, newer: bool) -> Cursor:
    return Cursor(execution.created_at, execution.pk, newer)


def execution_chain(execution: Execution) -> dict:
    """The attempts of the same fire (the first and its retries), what this reruns, and its
    reruns; ``live`` while any of them (or this one) is unfinished."""
    first = execution.retry_of or execution
    attempts = [first, *first.retries.select_related("job").order_by("attempt", "id")]
    reruns = list(execution.reruns.order_by("id"))
    members = [execution, *attempts, *reruns, *filter(None, [execution.rerun_of])]
    return {
        "attempts": attempts if len(attempts) > 1 else [],
        "rerun_of": execution.rerun_of,
        "reruns": reruns,
        "live": any(not member.is_finished for member in members),
    }


# --- timings ------------------------------------------------------------------------


def with_timings(executions: list[Execution]) -> list[Execution]:
    """Set ``duration`` and ``lag`` (seconds, or None) on each execution.

    Lag is dispatched_at - scheduled_for, for scheduled fires only: how late the cluster
    picked the fire up. Manual runs and reruns have no schedule to be late for.
    """
    for e in executions:
        e.duration = _seconds(e.started_at, e.finished_at)
        e.lag = (
            _seconds(e.scheduled_for, e.dispatched_at)
            if e.origin == Execution.Origin.SCHEDULE
            else None
        )
        e.duration_text = duration_text(e.duration)
        e.lag_text = duration_text(e.lag)
    return executions


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def duration_text(seconds: float | None) -> str:
    """850ms, 12s, 4m 05s, 2h 03m (controlplane.durations); empty for None."""
    return durations.duration(seconds)
