"""Read-only queries behind the dashboard's overview and audit log pages.

Every age and "in N seconds" is computed by PostgreSQL (``now() - column``), so the
page says what the scheduler nodes see, whatever the web server's clock says. Each
query is bounded (a LIMIT, a time window on an indexed column, or a small table) so
the pages stay fast with millions of executions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, F, Func, Q
from django.urls import reverse

from controlplane import durations, redaction
from controlplane.models import AuditEntry
from jobs import trends
from jobs.describe import describe_schedule
from jobs.models import Execution, Job, Trigger
from locks.maintenance import stale_locks
from locks.models import SchedulerNode


class DbNow(Func):
    """PostgreSQL's now(): the clock the nodes and locks/maintenance.py use.

    Django's Now() is statement_timestamp() on PostgreSQL; inside a transaction the two
    differ, and one page should show one instant (tests run in one transaction).
    """

    template = "now()"
    output_field = DateTimeField()


FAILED_STATES = ("failed", "timed_out", "abandoned")
UNFINISHED_STATES = ("dispatched", "running")
DOWN_NODES_SHOWN = 10
UPCOMING_SHOWN = 10
FAILURES_SHOWN = 10
FAILURES_DAYS = 7
AUDIT_PAGE_SIZE = 50

# Fire lag of the most recent scheduled fires: at most the last 500 of those scheduled
# in the last 15 minutes. A node records a scheduled fire only once it is due, so
# created_at >= scheduled_for; the created_at bound is therefore implied by the
# scheduled_for one, and it lets execution_recent_idx find the window and stop after
# 500 rows however busy the cluster is.
FIRE_LAG = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_ms),
       max(lag_ms)
FROM (
    SELECT extract(epoch FROM dispatched_at - scheduled_for) * 1000 AS lag_ms
    FROM jobs_execution
    WHERE origin = 'schedule'
      AND dispatched_at IS NOT NULL
      AND scheduled_for >= now() - make_interval(mins => %(minutes)s)
      AND created_at >= now() - make_interval(mins => %(minutes)s)
    ORDER BY created_at DESC, id DESC
    LIMIT %(limit)s
) recent
"""


def format_duration(delta: timedelta | None) -> str:
    """A duration's size in controlplane.durations' format (absolute value); "-" for None."""
    if delta is None:
        return "-"
    return durations.duration(abs(delta.total_seconds()))


def expiry_text(expires_in: timedelta | None) -> str:
    """ "in 42s" for a lease still running, "expired 1m 30s ago" for one that ran out."""
    if expires_in is None:
        return "-"
    if expires_in.total_seconds() > 0:
        return durations.relative(expires_in)
    return f"expired {durations.ago(expires_in)}"


def nodes_with_age():
    """Scheduler nodes annotated with ``age``: database now() - last_heartbeat."""
    return SchedulerNode.objects.annotate(age=DbNow() - F("last_heartbeat"))


def describe_node(node: SchedulerNode) -> SchedulerNode:
    """Attach display fields to a node from nodes_with_age()."""
    node.age_text = format_duration(node.age)
    # Active but silent for longer than the timeout: about to be declared dead.
    node.overdue = (
        node.state == SchedulerNode.State.ACTIVE
        and node.age.total_seconds() > settings.SCHEDULER_NODE_TIMEOUT
    )
    return node


def running_counts(node_ids) -> dict[str, int]:
    """Dispatched or running executions per node (execution_unfinished_idx)."""
    rows = (
        Execution.objects.filter(state__in=UNFINISHED_STATES, node__in=list(node_ids))
        .values("node")
        .annotate(n=Count("id"))
        .values_list("node", "n")
    )
    return dict(rows)


def overview() -> dict:
    """Everything the overview page shows, each part one bounded query."""
    live = [describe_node(n) for n in nodes_with_age().filter(state="active").order_by("id")]
    down = [
        describe_node(n)
        for n in nodes_with_age()
        .exclude(state="active")
        .order_by("-last_heartbeat", "id")[:DOWN_NODES_SHOWN]
    ]
    running = running_counts(n.id for n in live)
    for node in live:
        node.running_count = running.get(node.id, 0)
    return {
        "live_nodes": live,
        "down_nodes": down,
        "state_counts": state_counts(),
        "upcoming": upcoming_fires(),
        "failures": recent_failures(),
        "failures_days": FAILURES_DAYS,
        "stale_count": len(stale_locks()),
        "lag": fire_lag(),
        "node_timeout": settings.SCHEDULER_NODE_TIMEOUT,
    }


