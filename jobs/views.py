"""Dashboard pages for jobs and executions, and the operator actions on them.

Pages render whole for a plain request and only their fragment for htmx (polling, the
filter form, the pager). Actions are POST only, check their permission, call one audited
function of jobs/actions.py, then redirect back (PRG), or for htmx return the fragment
that changed.
"""

from __future__ import annotations

import re
from datetime import UTC

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import Http404, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from controlplane import limits
from controlplane.redaction import text_for_user
from controlplane.roles import sees_tracebacks
from jobs import (
    actions,
    bulk_views,
    catalogue,
    queries,
    registry,
    runlog,
    search,
    timeline,
    trend_views,
)
from jobs.models import Execution, ExecutionEvent, Job, Trigger, database_now
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
    # A searchable picker (a text box with suggestions from /jobs/names/): a job's name,
    # or its id, so links like ?job=12 keep working. Resolved to the Job in clean_job.
    job = forms.CharField(required=False, max_length=200, strip=True)
    state = forms.ChoiceField(choices=[("", "any state"), *Execution.State.choices], required=False)
    origin = forms.ChoiceField(
        choices=[("", "any origin"), *Execution.Origin.choices], required=False
    )
    node = forms.CharField(required=False, max_length=200, strip=True, label="Node (id or prefix)")
    q = forms.CharField(
        required=False,
        min_length=search.Q_MIN,
        max_length=search.Q_MAX,
        strip=True,
        label="Error or arguments contain",
    )
    since = forms.CharField(required=False, max_length=10, strip=True, widget=forms.HiddenInput)
    created_from = UTCDateTimeField(required=False, label="Created from (UTC)")
    created_to = UTCDateTimeField(required=False, label="Created before (UTC)")
    cursor = forms.CharField(required=False, widget=forms.HiddenInput)
    limit = forms.IntegerField(
        required=False, min_value=1, max_value=queries.MAX_PAGE_SIZE, widget=forms.HiddenInput
    )

    def clean_job(self) -> Job | None:
        value = self.cleaned_data["job"]
        if not value:
            return None
        match = Q(name=value)
        if re.fullmatch(r"[0-9]{1,18}", value):  # an id fits a bigint
            match |= Q(pk=int(value))
        # One query; a job named "12" wins over the job whose id is 12.
        found = list(Job.objects.only("id", "name").filter(match)[:2])
        job = next((j for j in found if j.name == value), found[0] if found else None)
        if job is None:
            raise ValidationError(f"No job named {value!r} (or with that id).")
        return job

    def clean_cursor(self):
        token = self.cleaned_data["cursor"]
        if not token:
            return None
        try:
            return queries.Cursor.decode(token)
        except ValueError as e:
            raise ValidationError(str(e)) from None

    def clean_since(self):
        text = self.cleaned_data["since"]
        if not text:
            return None
        try:
            return queries.parse_window(text)
        except ValueError as e:
            raise ValidationError(str(e)) from None

    def clean(self):
        data = super().clean()
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and end <= start:
            self.add_error("created_to", "Must be after the start of the range.")
        return data

    FILTERS = ("job", "state", "origin", "node", "created_from", "created_to", "since", "q")

    def filters(self) -> dict:
        data = self.cleaned_data
        return {name: data[name] for name in self.FILTERS}

    def keep(self, user):
        """The recheck of a text search's rows for ``user`` (search.visible_match), or
        None when every row the SQL finds may be shown."""
        text = self.cleaned_data.get("q")
        if text and search.needs_recheck(user):
            return lambda e: search.visible_match(e, text, user)
        return None


