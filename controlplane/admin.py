from __future__ import annotations

from django.contrib import admin

from controlplane import redaction
from controlplane.models import ApiToken, AuditEntry
from controlplane.tokens import revoke_token


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

    # Built per request, in closures (no request state on the shared admin object): the
    # arguments in before/after are redacted below the admin role.
    def get_fields(self, request, obj=None):
        user = request.user

        @admin.display(description="before")
        def before(entry):
            return redaction.audit_text(entry.before, user)

        @admin.display(description="after")
        def after(entry):
            return redaction.audit_text(entry.after, user)

        names = ["created_at", "user", "actor", "action", "object_type", "object_id", "reason"]
        return [*names, before, after]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)


def redacted_field(name: str, user):
    """A read-only admin display of a JSON field, redacted for ``user``."""

    @admin.display(description=name)
    def show(obj):
        return redaction.json_text(getattr(obj, name), user)

    return show


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Every user's API tokens: no key (only its hash is stored); deleting revokes."""

    list_display = ["name", "user", "key_starts", "created", "expiry", "last_used_at"]
    list_select_related = ["user"]
    search_fields = ["name", "user__username"]
    fields = ["name", "user", "key_starts", "created", "expiry", "last_used_at"]
    readonly_fields = fields
    actions = ["delete_selected"]

    def has_delete_permission(self, request, obj=None):
        return request.user.has_perm("controlplane.delete_apitoken")

    @admin.display(description="key starts")
    def key_starts(self, token):
        return f"{token.token_key[:8]}…"

    def delete_model(self, request, obj):
        revoke_token(obj, request.user, "revoked in the admin")

    def delete_queryset(self, request, queryset):
        for token in queryset.select_related("user"):
            revoke_token(token, request.user, "revoked in the admin")
