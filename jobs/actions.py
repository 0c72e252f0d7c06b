"""Operator actions on jobs, triggers and executions; each one is audited.

The dashboard, the admin and the API call these; none of them changes a trigger's
schedule (next_fire_at), so a manual run or a rerun never disturbs it.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models.functions import Now

from controlplane import audit
from controlplane.roles import is_schedule_editor
from jobs import claims, registry, secrets
from jobs.models import (
    Execution,
    ExecutionEvent,
    Job,
    Trigger,
    check_target_call,
    queue_manual_run,
    validate_args,
    validate_kwargs,
)


class OverrideNotAllowed(PermissionDenied):
    """A run-time override the user's role may not make; the message says which."""


@transaction.atomic
def run_now(job: Job, by, args=None, kwargs=None, reason: str = "") -> Execution:
    """Queue a manual run of ``job``, optionally with other arguments.

    Given args or kwargs replace the job's own. They must fit the target's signature, and
    below the admin role they may change only the parameters the target declares
    overridable, and carry no secret reference (OverrideNotAllowed otherwise).
    """
    errors = {}
    checks = (("args", args, validate_args), ("kwargs", kwargs, validate_kwargs))
    for name, value, validate in checks:
        if value is not None:
            try:
                validate(value)
            except ValidationError as e:
                errors[name] = e.messages
    if errors:
        raise ValidationError(errors)
    run_args = job.args if args is None else args
    run_kwargs = job.kwargs if kwargs is None else kwargs
    if job.target:
        if not registry.is_registered(job.target):
            raise ValidationError({"target": f"{job.target!r} is not a registered job target."})
        check_target_call(job.target, run_args, run_kwargs)
    if (args is not None or kwargs is not None) and not _may_override_anything(by):
        _check_override(job, run_args, run_kwargs)
    execution = queue_manual_run(job, user=_user(by), args=args, kwargs=kwargs, reason=reason)
    audit.record(
        by, "job.run_now", "job", job.pk, reason,
        after={"execution": execution.pk, "args": execution.args, "kwargs": execution.kwargs},
    )  # fmt: skip
    return execution


@transaction.atomic
def rerun(original: Execution, by, reason: str = "") -> Execution:
    """Run an execution again: a new row with its arguments and fire time, linked to it."""
    execution = queue_rerun(original, by, reason)
    audit.record(by, "execution.rerun", "execution", original.pk, reason,
                 after={"execution": execution.pk})  # fmt: skip
    return execution


def queue_rerun(original: Execution, by, reason: str = "") -> Execution:
    """The rerun itself, unaudited: rerun() audits it, a bulk rerun (jobs/bulk.py) audits
    all of its reruns in one entry."""
    if original.state in (Execution.State.PENDING, Execution.State.DISPATCHED):
        raise ValidationError({"execution": f"#{original.pk} has not run yet ({original.state})."})
    if original.job.target:
        # Its arguments were checked when it was queued; the target may have changed since.
        check_target_call(original.job.target, original.args, original.kwargs)
    execution = Execution.objects.create(
        job=original.job,
        trigger=original.trigger,
        scheduled_for=original.scheduled_for,
        origin=Execution.Origin.RERUN,
        state=Execution.State.PENDING,
        args=original.args,
        kwargs=original.kwargs,
        rerun_of=original,
        requested_by=_user(by),
        reason=reason,
    )
    return execution


class CannotCancel(ValidationError):
    """A cancel of an execution that has already finished."""


# A run not yet started is cancelled outright: it never starts, since a node confirms a
# start only from pending/dispatched (claims.CONFIRM_START), and this UPDATE and that one
# lock the same row, so whichever commits first wins and the other finds out.
CANCEL_UNSTARTED = """
UPDATE jobs_execution
SET state = 'cancelled', finished_at = now(), cancel_requested_at = now(),
    cancel_requested_by = %(by)s, cancel_reason = %(reason)s,
    error = format('cancelled by %%s: %%s', %(by)s::text, %(reason)s::text)
WHERE id = %(id)s AND state IN ('pending', 'dispatched')
RETURNING id
"""

# A running one is asked to stop: its node or worker sees the request (NOTIFY, and its
# own polling), the job can stop cooperatively, and past SCHEDULER_CANCEL_GRACE the run
# is recorded cancelled whatever the job does. The guard is wrapped in IS TRUE so that the
# row is found by the primary key (see claims.CLAIM_ON_WORKER): written plainly, a cancel
# read every unfinished run when the statistics said there were none.
REQUEST_CANCEL = """
UPDATE jobs_execution
SET cancel_requested_at = now(), cancel_requested_by = %(by)s, cancel_reason = %(reason)s
WHERE id = %(id)s AND (state = 'running' AND cancel_requested_at IS NULL) IS TRUE
RETURNING id
"""


