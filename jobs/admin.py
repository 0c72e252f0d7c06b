from __future__ import annotations

from django.contrib import admin

from jobs.forms import JobForm, TriggerForm
from jobs.models import Execution, Job, Trigger


class TriggerInline(admin.StackedInline):
    model = Trigger
    form = TriggerForm
    extra = 0
    fields = [
        "kind", "cron", "timezone", "interval", "run_at", "start_at", "end_at",
        "misfire_policy", "misfire_grace", "paused", "next_fire_at", "last_fire_at",
    ]  # fmt: skip
    readonly_fields = ["next_fire_at", "last_fire_at"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    form = JobForm
    inlines = [TriggerInline]
    list_display = ["name", "target", "executor", "max_attempts", "recover", "paused"]
    list_filter = ["paused", "executor"]
    search_fields = ["name", "target"]


@admin.register(Trigger)
class TriggerAdmin(admin.ModelAdmin):
    form = TriggerForm
    list_display = ["id", "job", "kind", "cron", "timezone", "interval", "next_fire_at", "paused"]
    list_filter = ["kind", "paused"]
    readonly_fields = ["next_fire_at", "last_fire_at"]


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = [
        "id", "job", "origin", "state", "scheduled_for", "attempt", "node", "started_at",
        "finished_at",
    ]  # fmt: skip
    list_filter = ["state", "origin"]
    search_fields = ["job__name", "node"]
    list_select_related = ["job"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
