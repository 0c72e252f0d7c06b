from __future__ import annotations

import logging

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required, permission_required
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views import defaults
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane import dashboard
from controlplane.models import ApiToken
from controlplane.tokens import MAX_EXPIRY_DAYS, TokenNameTaken, create_token, revoke_token

log = logging.getLogger("controlplane.views")


@login_not_required
@require_GET
def healthz(request):
    """The process is up (no database access: that is /readyz's job)."""
    return HttpResponse("ok\n", content_type="text/plain")


@login_not_required
@require_GET
def readyz(request):
    """Ready to serve: the database answers and every migration is applied."""
    problem = _readiness_problem()
    if problem:
        return HttpResponse(f"not ready: {problem}\n", content_type="text/plain", status=503)
    return HttpResponse("ready\n", content_type="text/plain")


def _readiness_problem() -> str:
    """Why this process cannot serve yet, in a few words; "" when it can."""
    try:
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as e:
        # The details (host, user) go to the log, not to an unauthenticated caller.
        log.warning("readyz: the database did not answer: %s", e)
        return f"database unavailable ({type(e).__name__})"
    if unapplied:
        return f"{len(unapplied)} migration(s) not applied"
    return ""


OVERVIEW_PERMISSIONS = ["jobs.view_execution", "locks.view_schedulernode", "locks.view_lock"]


@require_GET
@permission_required(OVERVIEW_PERMISSIONS, raise_exception=True)
def overview(request):
    return _render(
        request, "controlplane/overview.html", "controlplane/_overview_live.html",
        dashboard.overview(),
    )  # fmt: skip


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=255)
    action = forms.ChoiceField(required=False)
    object_type = forms.ChoiceField(required=False, label="Object type")
    object_id = forms.CharField(required=False, max_length=255, label="Object id")
    since = forms.DateTimeField(
        required=False,
        label="From (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    until = forms.DateTimeField(
        required=False,
        label="Until (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    before = forms.CharField(required=False, widget=forms.HiddenInput)
    after = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, actions=(), object_types=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [("", "any"), *((a, a) for a in actions)]
        self.fields["object_type"].choices = [("", "any"), *((t, t) for t in object_types)]

    def clean_before(self):
        return self._cursor("before")

    def clean_after(self):
        return self._cursor("after")

    def _cursor(self, name):
        value = self.cleaned_data[name]
        if not value:
            return None
        try:
            return dashboard.decode_cursor(value)
        except ValueError:
            raise forms.ValidationError("Not a page cursor from this log.") from None

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and until <= since:
            self.add_error("until", "Must be after the start of the range.")
        return data


@require_GET
@permission_required("controlplane.view_auditentry", raise_exception=True)
def audit_log(request):
    actions, object_types = dashboard.audit_choices()
    form = AuditFilterForm(request.GET, actions=actions, object_types=object_types)
    if form.is_valid():
        data = form.cleaned_data
        page = dashboard.audit_page(
            data, before=data["before"], after=data["after"], user=request.user
        )
    else:
        # The errors show beside the filters; status 200 so htmx swaps them in too.
        page = None
    return _render(
        request, "controlplane/audit_log.html", "controlplane/_audit_entries.html",
        {"form": form, "page": page},
    )  # fmt: skip


def _render(request, page: str, fragment: str, context: dict):
    """The whole page, or only its fragment for an htmx request (polling, filters)."""
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, fragment if partial else page, context)
    # The same URL answers with a page or a fragment: caches must tell them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


def page_not_found(request, exception=None):
    """404s: JSON under /api/ (machines parse it), the usual page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    """400s Django raises before a view answers (e.g. a body over the size limit)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Bad request."}, status=400)
    return defaults.bad_request(request, exception)


def server_error(request):
    """500s: JSON under /api/ too, with nothing about the failure (that goes to the log)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Server error."}, status=500)
    return defaults.server_error(request)


# --- API tokens (each user's own) -------------------------------------------------------


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. ci-deploy.")
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_EXPIRY_DAYS,
        label="Expires in (days)",
        help_text="Empty: never.",
    )


@require_http_methods(["GET", "POST"])
def token_list(request):
    """Your API tokens; POST makes one and shows its key, this once."""
    form = TokenForm(request.POST if request.method == "POST" else None)
    new_key = None
    if form.is_valid():
        data = form.cleaned_data
        try:
            token, new_key = create_token(
                request.user, data["name"], data["expires_in_days"], request.user
            )
        except TokenNameTaken as e:
            form.add_error("name", str(e))
        else:
            messages.success(request, f"Made the token {token.name}. Copy its key now.")
            form = TokenForm()
    tokens = ApiToken.objects.filter(user=request.user)
    context = {"tokens": tokens, "form": form, "new_key": new_key}
    response = render(request, "controlplane/tokens.html", context)
    if new_key:
        # The key is in this page only: no cache may keep it.
        add_never_cache_headers(response)
    return response


@require_POST
def token_revoke(request, token_id: int):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    revoke_token(token, request.user, "revoked by its owner")
    messages.success(request, f"Revoked the token {token.name}: its key no longer works.")
    return redirect("token-list")
