"""The REST API's wiring: permissions by role, errors as JSON naming the field, the router."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, permissions

from locks.leases import LockError
from locks.maintenance import LockNotHeld, UnknownLock


class RolePermission(permissions.DjangoModelPermissions):
    """The dashboard's roles, for the API.

    Reads need the model's view permission; writes its add/change/delete permission; a
    custom action needs the permission named in the viewset's ``action_permissions``
    (e.g. ``{"run": "jobs.run_job"}``).
    """

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view):
        if not request.user or not request.user.is_authenticated:
            return False
        action_permissions = getattr(view, "action_permissions", {})
        if getattr(view, "action", None) in action_permissions:
            return request.user.has_perm(action_permissions[view.action])
        return super().has_permission(request, view)


def exception_handler(exc, context):
    """Domain errors become 4xx JSON bodies that name the field, like DRF's own."""
    # Imported here: DRF loads this module (for RolePermission) while importing its views.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            detail = {field: [str(m) for m in msgs] for field, msgs in exc.message_dict.items()}
        else:
            detail = {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, UnknownLock):
        exc = exceptions.NotFound({"name": [str(exc)]})
    elif isinstance(exc, LockNotHeld):
        exc = Conflict({"name": [str(exc)]})
    elif isinstance(exc, LockError):
        exc = Conflict({"detail": str(exc)})
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    return drf_exception_handler(exc, context)


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"
