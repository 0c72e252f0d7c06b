"""Dashboard pages for jobs and executions, and the operator actions on them.

Pages render whole for a plain request and only their fragment for htmx (polling, the
filter form, the pager). Actions are POST only, check their permission, call one audited
function of jobs/actions.py, then redirect back (PRG), or for htmx return the fragment
that changed.
"""

from __future__ import annotations

from datetime import UTC

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from controlplane import limits
from controlplane.roles import sees_tracebacks
from jobs import actions, queries
from jobs.models import Execution, Job, Trigger, database_now
from jobs.schedule import next_fire_times

REASON_MAX = 500
UPCOMING_FIRES = 5


# --- forms --------------------------------------------------------------------------


class JSONTextField(forms.CharField):
    """JSON typed into a text box; empty means None (use the job's own value)."""

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        try:
            return limits.loads(value, settings.SCHEDULER_ARGS_MAX_DEPTH)
        except limits.InputError as e:
            raise ValidationError(str(e)) from None


def _json_text_field() -> JSONTextField:
    # Four bytes of text per stored byte at most (escapes), so the stored bound decides.
    return JSONTextField(
        required=False, strip=True, max_length=4 * settings.SCHEDULER_ARGS_MAX_BYTES
    )


class RunNowForm(forms.Form):
    # The types (list, object) are checked by actions.run_now, the one place that knows.
    args = _json_text_field()
    kwargs = _json_text_field()
    reason = forms.CharField(required=False, max_length=REASON_MAX)


class UTCDateTimeField(forms.DateTimeField):
    """A datetime-local value, read as UTC whatever the active time zone."""

    widget = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")

    def to_python(self, value):
        with timezone.override(UTC):
            return super().to_python(value)


class ExecutionFilterForm(forms.Form):
    job = forms.ModelChoiceField(
        queryset=Job.objects.only("id", "name"), required=False, empty_label="any job"
    )
    state = forms.ChoiceField(choices=[("", "any state"), *Execution.State.choices], required=False)
    origin = forms.ChoiceField(
        choices=[("", "any origin"), *Execution.Origin.choices], required=False
    )
    node = forms.CharField(required=False, max_length=200, strip=True)
    created_from = UTCDateTimeField(required=False, label="Created from (UTC)")
    created_to = UTCDateTimeField(required=False, label="Created before (UTC)")
    cursor = forms.CharField(required=False, widget=forms.HiddenInput)
    limit = forms.IntegerField(
        required=False, min_value=1, max_value=queries.MAX_PAGE_SIZE, widget=forms.HiddenInput
    )

    def clean_cursor(self):
        token = self.cleaned_data["cursor"]
        if not token:
            return None
        try:
            return queries.Cursor.decode(token)
        except ValueError as e:
            raise ValidationError(str(e)) from None

    def clean(self):
        data = super().clean()
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and end <= start:
            self.add_error("created_to", "Must be after the start of the range.")
        return data

    def filters(self) -> dict:
        data = self.cleaned_data
        names = ("job", "state", "origin", "node", "created_from", "created_to")
        return {name: data[name] for name in names}


