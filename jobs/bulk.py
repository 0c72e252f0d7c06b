"""Bulk reruns and cancels of executions, for the dashboard and the API.

Executions are picked by id, or by the executions list's own filters (the same
queries.filter_executions, with the same redaction-aware text search). Each one is
acted on by the single-execution code of jobs/actions.py (queue_rerun, request_cancel),
in batches of BATCH_SIZE, one transaction each, so a large bulk action never holds
thousands of row locks at once. An execution that cannot take the action (a finished
run cannot be cancelled, a pending one not rerun) is counted and reported, not an error.
The whole action is ONE audit entry naming every execution acted on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from controlplane import audit
from jobs import actions, queries, search
from jobs.models import Execution

ACTIONS = ("rerun", "cancel")
#: The permission each action needs, as its single-execution form does.
PERMISSIONS = {"rerun": "jobs.rerun_execution", "cancel": "jobs.cancel_execution"}
BATCH_SIZE = 500


class TooMany(ValidationError):
    """More executions than SCHEDULER_BULK_LIMIT: refused, and nothing is done."""

    def __init__(self, count: int, limit: int):
        self.count, self.limit = count, limit
        super().__init__(
            f"{count:,} executions match; a bulk action acts on at most {limit:,} "
            "(SCHEDULER_BULK_LIMIT). Narrow the selection and act in parts."
        )


@dataclass
class Selection:
    """The executions a bulk action would act on (ids, newest first for a filter)."""

    ids: list[int]
    missing: list[int] = field(default_factory=list)  # asked for by id, not found

    @property
    def matched(self) -> int:
        return len(self.ids)


@dataclass
class Outcome:
    action: str
    matched: int
    acted: list[int] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # a rerun's new executions
    not_acted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    missing: list[int] = field(default_factory=list)
    audit_entry: int | None = None

    @property
    def not_acted_count(self) -> int:
        return sum(len(ids) for ids in self.not_acted.values())

    def summary(self) -> str:
        """One sentence for the dashboard's message."""
        verb = {"rerun": "Reran", "cancel": "Cancelled"}[self.action]
        text = f"{verb} {self.acted_count:,} of {self.matched:,} executions."
        for why, ids in self.not_acted.items():
            text += f" {len(ids):,} not: {why}."
        if self.missing:
            text += f" {len(self.missing):,} asked for do not exist."
        return text

    @property
    def acted_count(self) -> int:
        return len(self.acted)


def limit() -> int:
    return settings.SCHEDULER_BULK_LIMIT


def by_ids(ids: list[int]) -> Selection:
    """The executions with these ids (duplicates once); the ones that do not exist are
    reported as missing. Raises TooMany past the limit."""
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > limit():
        raise TooMany(len(wanted), limit())
    found = set(Execution.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    return Selection(
        ids=[pk for pk in wanted if pk in found], missing=[pk for pk in wanted if pk not in found]
    )


def by_filter(filters: dict, user) -> Selection:
    """The executions the list shows ``user`` for these filters (queries.filter_executions
    arguments). Raises TooMany, naming how many match, past the limit."""
    ids = matching_ids(filters, user, limit() + 1)
    if len(ids) > limit():
        raise TooMany(count_matching(filters, user), limit())
    return Selection(ids=ids)


def matching_ids(filters: dict, user, at_most: int) -> list[int]:
    """Ids of up to ``at_most`` executions matching ``filters`` as ``user`` sees them,
    newest first. A text search's rows are checked again below the admin role, as the
    list does: a redacted value selects nothing."""
    qs = queries.filter_executions(**filters).order_by("-created_at", "-id")
    text = filters.get("q")
    if not (text and search.needs_recheck(user)):
        return list(qs.values_list("pk", flat=True)[:at_most])
    ids = []
    for execution in qs.only("pk", "error", "args", "kwargs").iterator(chunk_size=1000):
        if search.visible_match(execution, text, user):
            ids.append(execution.pk)
            if len(ids) >= at_most:
                break
    return ids


def count_matching(filters: dict, user) -> int:
    """How many executions match ``filters`` as ``user`` sees them (for the refusal's
    message: it runs only when more than the limit match)."""
    qs = queries.filter_executions(**filters)
    text = filters.get("q")
    if not (text and search.needs_recheck(user)):
        return qs.count()
    rows = qs.only("pk", "error", "args", "kwargs").iterator(chunk_size=1000)
    return sum(1 for execution in rows if search.visible_match(execution, text, user))


def run(action: str, selection: Selection, by, reason: str, how: dict) -> Outcome:
    """Rerun or cancel every selected execution; one audit entry for all of them.

    ``how`` says how they were selected ({"ids": [...]} or {"filter": {...}}) for the
    audit entry. The entry is written even when a batch fails part-way, naming what was
    done before the failure.
    """
    if action not in ACTIONS:
        raise ValidationError({"action": f"Unknown action {action!r}: rerun or cancel."})
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "A reason is required for a bulk action."})
    outcome = Outcome(action=action, matched=selection.matched, missing=selection.missing)
    act = _rerun_one if action == "rerun" else _cancel_one
    failure = None
    try:
        for start in range(0, len(selection.ids), BATCH_SIZE):
            batch = selection.ids[start : start + BATCH_SIZE]
            with transaction.atomic():
                rows = Execution.objects.select_related("job").in_bulk(batch)
                for pk in batch:
                    execution = rows.get(pk)
                    if execution is None:
                        outcome.not_acted["it no longer exists"].append(pk)
                        continue
                    act(execution, by, reason, outcome)
    except Exception as e:
        failure = f"{type(e).__name__}: {e}"
        raise
    finally:
        outcome.audit_entry = _audit(action, by, reason, how, outcome, failure).pk
    return outcome


def _rerun_one(execution: Execution, by, reason: str, outcome: Outcome) -> None:
    try:
        new = actions.queue_rerun(execution, by, reason)
    except ValidationError as e:
        if execution.state in (Execution.State.PENDING, Execution.State.DISPATCHED):
            why = "it has not run yet"
        else:
            why = " ".join(e.messages)
        outcome.not_acted[why].append(execution.pk)
    else:
        outcome.acted.append(execution.pk)
        outcome.created.append(new.pk)


def _cancel_one(execution: Execution, by, reason: str, outcome: Outcome) -> None:
    try:
        _before, _after, changed = actions.request_cancel(execution, by, reason)
    except actions.CannotCancel:
        outcome.not_acted["it has already finished"].append(execution.pk)
    except Execution.DoesNotExist:
        outcome.not_acted["it no longer exists"].append(execution.pk)
    else:
        if changed:
            outcome.acted.append(execution.pk)
        else:
            outcome.not_acted["it was already asked to stop"].append(execution.pk)


def _audit(action: str, by, reason: str, how: dict, outcome: Outcome, failure: str | None):
    after = {
        "matched": outcome.matched,
        "acted": outcome.acted,
        "not_acted": dict(outcome.not_acted),
    }
    if outcome.created:
        after["created"] = outcome.created
    if outcome.missing:
        after["missing"] = outcome.missing
    if failure:
        after["failed"] = failure
    return audit.record(by, f"execution.bulk_{action}", "execution", "bulk", reason, how, after)
