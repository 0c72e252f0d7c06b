"""A run's own story, in order: created (by whom, or by which trigger), claimed, started,
its events (progress milestones, a lost lock, a cancel request, notes), the retry or
rerun that followed it, and how it finished.

Composed from what is already recorded: the execution row's times, its
``ExecutionEvent`` rows and the executions linked to it by ``retry_of`` and
``rerun_of``. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from controlplane.redaction import text_for_user
from jobs.models import Execution, ExecutionEvent

#: Every kind of entry: the row's own steps, its events' kinds, what followed it.
KINDS = [
    "created", "claimed", "started", *ExecutionEvent.Kind.values, "retried", "rerun",
    "recovered", "finished",
]  # fmt: skip

#: Most events read for one timeline; the rest are counted, not shown.
MAX_EVENTS = 500

# Ties (one transaction records a failure and queues its retry) keep the story's order.
_RANK = {"claimed": 1, "started": 2, "event": 3, "finished": 4, "followed": 5}


@dataclass(frozen=True)
class Entry:
    at: datetime
    #: One of KINDS.
    kind: str
    #: Who or what: a user name, "trigger #3", a node or worker id.
    actor: str
    message: str
    #: The execution this entry links to (a retry, a rerun), or None.
    execution_id: int | None = None
    #: That execution's state, or this one's for "finished".
    state: str = ""

    @property
    def label(self) -> str:
        return self.kind.replace("_", " ")


@dataclass(frozen=True)
class Timeline:
    entries: list[Entry]
    #: Events left out past MAX_EVENTS.
    events_left_out: int = 0


def timeline(execution: Execution, user) -> Timeline:
    """The timeline of ``execution``; event messages redacted for ``user``."""
    found: list[tuple[tuple, Entry]] = []

    def add(rank: str, entry: Entry) -> None:
        if entry.at is not None:
            found.append(((entry.at, _RANK[rank], len(found)), entry))

    node = execution.node
    if execution.dispatched_at:
        claimed = f"Claimed by {node}" if node else "Claimed"
        add("claimed", Entry(execution.dispatched_at, "claimed", node, claimed))
    if execution.started_at:
        fence = f" with fencing token {execution.fence}" if execution.fence is not None else ""
        add("started", Entry(execution.started_at, "started", node, f"Started{fence}"))
    events = list(execution.events.order_by("at", "id")[: MAX_EVENTS + 1])
    for event in events[:MAX_EVENTS]:
        message = text_for_user(event.message, user)
        add("event", Entry(event.at, event.kind, event.actor, message))
    if execution.finished_at:
        add("finished", _finished(execution, user))
    for linked in _followers(execution):
        add("followed", linked)
    left_out = execution.events.count() - MAX_EVENTS if len(events) > MAX_EVENTS else 0
    # Created comes first: nothing happens to a run before its row exists. (created_at is
    # its INSERT's statement time; a time that a later statement of the same transaction
    # sets to now(), the transaction's start, can read earlier.)
    ordered = [entry for _key, entry in sorted(found, key=lambda pair: pair[0])]
    return Timeline([_created(execution), *ordered], left_out)


def _created(execution: Execution) -> Entry:
    origin, who = execution.origin, _username(execution)
    reason = f": {execution.reason}" if execution.reason else ""
    if origin == Execution.Origin.SCHEDULE:
        if execution.trigger_id is None:
            actor, message = "a deleted trigger", "Scheduled fire"
        else:
            actor = f"trigger #{execution.trigger_id}"
            message = f"Scheduled fire of trigger #{execution.trigger_id}"
            if execution.trigger is not None:
                message += f" ({execution.trigger.describe()})"
    elif origin == Execution.Origin.MANUAL:
        actor, message = who, f"Run now{reason}"
    elif origin == Execution.Origin.RERUN:
        actor, message = who, f"Rerun of #{execution.rerun_of_id}{reason}"
    elif origin == Execution.Origin.RETRY:
        actor = "scheduler"
        message = f"Attempt {execution.attempt}, a retry of #{execution.retry_of_id}"
    else:  # recovery
        actor = "scheduler"
        message = f"Recovery of #{execution.rerun_of_id}, whose runner died"
    return Entry(execution.created_at, "created", actor, message)


def _finished(execution: Execution, user) -> Entry:
    state = execution.state
    label = Execution.State(state).label if state in Execution.State.values else state
    actor, detail = execution.node, ""
    if state == Execution.State.CANCELLED and execution.cancel_requested_by:
        actor = execution.cancel_requested_by
        detail = execution.cancel_reason
    elif state == Execution.State.SKIPPED:
        detail = _first_line(execution.note)
    elif state != Execution.State.SUCCEEDED:
        detail = text_for_user(_first_line(execution.error), user)
    message = f"{label}: {detail}" if detail else label
    return Entry(execution.finished_at, "finished", actor, message, state=state)


def _followers(execution: Execution) -> list[Entry]:
    """The next attempt of the same fire, and the reruns and recoveries of this one."""
    first = execution.retry_of_id or execution.pk
    retries = Execution.objects.filter(retry_of_id=first, attempt=execution.attempt + 1)
    entries = []
    for retry in retries.order_by("id"):
        message = f"Retried as #{retry.pk} (attempt {retry.attempt})"
        entries.append(
            Entry(retry.created_at, "retried", "scheduler", message, retry.pk, retry.state)
        )
    for rerun in execution.reruns.select_related("requested_by").order_by("id"):
        if rerun.origin == Execution.Origin.RECOVERY:
            kind, actor, message = "recovered", "scheduler", f"Recovered as #{rerun.pk}"
        else:
            kind, actor, message = "rerun", _username(rerun), f"Rerun as #{rerun.pk}"
        entries.append(Entry(rerun.created_at, kind, actor, message, rerun.pk, rerun.state))
    return entries


def _username(execution: Execution) -> str:
    user = execution.requested_by
    return user.get_username() if user is not None else ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""