# --- jobs ---------------------------------------------------------------------------


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def job_list(request):
    jobs = queries.job_rows(Job.objects.all())
    return render(request, "jobs/job_list.html", {"jobs": jobs, "back": request.get_full_path()})


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def job_detail(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    context = {
        **_job_schedule_context(job, request.user),
        "executions": queries.recent_executions(job),
        "back": request.get_full_path(),
    }
    return render(request, "jobs/job_detail.html", context)


@require_POST
@permission_required("jobs.run_job", raise_exception=True)
def job_run(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    form = RunNowForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            execution = actions.run_now(job, request.user, data["args"], data["kwargs"],
                                        reason=data["reason"])  # fmt: skip
        except ValidationError as e:
            _add_errors(form, e)  # the errors name their fields: args, kwargs
        except actions.OverrideNotAllowed as e:
            form.add_error(None, str(e))
        else:
            messages.success(request, f"Queued a run of {job.name}: execution #{execution.pk}.")
            if _htmx_target(request) == f"run-{job.pk}":
                context = {"job": job, "queued": execution, "back": _back(request, job)}
                return _fragment(request, "jobs/_run_form.html", context)
            return redirect(_back(request, job))
    if _htmx_target(request) == f"run-{job.pk}":
        # 200, not 400: htmx 2 swaps only successful responses, and the errors must show.
        context = {"job": job, "form": form, "back": _back(request, job)}
        return render(request, "jobs/_run_form.html", context)
    context = {
        **_job_schedule_context(job, request.user),
        "executions": queries.recent_executions(job),
        "run_form": form,
        "back": _back(request, job),
    }
    return render(request, "jobs/job_detail.html", context, status=400)


def _add_errors(form, error: ValidationError) -> None:
    """Errors on the form's own fields beside them; any other (target) above the form."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, messages_ in error.message_dict.items():
        form.add_error(field if field in form.fields else None, messages_)


@require_POST
@permission_required("jobs.pause_job", raise_exception=True)
def job_pause(request, job_id: int):
    return _set_job_paused(request, get_object_or_404(Job, pk=job_id), paused=True)


@require_POST
@permission_required("jobs.pause_job", raise_exception=True)
def job_resume(request, job_id: int):
    return _set_job_paused(request, get_object_or_404(Job, pk=job_id), paused=False)


@require_POST
@permission_required("jobs.pause_job", raise_exception=True)
def trigger_pause(request, trigger_id: int):
    return _set_trigger_paused(request, _get_trigger(trigger_id), paused=True)


@require_POST
@permission_required("jobs.pause_job", raise_exception=True)
def trigger_resume(request, trigger_id: int):
    return _set_trigger_paused(request, _get_trigger(trigger_id), paused=False)


def _set_job_paused(request, job: Job, paused: bool):
    reason = _reason(request)
    if reason is None:
        return _reason_too_long(request, job)
    changed = actions.set_job_paused(job, paused, request.user, reason)
    verb = "Paused" if paused else "Resumed"
    if changed:
        messages.success(request, f"{verb} job {job.name}.")
    else:
        messages.info(request, f"Job {job.name} was already {verb.lower()}.")
    return _job_changed(request, job)


def _set_trigger_paused(request, trigger: Trigger, paused: bool):
    reason = _reason(request)
    if reason is None:
        return _reason_too_long(request, trigger.job)
    changed = actions.set_trigger_paused(trigger, paused, request.user, reason)
    verb = "Paused" if paused else "Resumed"
    name = f"trigger #{trigger.pk} of {trigger.job.name}"
    if changed:
        messages.success(request, f"{verb} {name}.")
    else:
        messages.info(request, f"The {name} was already {verb.lower()}.")
    return _job_changed(request, trigger.job)


def _job_changed(request, job: Job):
    """The job's row (jobs page) or schedule section (job page) for htmx; else PRG."""
    target = _htmx_target(request)
    if target == f"job-{job.pk}":
        row = queries.job_rows(Job.objects.filter(pk=job.pk))[0]
        context = {"job": row, "back": _back(request, job)}
        return _fragment(request, "jobs/_job.html", context)
    if target == "job-schedule":
        context = {**_job_schedule_context(job, request.user), "back": _back(request, job)}
        return _fragment(request, "jobs/_job_schedule.html", context)
    if request.htmx:
        return HttpResponseClientRedirect(_back(request, job))
    return redirect(_back(request, job))


def _reason_too_long(request, job: Job):
    messages.error(request, f"The reason is too long (at most {REASON_MAX} characters).")
    if request.htmx:
        return HttpResponseClientRedirect(_back(request, job))
    return redirect(_back(request, job))


def _job_schedule_context(job: Job, user) -> dict:
    """The job, its triggers with their next fire times, and its schedule history."""
    triggers = list(job.triggers.order_by("id"))
    now = database_now()
    for trigger in triggers:
        trigger.summary = queries.summary(trigger)
        try:
            trigger.upcoming = next_fire_times(trigger, now, UPCOMING_FIRES)
        except ValueError as e:
            trigger.upcoming, trigger.schedule_error = [], str(e)
    return {
        "job": job,
        "triggers": triggers,
        "history": queries.schedule_history(job, [t.pk for t in triggers], user),
        "history_limit": queries.SCHEDULE_HISTORY,
    }


def _get_trigger(trigger_id: int) -> Trigger:
    return get_object_or_404(Trigger.objects.select_related("job"), pk=trigger_id)


# --- executions ---------------------------------------------------------------------


@require_GET
@permission_required("jobs.view_execution", raise_exception=True)
@vary_on_headers("HX-Request")
def execution_list(request):
    form = ExecutionFilterForm(request.GET)
    page = None
    if form.is_valid():
        limit = form.cleaned_data["limit"] or queries.PAGE_SIZE
        executions = queries.filter_executions(**form.filters())
        page = queries.execution_page(executions, form.cleaned_data["cursor"], limit)
    context = {"form": form, "page": page}
    if _htmx_target(request) == "executions":
        return render(request, "jobs/_execution_table.html", context)
    return render(request, "jobs/execution_list.html", context)


@require_GET
@permission_required("jobs.view_execution", raise_exception=True)
@vary_on_headers("HX-Request")
def execution_detail(request, execution_id: int):
    execution = _get_execution(execution_id)
    context = {
        "execution": execution,
        "back": request.get_full_path(),
        "show_traceback": sees_tracebacks(request.user),
    }
    if _htmx_target(request) == "execution-status":
        return render(request, "jobs/_execution_status.html", context)
    context["chain"] = queries.execution_chain(execution)
    return render(request, "jobs/execution_detail.html", context)


@require_POST
@permission_required("jobs.rerun_execution", raise_exception=True)
def execution_rerun(request, execution_id: int):
    original = _get_execution(execution_id)
    reason = _reason(request)
    landing = original
    if reason is None:
        messages.error(request, f"The reason is too long (at most {REASON_MAX} characters).")
    else:
        try:
            landing = actions.rerun(original, request.user, reason)
        except ValidationError as e:
            messages.error(request, "Cannot rerun: " + " ".join(e.messages))
        else:
            messages.success(request, f"Rerun of #{original.pk} queued as #{landing.pk}.")
    url = reverse("execution-detail", args=[landing.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _get_execution(execution_id: int) -> Execution:
    execution = get_object_or_404(
        Execution.objects.select_related("job", "trigger", "requested_by", "retry_of", "rerun_of"),
        pk=execution_id,
    )
    queries.with_timings([execution])
    return execution


# --- helpers ------------------------------------------------------------------------


def _htmx_target(request) -> str | None:
    """The id of the element an htmx request will swap, or None for a plain request.

    A history restore wants the whole page, whatever element asked.
    """
    if not request.htmx or request.htmx.history_restore_request:
        return None
    target = request.htmx.target or ""
    return target.rpartition("#")[2] or None  # htmx 4 sends "tag#id", htmx 2 the id


def _fragment(request, template: str, context: dict):
    """A fragment answering an htmx action: it shows (and so consumes) the messages."""
    return render(request, template, {**context, "show_messages": True})


def _back(request, job: Job) -> str:
    """Where a form posted from (its ``next`` field) if it is ours, else the job's page."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("job-detail", args=[job.pk])


def _reason(request) -> str | None:
    """The optional reason an operator gave; None when it is too long."""
    reason = request.POST.get("reason", "").strip()
    return reason if len(reason) <= REASON_MAX else None