def state_counts(hours: int = 24) -> list[tuple[str, int]]:
    """(state, count) of executions created in the last ``hours``, every state listed.

    Read from the run rollup (jobs/trends.py), not from a day of executions.
    """
    return trends.state_counts(hours)


def upcoming_fires(limit: int = UPCOMING_SHOWN):
    """The next due triggers of unpaused jobs (trigger_due_idx), with ``due_in``."""
    triggers = (
        Trigger.objects.filter(paused=False, next_fire_at__isnull=False, job__paused=False)
        .select_related("job")
        .annotate(due_in=F("next_fire_at") - DbNow())
        .order_by("next_fire_at", "id")[:limit]
    )
    triggers = list(triggers)
    for trigger in triggers:
        trigger.due_text = (
            durations.relative(trigger.due_in)
            if trigger.due_in.total_seconds() >= 0
            else f"due {durations.ago(trigger.due_in)}"
        )
        trigger.schedule_text = describe_schedule(trigger)
    return triggers


def recent_failures(limit: int = FAILURES_SHOWN, days: int = FAILURES_DAYS):
    """The last failed, timed-out or abandoned executions of the last ``days``.

    Walks execution_recent_idx newest first until it has ``limit`` failures; the window
    bounds that walk when failures are rare (a healthy cluster), which would otherwise
    read the whole history to find nothing.
    """
    return list(
        Execution.objects.filter(
            state__in=FAILED_STATES, created_at__gte=DbNow() - timedelta(days=days)
        )
        .select_related("job")
        .order_by("-created_at", "-id")[:limit]
    )


@dataclass(frozen=True)
class FireLag:
    fires: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


def fire_lag(minutes: int = 15, limit: int = 500) -> FireLag:
    """dispatched_at - scheduled_for of recent scheduled fires, in milliseconds."""
    with connection.cursor() as cursor:
        cursor.execute(FIRE_LAG, {"minutes": minutes, "limit": limit})
        fires, p50, p95, worst = cursor.fetchone()
    as_float = [None if v is None else float(v) for v in (p50, p95, worst)]
    return FireLag(fires, *as_float)


# --- audit log -------------------------------------------------------------------------


def audit_choices() -> tuple[list[str], list[str]]:
    """The actions and object types present in the log, for the filter selects."""
    entries = AuditEntry.objects.order_by()
    actions = sorted(entries.values_list("action", flat=True).distinct())
    object_types = sorted(entries.values_list("object_type", flat=True).distinct())
    return actions, object_types


def encode_cursor(entry: AuditEntry) -> str:
    return f"{entry.created_at.isoformat()}_{entry.pk}"


def decode_cursor(value: str) -> tuple[datetime, int]:
    """Inverse of encode_cursor; raises ValueError on anything else."""
    stamp, sep, pk = value.rpartition("_")
    if not sep:
        raise ValueError(value)
    when = datetime.fromisoformat(stamp)
    if when.tzinfo is None:
        raise ValueError(value)
    return when, int(pk)


@dataclass
class AuditPage:
    entries: list[AuditEntry]
    newer: str | None  # cursor for the page of newer entries, if any
    older: str | None  # cursor for the page of older entries, if any


def audit_page(
    filters: dict,
    before: tuple[datetime, int] | None = None,
    after: tuple[datetime, int] | None = None,
    size: int = AUDIT_PAGE_SIZE,
    user=None,
) -> AuditPage:
    """One page of the audit log, newest first, by keyset on (created_at, id).

    ``before`` gives the page of entries older than that cursor, ``after`` the page of
    entries newer than it; neither gives the newest page.
    """
    entries = AuditEntry.objects.all()
    for field in ("actor", "action", "object_type", "object_id"):
        if filters.get(field):
            entries = entries.filter(**{field: filters[field]})
    if filters.get("since"):
        entries = entries.filter(created_at__gte=filters["since"])
    if filters.get("until"):
        entries = entries.filter(created_at__lt=filters["until"])
    if after is not None:
        # (created_at, id) > after, written so the created_at bound can use an index.
        when, pk = after
        rows = list(
            entries.filter(created_at__gte=when)
            .filter(Q(created_at__gt=when) | Q(id__gt=pk))
            .order_by("created_at", "id")[: size + 1]
        )
        has_more = len(rows) > size
        rows = rows[:size][::-1]
        newer_exists, older_exists = has_more, True
    else:
        if before is not None:
            when, pk = before
            entries = entries.filter(created_at__lte=when).filter(
                Q(created_at__lt=when) | Q(id__lt=pk)
            )
        rows = list(entries.order_by("-created_at", "-id")[: size + 1])
        has_more = len(rows) > size
        rows = rows[:size]
        newer_exists, older_exists = before is not None, has_more
    describe_audit_entries(rows, user)
    return AuditPage(
        entries=rows,
        newer=encode_cursor(rows[0]) if rows and newer_exists else None,
        older=encode_cursor(rows[-1]) if rows and older_exists else None,
    )