# --- jobs ---------------------------------------------------------------------------


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def job_detail(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    context = {
        **_job_schedule_context(job, request.user),
        **trend_views.job_page_context(job),
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
        **trend_views.job_page_context(job),
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
    """The job's row (jobs page: jobs/job_list.py) or schedule section (job page) for
    htmx; else PRG."""
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
    context = {"form": form}
    if form.is_valid():
        limit = form.cleaned_data["limit"] or queries.PAGE_SIZE
        executions = queries.filter_executions(**form.filters()).annotate(
            error_first_line=queries.ERROR_FIRST_LINE
        )
        keep = form.keep(request.user)
        page = queries.execution_page(executions, form.cleaned_data["cursor"], limit, keep)
        queries.with_error_lines(page.rows, request.user)
        context.update(bulk_views.bulk_context(request, form))
    context["page"] = page
    if _htmx_target(request) == "executions":
        return render(request, "jobs/_execution_table.html", context)
    return render(request, "jobs/execution_list.html", context)


@require_GET
@permission_required("jobs.view_execution", raise_exception=True)
@vary_on_headers("HX-Request")
def execution_detail(request, execution_id: int):
    # Read first: a log read after a finished state has every line (the engine writes the
    # last lines no later than the state), so the page can stop following it.
    execution = _get_execution(execution_id)
    target = _htmx_target(request)
    if target == "execution-status":
        context = _status_context(request, execution)
        return render(request, "jobs/_execution_status.html", context)
    if target == "execution-timeline":
        context = _timeline_context(request, execution)
        return render(request, "jobs/_execution_timeline.html", context)
    if target == "execution-chain":
        context = {"execution": execution, "chain": queries.execution_chain(execution)}
        return render(request, "jobs/_execution_chain.html", context)
    lines, total = runlog.tail(execution)
    context = {
        **_status_context(request, execution),
        **_timeline_context(request, execution),
        "chain": queries.execution_chain(execution),
        "log_lines": runlog.shown_to(lines, request.user),
        "log_total": total,
        "after": lines[-1].seq if lines else -1,
        "more": False,
        "finished": execution.is_finished,
        "late_output_states": LATE_OUTPUT_STATES,
    }
    return render(request, "jobs/execution_detail.html", context)


# A run recorded in one of these states while its inline thread went on (past its
# timeout, past the cancel grace) can still add lines: what it prints until it returns.
LATE_OUTPUT_STATES = (Execution.State.TIMED_OUT, Execution.State.CANCELLED)


class LogAfterForm(forms.Form):
    #: The seq of the last line shown; -1 when none is.
    after = forms.IntegerField(min_value=-1, max_value=2**31 - 2)


@require_GET
@permission_required("jobs.view_execution", raise_exception=True)
@vary_on_headers("HX-Request")
def execution_log(request, execution_id: int):
    """The log lines after ``?after=<seq>`` and the follower that asks for the next ones:
    the execution page's live log (an htmx fragment; a plain request goes to the page)."""
    execution = _get_execution(execution_id)  # the state first: see execution_detail
    form = LogAfterForm(request.GET)
    if not request.htmx:
        return redirect(reverse("execution-detail", args=[execution.pk]) + "#execution-log")
    if not form.is_valid():
        return HttpResponseBadRequest("after: " + " ".join(form.errors.get("after", [])))
    after = form.cleaned_data["after"]
    found = runlog.lines_from(execution, after + 1, runlog.POLL_LINES)
    context = {
        "execution": execution,
        "lines": runlog.shown_to(found.lines, request.user),
        "after": after if found.last_seq is None else found.last_seq,
        "more": found.more,
        "finished": execution.is_finished,
        "late_output_states": LATE_OUTPUT_STATES,
    }
    return render(request, "jobs/_execution_log_lines.html", context)


@require_GET
@permission_required("jobs.view_execution", raise_exception=True)
def execution_log_text(request, execution_id: int):
    """The whole log as a plain-text download, streamed, redacted like the page."""
    execution = get_object_or_404(Execution.objects.only("id"), pk=execution_id)
    response = StreamingHttpResponse(
        runlog.as_text(execution, request.user), content_type="text/plain; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="execution-{execution.pk}-log.txt"'
    return response


class CancelForm(forms.Form):
    reason = forms.CharField(max_length=REASON_MAX, strip=True)


@require_POST
@permission_required("jobs.cancel_execution", raise_exception=True)
def execution_cancel(request, execution_id: int):
    execution = _get_execution(execution_id)
    form = CancelForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, f"To cancel a run, give a reason (at most {REASON_MAX} characters)."
        )
    else:
        asked_before = execution.cancel_requested_at is not None
        try:
            execution = actions.cancel_execution(
                execution, request.user, form.cleaned_data["reason"]
            )
        except Execution.DoesNotExist:
            raise Http404("No such execution.") from None
        except ValidationError as e:  # CannotCancel (finished) included
            messages.error(request, "Cannot cancel: " + " ".join(e.messages))
        else:
            messages.success(request, _cancel_message(execution, asked_before))
    if _htmx_target(request) == "execution-status":
        context = _status_context(request, _get_execution(execution.pk))
        return _fragment(request, "jobs/_execution_status.html", context)
    return redirect("execution-detail", execution.pk)


def _cancel_message(execution: Execution, asked_before: bool) -> str:
    if execution.state == Execution.State.CANCELLED:
        return f"Cancelled #{execution.pk}: it will not run."
    if asked_before:
        return f"#{execution.pk} was already asked to stop by {execution.cancel_requested_by}."
    return f"Asked #{execution.pk} to stop."


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


def _status_context(request, execution: Execution) -> dict:
    """What _execution_status.html shows: state, times, progress, lost lock, cancel."""
    user = request.user
    lock_lost = None
    if execution.lock_lost_at is not None:
        events = execution.events.filter(kind=ExecutionEvent.Kind.LOCK_LOST)
        lock_lost = events.order_by("at", "id").last()
        if lock_lost is not None:
            lock_lost.message = text_for_user(lock_lost.message, user)
    return {
        "execution": execution,
        "back": request.get_full_path(),
        "show_traceback": sees_tracebacks(user),
        "progress": _progress(execution, user),
        "lock_lost": lock_lost,
        "may_cancel": (
            user.has_perm("jobs.cancel_execution")
            and not execution.is_finished
            and execution.cancel_requested_at is None
        ),
        "cancel_grace": queries.duration_text(settings.SCHEDULER_CANCEL_GRACE),
    }


def _timeline_context(request, execution: Execution) -> dict:
    return {"execution": execution, "timeline": timeline.timeline(execution, request.user)}


def _progress(execution: Execution, user) -> dict | None:
    """The latest progress report for the bar, or None when the run reported none."""
    if execution.progress_at is None or execution.progress_done is None:
        return None
    done, total = execution.progress_done, execution.progress_total
    percent = None
    if total is not None:
        # A total of 0 is a finished empty task; a done past the total shows full.
        percent = 100 if total <= 0 else min(100, int(done * 100 / total))
    return {
        "done": done,
        "total": total,
        # <progress> needs value <= max; a total of 0 shows a full bar.
        "value": repr(min(done, total)) if total else "1",
        "max": repr(total) if total else "1",
        "percent": percent,
        "done_text": _number(done),
        "total_text": None if total is None else _number(total),
        "message": text_for_user(execution.progress_message, user),
        "at": execution.progress_at,
    }


def _number(value: float) -> str:
    """12.0 as 12, 12.345 as 12.35: what a person counting items expects."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


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


# --- targets --------------------------------------------------------------------------


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def target_list(request):
    context = {
        "targets": catalogue.catalogue(),
        "unregistered": sorted(catalogue.unregistered_targets().items()),
    }
    return render(request, "jobs/target_list.html", context)


@require_GET
@permission_required("jobs.view_job", raise_exception=True)
def target_help(request):
    """The description and parameters of the target named by ``?target=``, for job forms."""
    name = request.GET.get("target", "")
    try:
        target = catalogue.entry(name) if name else None
    except registry.UnknownTarget:
        target = None
    return render(request, "jobs/_target_help.html", {"target": target, "name": name})
