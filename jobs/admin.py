"""The admin: define jobs and their schedules; executions are read-only history.

Each trigger shows its schedule in words and its next five fire times, in its own time
zone and in UTC (one column when the zone is UTC), updated while it is typed. A trigger
form shows only its kind's fields and reads its date-times in its own zone (jobs.forms).
Every schedule edit made here (adding, changing or deleting a job or a
trigger) writes an audit entry with the before/after of the edited fields; the pause,
resume, run-now and cancel actions call jobs.actions, which audit themselves.
"""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseBadRequest
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from controlplane import audit, redaction
from controlplane.admin import ReadOnlyAdmin, redacted_field
from controlplane.roles import is_schedule_editor, sees_tracebacks
from jobs.actions import (
    CannotCancel,
    cancel_execution,
    run_now,
    set_job_paused,
    set_trigger_paused,
)
from jobs.describe import describe_schedule
from jobs.edits import (
    JOB_FIELDS,
    TRIGGER_FIELDS,
    changes,
    job_snapshot_with_triggers,
    locked_snapshots,
    snapshot,
)
from jobs.forms import JobForm, TriggerAdminForm, TriggerForm
from jobs.models import Execution, Job, Trigger, database_now
from jobs.schedule_preview import form_preview, trigger_preview

# What the preview endpoint reads: the schedule, not the job or the misfire settings.
PREVIEW_FIELDS = ["kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at"]
# The form prefix of an inline trigger ("triggers-3"), or none on a trigger's own page.
PREVIEW_PREFIX = re.compile(r"triggers-\d{1,4}")


class ScheduleDisplayMixin:
    """A trigger's schedule in words and its next fire times, on its own page and on its
    job's inline; jobs/static/jobs/trigger_form.js refreshes it (htmx, debounced) from
    the preview endpoint while the schedule is typed, before saving."""

    @admin.display(description="in words, and next fires")
    def schedule_description(self, trigger: Trigger):
        if trigger.pk is None:
            context = {"unsaved": True}
        else:
            context = trigger_preview(trigger, database_now())
        return format_html(
            '<div class="trigger-preview" aria-live="polite" hx-get="{}" '
            'hx-trigger="schedule-changed delay:400ms" hx-swap="innerHTML">{}</div>',
            reverse("admin:jobs_trigger_preview"),
            render_to_string("admin/jobs/_trigger_preview.html", context),
        )


# --- Audit of schedule edits ------------------------------------------------------------


def _reason(form) -> str:
    return (form.cleaned_data.get("reason") or "").strip()


def _audit_change(request, kind: str, obj, before: dict, after: dict, reason: str) -> None:
    before, after = changes(before, after)
    if after:
        audit.record(request.user, f"{kind}.change", kind, obj.pk, reason, before, after)


# --- Admin pages -------------------------------------------------------------------------


def _warn_if_managed(request, job: Job) -> None:
    if job.managed_by:
        messages.warning(
            request,
            f"{job.name} is managed by the schedule file {job.managed_by}: applying it "
            "again (manage.py apply_schedules) overwrites changes made here. Change the "
            "file instead.",
        )


def _editable_fieldsets(modeladmin, request, obj, fields, readonly_block):
    """Fields, then a read-only schedule block, then the audit reason for those who edit."""
    fieldsets = [(None, {"fields": fields})]
    if readonly_block:
        fieldsets.append(("Schedule", {"fields": readonly_block}))
    can_edit = (
        modeladmin.has_change_permission(request, obj)
        if obj is not None
        else modeladmin.has_add_permission(request)
    )
    if can_edit:
        fieldsets.append(("Audit", {"fields": ["reason"]}))
    return fieldsets


class _PauseActions:
    """Pause and resume actions for jobs or triggers, for users with jobs.pause_job."""

    def has_pause_permission(self, request) -> bool:
        return request.user.has_perm("jobs.pause_job")

    def _set_paused(self, request, queryset, paused: bool) -> None:
        setter = set_job_paused if self.model is Job else set_trigger_paused
        noun = self.model._meta.verbose_name
        objects = list(queryset)
        changed = sum(setter(obj, paused, request.user) for obj in objects)
        verb, state = ("Paused", "paused") if paused else ("Resumed", "running")
        message = f"{verb} {changed} {noun}{'' if changed == 1 else 's'}."
        if len(objects) - changed:
            message += f" {len(objects) - changed} already {state}."
        self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Pause the selected %(verbose_name_plural)s", permissions=["pause"])
    def pause_selected(self, request, queryset):
        self._set_paused(request, queryset, True)

    @admin.action(description="Resume the selected %(verbose_name_plural)s", permissions=["pause"])
    def resume_selected(self, request, queryset):
        self._set_paused(request, queryset, False)


# htmx (vendored by django-htmx) for the live preview, then the trigger form's own code.
TRIGGER_FORM_JS = ["django_htmx/htmx-2.min.js", "jobs/trigger_form.js"]


