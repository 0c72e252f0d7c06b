from __future__ import annotations

from urllib.parse import unquote_to_bytes

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
        if self._has_nul(request):
            if request.path_info.startswith("/api/"):
                return JsonResponse({"detail": NUL_MESSAGE}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain")
        return self.get_response(request)

    @staticmethod
    def _has_nul(request) -> bool:
        if "\x00" in request.path_info:
            return True
        if b"\x00" in unquote_to_bytes(request.META.get("QUERY_STRING", "")):
            return True
        if request.method == "POST" and request.content_type in FORM_TYPES:
            # Reading POST here is what CsrfViewMiddleware does next anyway; an oversize
            # body raises RequestDataTooBig, answered as Django answers it (400).
            return any("\x00" in key or any("\x00" in v for v in values)
                       for key, values in request.POST.lists())  # fmt: skip
        return False
