"""/favicon.ico: browsers ask for it on every site, whatever the page's <link rel="icon">."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.contrib.auth.decorators import login_not_required
from django.contrib.staticfiles import finders
from django.http import HttpResponse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET

FAVICON = "controlplane/favicon.svg"


@cache
def _icon() -> bytes:
    return Path(finders.find(FAVICON)).read_bytes()


@login_not_required
@require_GET
def favicon(request):
    # The SVG itself (not a redirect): one request, and no login page for the icon.
    response = HttpResponse(_icon(), content_type="image/svg+xml")
    patch_cache_control(response, public=True, max_age=86400)
    return response
