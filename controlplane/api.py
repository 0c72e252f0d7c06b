"""The REST API's wiring: permissions by role, errors as JSON naming the field, paging."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, parsers, permissions, serializers
from rest_framework.pagination import Cursor, CursorPagination

from controlplane import limits
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
    elif isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, DjangoPermissionDenied) and exc.args:
        # A refusal that says why (e.g. an override the role may not make), as JSON.
        exc = exceptions.PermissionDenied(exc.args[0])
    return drf_exception_handler(exc, context)


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "too_large"

    def __init__(self):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"The request body is larger than {limit} bytes.")


class BoundedJSONParser(parsers.JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes and API_JSON_MAX_DEPTH levels:
    every other body is a 400 (413 when too large), never a 500.

    Django checks the size only when the body is read through ``request.body``; DRF
    streams it, so the limit is applied here as the body is read. A "\u0000" inside a
    string is left to the serializers, whose 400 names the field that holds it.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise RequestTooLarge()
        try:
            return limits.loads(body, settings.API_JSON_MAX_DEPTH, refuse_nul=False)
        except limits.InputError as e:
            raise exceptions.ParseError(f"JSON parse error - {e}") from None


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


class ListPagination(CursorPagination):
    """How every list endpoint pages: the same body, parameters and errors everywhere.

    The body is ``{"next": URL or null, "previous": URL or null, "results": [...]}``; a
    client follows ``next`` until it is null. Cursors are positions in a fixed order (no
    offsets), so a page never repeats or skips rows that were added meanwhile.
    ``page_size`` outside 1..max and a cursor this list did not give out are 400s naming
    the parameter, not silently ignored.
    """

    ordering = "id"
    page_size = 100
    max_page_size = 500
    page_size_query_param = "page_size"
    cursor_query_description = "The `next` or `previous` link's cursor."

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        field = serializers.IntegerField(min_value=1, max_value=self.max_page_size)
        try:
            return field.run_validation(raw)
        except exceptions.ValidationError as e:
            raise exceptions.ValidationError({self.page_size_query_param: e.detail}) from None

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(
                {self.cursor_query_param: ["Not a cursor this list gave out."]}
            ) from None

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
                parameter["description"] = (
                    f"Results per page ({self.page_size} by default, at most {self.max_page_size})."
                )
        return parameters


class NamePagination(ListPagination):
    ordering = "name"


class NameListPagination(ListPagination):
    """ListPagination over a list of dicts in memory (e.g. the registered targets), by
    their unique ``name``: the same body, parameters and errors as every other list."""

    def paginate_list(self, items: list[dict], request) -> list[dict]:
        self.page_size = self.get_page_size(request)
        self.base_url = request.build_absolute_uri()
        self.request = request
        items = sorted(items, key=lambda item: item["name"])
        cursor = self.decode_cursor(request)
        # An empty ?cursor= decodes to a cursor without a position: the first page.
        if cursor is None or cursor.position is None:
            start, end = 0, self.page_size
        elif cursor.reverse:
            end = sum(1 for item in items if item["name"] < cursor.position)
            start = max(0, end - self.page_size)
        else:
            start = sum(1 for item in items if item["name"] <= cursor.position)
            end = start + self.page_size
        page = items[start:end]
        self._next = (
            self.encode_cursor(Cursor(0, False, page[-1]["name"]))
            if page and end < len(items)
            else None
        )
        self._previous = (
            self.encode_cursor(Cursor(0, True, page[0]["name"])) if page and start > 0 else None
        )
        return page

    def get_next_link(self):
        return self._next

    def get_previous_link(self):
        return self._previous


class IdPagination(ListPagination):
    ordering = "id"
