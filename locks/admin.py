from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import F
from django.db.models.functions import Now
from django.template.response import TemplateResponse

from controlplane import durations
from controlplane.admin import ReadOnlyAdmin
from controlplane.dashboard import expiry_text
from locks.maintenance import LockError, force_release, stale_locks
from locks.models import Lock, SchedulerNode


class ForceReleaseForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded in the audit log with your name.",
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@admin.action(description="Force-release the selected locks (asks for a reason)")
def force_release_action(modeladmin, request, queryset):
    form = ForceReleaseForm(request.POST if "confirm" in request.POST else None)
    if form.is_bound and form.is_valid():
        for lock in queryset:
            try:
                result = force_release(lock.name, request.user, form.cleaned_data["reason"])
            except LockError as e:
                modeladmin.message_user(request, str(e), messages.ERROR)
            else:
                before = result["before"]
                modeladmin.message_user(
                    request,
                    f"Released {lock.name} (was held by {before['holder'] or 'nobody'}, "
                    f"token {before['token']}).",
                    messages.SUCCESS,
                )
        return None
    return TemplateResponse(
        request,
        "admin/locks/force_release.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Force-release locks",
            "locks": queryset,
            "form": form,
            "opts": modeladmin.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        },
    )


@admin.register(Lock)
class LockAdmin(ReadOnlyAdmin):
    actions = [force_release_action]
    search_fields = ["name", "holder"]
    ordering = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(expires_in=F("locked_until") - Now())

    def get_list_display(self, request):
        # Computed once per page, in closures, so no request state sits on the admin.
        reasons = {s.name: s.reason for s in stale_locks()}
        nodes = dict(SchedulerNode.objects.values_list("id", "state"))

        @admin.display(description="holder node")
        def holder_liveness(lock):
            if not lock.holder:
                return "-"
            return nodes.get(lock.holder, "not a scheduler node")

        @admin.display(description="stale")
        def stale_reason(lock):
            return reasons.get(lock.name, "")

        return [
            "name", "holder", holder_liveness, "locked_at", "expires", "token", "execution",
            stale_reason,
        ]  # fmt: skip

    @admin.display(description="expires in", ordering="locked_until")
    def expires(self, lock):
        if lock.expires_in is None:
            return "-"
        return expiry_text(lock.expires_in)


@admin.register(SchedulerNode)
class SchedulerNodeAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "hostname", "pid", "state", "last_heartbeat", "heartbeat_age", "started_at",
        "version", "declared_dead_by",
    ]  # fmt: skip
    list_filter = ["state"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(age=Now() - F("last_heartbeat"))

    @admin.display(description="heartbeat age", ordering="last_heartbeat")
    def heartbeat_age(self, node):
        return durations.ago(node.age)
