from __future__ import annotations

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired

# Machines get 401/403 from the API itself (token or session auth), never a login page.
LOGIN_EXEMPT_PREFIXES = ("/api/",)
# Prometheus scrapes without credentials: it shows counts and ages, never job arguments.
LOGIN_EXEMPT_PATHS = frozenset({"/metrics"})


class LoginRequiredMiddleware(DjangoLoginRequired):
    """Django's login-required middleware, leaving the API's own auth to the API."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith(LOGIN_EXEMPT_PREFIXES) or request.path in LOGIN_EXEMPT_PATHS:
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
