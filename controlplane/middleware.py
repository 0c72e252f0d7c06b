from __future__ import annotations

from urllib.parse import parse_qsl

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired
from django.http import HttpResponseBadRequest, JsonResponse

# Machines get 401/403 from the API itself (token or session auth), never a login page.
# (The docs page, /api/docs/, is wrapped in login_required in controlplane/urls.py.)
LOGIN_EXEMPT_PREFIXES = ("/api/",)
# Prometheus scrapes without credentials: it shows counts and ages, never job arguments.
LOGIN_EXEMPT_PATHS = frozenset({"/metrics"})
NUL_MESSAGE = "The request contains a NUL byte (U+0000), which no field may hold."
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Django's login-required middleware, leaving the API's own auth to the API."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith(LOGIN_EXEMPT_PREFIXES) or request.path in LOGIN_EXEMPT_PATHS:
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


class RejectNulMiddleware:
    """400 for a NUL byte in the path, the query string or a form body.

    PostgreSQL text cannot hold NUL, so a query with one fails deep inside a view (a 500)
    or means nothing. Refusing it here covers every view, present and future. JSON
    bodies are the API parser's (controlplane.api.BoundedJSONParser).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        where = self._nul_in(request)
        if where is None:
            return self.get_response(request)
        if request.path_info.startswith("/api/"):
            # Like every API error, a JSON body naming the field when there is one.
            body = {where: [NUL_MESSAGE]} if where != "detail" else {"detail": NUL_MESSAGE}
            return JsonResponse(body, status=400)
        field = "" if where == "detail" else f" ({where})"
        return HttpResponseBadRequest(NUL_MESSAGE + field, content_type="text/plain")

    @classmethod
    def _nul_in(cls, request) -> str | None:
        """Where a NUL is: a parameter's name, "detail" for the path, or None."""
        if "\x00" in request.path_info:
            return "detail"
        query = parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True)
        found = cls._first_with_nul(query)
        if found is not None:
            return found
        # The API reads JSON only (a form body gets 415 there): only pages read forms.
        if (
            request.method == "POST"
            and request.content_type in FORM_TYPES
            and not request.path_info.startswith("/api/")
        ):
            # Reading POST here is what CsrfViewMiddleware does next anyway; an oversize
            # body raises RequestDataTooBig, answered as Django answers it (400).
            return cls._first_with_nul(
                (key, value) for key, values in request.POST.lists() for value in values
            )
        return None

    @staticmethod
    def _first_with_nul(pairs) -> str | None:
        for key, value in pairs:
            if "\x00" in key or "\x00" in value:
                # The name as text a client can read; a NUL in it shown as an escape.
                return key.replace("\x00", "\\x00")[:100] or "detail"
        return None
