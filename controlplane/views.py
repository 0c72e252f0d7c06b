from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse
from django.views.decorators.http import require_GET


@login_not_required
@require_GET
def healthz(request):
    """The process is up (no database access: that is /readyz's job)."""
    return HttpResponse("ok\n", content_type="text/plain")


# PLACEHOLDER: helper-6 replaces these with the real views.
def overview(request):
    from django.http import Http404

    raise Http404("not built yet")


audit_log = overview