@transaction.atomic
def cancel_execution(execution: Execution, by, reason: str) -> Execution:
    """Cancel a run, with a reason; audited.

    Pending or dispatched (not started): cancelled at once, and it never starts; a
    pending retry's chain stops there. Running: cancellation is requested, the job can
    stop cooperatively, and past the grace it is recorded cancelled. Finished: refused
    with CannotCancel. Cancelling a run already asked to stop changes nothing more.
    """
    before, after, _changed = request_cancel(execution, by, reason)
    audit.record(by, "execution.cancel", "execution", execution.pk, reason, {"state": before},
                 after)  # fmt: skip
    execution.refresh_from_db()
    return execution


def request_cancel(execution: Execution, by, reason: str) -> tuple[str, dict, bool]:
    """The cancel itself, unaudited (cancel_execution() audits it, a bulk cancel audits
    all of its cancels in one entry); call it inside a transaction.

    Returns the state before, what changed (for the audit entry) and whether this call
    changed anything (False for a run already asked to stop).
    """
    if not reason or not reason.strip():
        raise ValidationError({"reason": "A reason is required to cancel a run."})
    who = audit.actor_of(by)[1]
    changed = True
    params = {"id": execution.pk, "by": who, "reason": reason.strip()}
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM jobs_execution WHERE id = %s FOR UPDATE", [execution.pk])
        row = cursor.fetchone()
        if row is None:
            raise Execution.DoesNotExist(f"there is no execution #{execution.pk}")
        before = row[0]
        if before in Execution.FINAL_STATES:
            raise CannotCancel({"execution": f"#{execution.pk} has already finished ({before})."})
        if before == Execution.State.RUNNING:
            cursor.execute(REQUEST_CANCEL, params)
            if cursor.fetchone() is not None:
                ExecutionEvent.objects.create(
                    execution_id=execution.pk,
                    kind=ExecutionEvent.Kind.CANCEL_REQUESTED,
                    actor=who,
                    message=reason.strip(),
                )
                cursor.execute(claims.NOTIFY_RUN_SIGNAL, [str(execution.pk)])
            else:
                changed = False  # already asked to stop
        else:
            cursor.execute(CANCEL_UNSTARTED, params)
    if before == Execution.State.RUNNING:
        after = {"state": before, "cancel_requested": True}
    else:
        after = {"state": "cancelled"}
    return before, after, changed


def set_trigger_paused(trigger: Trigger, paused: bool, by, reason: str = "") -> bool:
    """Pause or resume a trigger; returns whether anything changed."""
    return _set_paused(Trigger, trigger, paused, by, reason, "trigger")


def set_job_paused(job: Job, paused: bool, by, reason: str = "") -> bool:
    """Pause or resume a job (all its triggers); returns whether anything changed."""
    return _set_paused(Job, job, paused, by, reason, "job")


def _set_paused(model, obj, paused: bool, by, reason: str, kind: str) -> bool:
    with transaction.atomic():
        # A conditional UPDATE: two operators pressing the same button audit it once.
        rows = model.objects.filter(pk=obj.pk, paused=not paused)
        changed = rows.update(paused=paused, updated_at=Now())
        if changed:
            action = "pause" if paused else "resume"
            audit.record(by, f"{kind}.{action}", kind, obj.pk, reason,
                         {"paused": not paused}, {"paused": paused})  # fmt: skip
    obj.paused = paused
    obj.refresh_from_db(fields=["updated_at"])
    return bool(changed)


def _user(by):
    return None if by is None or isinstance(by, str) else by


def _may_override_anything(by) -> bool:
    # A process or a command (a string, or None) acts with the code's own authority.
    return by is None or isinstance(by, str) or is_schedule_editor(by)


def _check_override(job: Job, args: list, kwargs: dict) -> None:
    """Refuse what an operator may not change: parameters the target does not declare
    overridable (every parameter, for a Celery task job), and secret references."""
    if not job.target:
        if args != job.args or kwargs != job.kwargs:
            raise OverrideNotAllowed(
                f"Only a schedule editor (admin) may override the arguments of {job.name}, "
                "a Celery task job."
            )
        return
    target = registry.get_target(job.target)
    changed = registry.overridden(target, (job.args, job.kwargs), (args, kwargs))
    refused = sorted(changed - target.overridable)
    if refused:
        may = ", ".join(sorted(target.overridable)) or "nothing"
        raise OverrideNotAllowed(
            f"Only a schedule editor (admin) may override {', '.join(refused)} of {job.name}; "
            f"an operator may override: {may}."
        )
    values, _errors = registry.bind(target, args, kwargs)
    if any(True for _ in secrets.references([values[name] for name in changed])):
        raise OverrideNotAllowed("Only a schedule editor (admin) may pass secret references.")
