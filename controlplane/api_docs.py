"""The OpenAPI schema and the Swagger UI page: both need a login unless API_DOCS_PUBLIC.

The schema maps every endpoint and parameter: it is for the API's users, not for anyone
who finds the site. The page is Swagger UI with its start-up script served as a file of
its own, so it runs under the site's Content-Security-Policy (no inline script).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.renderers import JSONRenderer


class SchemaView(SpectacularAPIView):
    """The schema (YAML or JSON); its errors (a 401 without a login) as JSON, like every
    other API error. Who may read it: SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"]."""

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


def docs_view():
    """The Swagger UI page: a page for people, so the login page comes first."""
    view = SpectacularSwaggerSplitView.as_view(url_name="api-schema")
    return view if settings.API_DOCS_PUBLIC else login_required(view)
