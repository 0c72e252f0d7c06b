from __future__ import annotations

from django.contrib import admin

from locks.models import SchedulerNode


@admin.register(SchedulerNode)
class SchedulerNodeAdmin(admin.ModelAdmin):
    list_display = ["id", "hostname", "pid", "state", "last_heartbeat", "started_at", "version"]
    list_filter = ["state"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
