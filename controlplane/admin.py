from __future__ import annotations

from django.contrib import admin

from controlplane.models import AuditEntry


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and coordination rows: visible in the admin, changed only by the system
    (and by the audited actions an admin class adds)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id", "reason"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor", "object_id", "reason"]