def describe_audit_entries(entries: list[AuditEntry], user) -> None:
    """Attach ``object_url``, ``object_label`` (names, not ids: "job nightly-report") and
    ``diff`` (field, before, after for each changed field) to each entry, and compact
    ``before_json``/``after_json`` for values that are not field sets; the arguments in
    them redacted for ``user`` (controlplane.redaction). Three queries for a page."""

    def ids(kind: str) -> list[int]:
        return [int(e.object_id) for e in entries if e.object_type == kind and _is_id(e.object_id)]

    trigger_rows = Trigger.objects.filter(id__in=ids("trigger")).values_list(
        "id", "job_id", "job__name"
    )
    trigger_jobs = {pk: (job_id, name) for pk, job_id, name in trigger_rows}
    job_names = dict(Job.objects.filter(id__in=ids("job")).values_list("id", "name"))
    execution_jobs = dict(
        Execution.objects.filter(id__in=ids("execution")).values_list("id", "job__name")
    )
    names = {"job": job_names, "execution": execution_jobs}
    for entry in entries:
        entry.object_url = _object_url(entry, {k: v[0] for k, v in trigger_jobs.items()})
        entry.object_label = _object_label(entry, names, trigger_jobs)
        before = redaction.audit_values(entry.before, user)
        after = redaction.audit_values(entry.after, user)
        entry.diff = field_diff(before, after)
        entry.before_json = _compact_json(before)
        entry.after_json = _compact_json(after)


def _is_id(value: str) -> bool:
    # isdigit() alone lets "²" and 30-digit numbers through to an integer column.
    return value.isascii() and value.isdigit() and len(value) <= 18


def _object_label(entry: AuditEntry, names: dict, trigger_jobs: dict) -> str:
    """What the entry is about, by name; a deleted object by the name it had then."""
    kind, oid = entry.object_type, entry.object_id
    recorded = entry.before if isinstance(entry.before, dict) else entry.after
    recorded_name = recorded.get("name") if isinstance(recorded, dict) else None
    if kind == "job" and _is_id(oid):
        name = names["job"].get(int(oid)) or recorded_name
        return f"job {name}" if name else f"job #{oid}"
    if kind == "trigger" and _is_id(oid):
        job = trigger_jobs.get(int(oid))
        return f"trigger #{oid} of {job[1]}" if job else f"trigger #{oid}"
    if kind == "execution" and _is_id(oid):
        job_name = names["execution"].get(int(oid))
        return f"execution #{oid} of {job_name}" if job_name else f"execution #{oid}"
    return f"{kind} {oid}"


def field_diff(before, after) -> list[tuple[str, str, str]] | None:
    """(field, before, after) as compact JSON for each field that differs ("" for a side
    that has no such field: a creation or a deletion); None unless the recorded values
    are field sets (objects), which are then shown as they are."""
    if not isinstance(before, dict | None) or not isinstance(after, dict | None):
        return None
    if before is None and after is None:
        return None
    before, after = before or {}, after or {}
    keys = list(before) + [k for k in after if k not in before]
    return [
        (k, _compact_value(before[k]) if k in before else "",
         _compact_value(after[k]) if k in after else "")
        for k in keys
        if k not in before or k not in after or before[k] != after[k]
    ]  # fmt: skip


def _object_url(entry: AuditEntry, trigger_jobs: dict[int, int]) -> str | None:
    kind, oid = entry.object_type, entry.object_id
    if kind == "job" and _is_id(oid):
        return reverse("job-detail", args=[int(oid)])
    if kind == "execution" and _is_id(oid):
        return reverse("execution-detail", args=[int(oid)])
    if kind == "trigger" and _is_id(oid) and int(oid) in trigger_jobs:
        return reverse("job-detail", args=[trigger_jobs[int(oid)]])
    if kind == "lock":
        return f"{reverse('lock-list')}?{urlencode({'name': oid})}"
    if kind == "node":
        return reverse("node-list")
    return None


def _compact_json(value) -> str:
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, ensure_ascii=False)


def _compact_value(value) -> str:
    """A field's value in a diff: JSON, null included."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, ensure_ascii=False)