class TriggerInline(ScheduleDisplayMixin, admin.StackedInline):
    model = Trigger
    form = TriggerForm
    extra = 0
    fields = [
        "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
        "schedule_description", "misfire_policy", "misfire_grace", "paused",
        "next_fire_at", "last_fire_at",
    ]  # fmt: skip
    readonly_fields = ["schedule_description", "next_fire_at", "last_fire_at"]


@admin.register(Job)
class JobAdmin(_PauseActions, admin.ModelAdmin):
    form = JobForm
    inlines = [TriggerInline]
    list_display = ["name", "target", "executor", "max_attempts", "recover", "paused", "managed_by"]
    list_filter = ["paused", "executor"]
    search_fields = ["name", "target"]
    readonly_fields = ["managed_by"]
    actions = ["pause_selected", "resume_selected", "run_selected_now"]

    class Media:
        js = ["jobs/target_help.js", *TRIGGER_FORM_JS]
        css = {"all": ["jobs/trigger_form.css"]}

    def get_fieldsets(self, request, obj=None):
        fields = list(JOB_FIELDS)
        if obj is not None and obj.managed_by:
            fields.append("managed_by")
        if not is_schedule_editor(request.user):
            # Read only for this user: the arguments as the dashboard shows them to them.
            user = request.user
            fields = [redacted_field(f, user) if f in ("args", "kwargs") else f for f in fields]
        return _editable_fieldsets(self, request, obj, fields, [])

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        if request.method == "GET" and job is not None:
            _warn_if_managed(request, job)
        return super().change_view(request, object_id, form_url, extra_context)

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm("jobs.run_job")

    @admin.action(description="Run the selected jobs now", permissions=["run"])
    def run_selected_now(self, request, queryset):
        for job in queryset:
            try:
                execution = run_now(job, request.user)
            except ValidationError as e:
                # Its arguments no longer fit its target (or the target is gone).
                text = "; ".join(m for msgs in e.message_dict.values() for m in msgs)
                self.message_user(request, f"Not run: {job.name}: {text}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"Queued a run of {job.name} (execution #{execution.pk}).",
                messages.SUCCESS,
            )

    def save_model(self, request, obj, form, change):
        before = locked_snapshots(Job, [obj.pk], JOB_FIELDS).get(obj.pk, {}) if change else None
        super().save_model(request, obj, form, change)
        after = snapshot(obj, JOB_FIELDS)
        if change:
            _audit_change(request, "job", obj, before, after, _reason(form))
        else:
            audit.record(request.user, "job.create", "job", obj.pk, _reason(form), None, after)

    def save_formset(self, request, form, formset, change):
        if formset.model is not Trigger:
            return super().save_formset(request, form, formset, change)
        reason = _reason(form)
        # A row added and left as it came (Django's formsets skip those) is not a schedule:
        # say so, rather than let the job look scheduled when it is not.
        left_empty = sum(
            1 for f in formset.extra_forms if not f.has_changed() and f not in formset.deleted_forms
        )
        if left_empty:
            rows = "row was" if left_empty == 1 else f"{left_empty} rows were"
            messages.warning(
                request,
                f"The new trigger {rows} left empty and not saved: choose a kind and fill in "
                "its schedule to add a trigger.",
            )
        existing = [f.instance.pk for f in formset.initial_forms if f.instance.pk]
        before = locked_snapshots(Trigger, existing, TRIGGER_FIELDS)
        deleting = [f.instance.pk for f in formset.deleted_forms if f.instance.pk]
        super().save_formset(request, form, formset, change)
        for trigger in formset.new_objects:
            after = snapshot(trigger, TRIGGER_FIELDS)
            audit.record(request.user, "trigger.create", "trigger", trigger.pk, reason, None, after)
        for trigger, _fields in formset.changed_objects:
            after = snapshot(trigger, TRIGGER_FIELDS)
            _audit_change(request, "trigger", trigger, before.get(trigger.pk, {}), after, reason)
        for pk in deleting:
            audit.record(request.user, "trigger.delete", "trigger", pk, reason, before.get(pk))

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        job = form.instance
        if not job.triggers.exists():
            messages.warning(
                request,
                f"The job {job.name} has no trigger: it runs only when someone runs it (Run now on "
                "the dashboard, the admin's action or the API). Add a trigger to schedule it.",
            )

    def delete_model(self, request, obj):
        audit.record(request.user, "job.delete", "job", obj.pk, "", job_snapshot_with_triggers(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for job in queryset:
            audit.record(
                request.user, "job.delete", "job", job.pk, "", job_snapshot_with_triggers(job)
            )
        super().delete_queryset(request, queryset)


@admin.register(Trigger)
class TriggerAdmin(ScheduleDisplayMixin, _PauseActions, admin.ModelAdmin):
    form = TriggerAdminForm
    list_display = [
        "id", "job", "kind", "schedule_summary", "timezone", "next_fire_at", "paused",
    ]  # fmt: skip
    list_filter = ["kind", "paused"]
    list_select_related = ["job"]
    readonly_fields = ["schedule_description", "next_fire_at", "last_fire_at"]
    actions = ["pause_selected", "resume_selected"]

    class Media:
        js = TRIGGER_FORM_JS
        css = {"all": ["jobs/trigger_form.css"]}

    def get_urls(self):
        preview = path(
            "preview/",
            self.admin_site.admin_view(self.preview_view),
            name="jobs_trigger_preview",
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request):
        """The schedule preview of a trigger form being typed (GET, nothing saved): its
        fields, under ``prefix`` for a job page's inline trigger."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        prefix = request.GET.get("prefix", "")
        if prefix and not PREVIEW_PREFIX.fullmatch(prefix):
            return HttpResponseBadRequest("prefix: not a trigger form's prefix.")
        form_class = self.get_form(request, None, fields=PREVIEW_FIELDS)
        form = form_class(request.GET, prefix=prefix or None)
        context = form_preview(form, database_now())
        return TemplateResponse(request, "admin/jobs/_trigger_preview.html", context)

    def get_fieldsets(self, request, obj=None):
        return _editable_fieldsets(
            self, request, obj, list(TRIGGER_FIELDS), list(self.readonly_fields)
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        trigger = self.get_object(request, object_id)
        if request.method == "GET" and trigger is not None:
            _warn_if_managed(request, trigger.job)
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="schedule")
    def schedule_summary(self, trigger: Trigger) -> str:
        return describe_schedule(trigger)

    def save_model(self, request, obj, form, change):
        before = (
            locked_snapshots(Trigger, [obj.pk], TRIGGER_FIELDS).get(obj.pk, {}) if change else None
        )
        super().save_model(request, obj, form, change)
        after = snapshot(obj, TRIGGER_FIELDS)
        if change:
            _audit_change(request, "trigger", obj, before, after, _reason(form))
        else:
            audit.record(
                request.user, "trigger.create", "trigger", obj.pk, _reason(form), None, after
            )

    def delete_model(self, request, obj):
        before = snapshot(obj, TRIGGER_FIELDS)
        audit.record(request.user, "trigger.delete", "trigger", obj.pk, "", before)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for trigger in queryset:
            before = snapshot(trigger, TRIGGER_FIELDS)
            audit.record(request.user, "trigger.delete", "trigger", trigger.pk, "", before)
        super().delete_queryset(request, queryset)


class CancelExecutionsForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=500,
        help_text="Recorded in the audit log with your name, and shown on each execution.",
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


def _redacted_text_field(name: str, user):
    """A read-only admin display of free text, redacted for ``user`` (log-like text:
    values after secret-looking keys)."""

    @admin.display(description=name.replace("_", " "))
    def show(obj):
        return redaction.text_for_user(getattr(obj, name), user)

    return show


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    actions = ["cancel_selected"]

    def get_fields(self, request, obj=None):
        # Built per request: arguments and result redacted below the admin role (and
        # the free text a run writes), the traceback only for roles that may see it (as
        # on the dashboard).
        user = request.user
        names = []
        for field in Execution._meta.fields:
            if field.name in ("args", "kwargs", "result"):
                names.append(redacted_field(field.name, user))
            elif field.name in ("error", "note", "progress_message"):
                names.append(_redacted_text_field(field.name, user))
            elif field.name == "traceback" and not sees_tracebacks(user):
                continue
            elif field.name != "id":
                names.append(field.name)
        return names

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("jobs.cancel_execution")

    @admin.action(
        description="Cancel the selected executions (asks for a reason)", permissions=["cancel"]
    )
    def cancel_selected(self, request, queryset):
        form = CancelExecutionsForm(request.POST if "confirm" in request.POST else None)
        if not (form.is_bound and form.is_valid()):
            return TemplateResponse(
                request,
                "admin/jobs/cancel_executions.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Cancel executions",
                    "executions": queryset.select_related("job"),
                    "form": form,
                    "opts": self.model._meta,
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                },
            )
        for execution in queryset.order_by("pk"):
            try:
                done = cancel_execution(execution, request.user, form.cleaned_data["reason"])
            except Execution.DoesNotExist:
                continue  # pruned meanwhile: nothing left to cancel
            except CannotCancel as e:
                self.message_user(request, " ".join(e.messages), messages.ERROR)
                continue
            if done.state == Execution.State.CANCELLED:
                text = f"Cancelled #{done.pk} of {done.job.name}: it will not run."
            else:
                text = f"Asked #{done.pk} of {done.job.name} to stop."
            self.message_user(request, text, messages.SUCCESS)
        return None

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    list_display = [
        "id", "job", "origin", "state", "scheduled_for", "attempt", "node", "started_at",
        "finished_at",
    ]  # fmt: skip
    list_filter = ["state", "origin"]
    search_fields = ["job__name", "node"]
    list_select_related = ["job"]
    show_full_result_count = False
