"""The executions list's bulk actions: select rows or everything a filter matches, confirm
with the count and a reason, act (jobs/bulk.py), and say what happened.

GET /executions/bulk/ is the confirm page (it changes nothing); POST acts and redirects
back to the list with a message (PRG). Both work without JavaScript; bulk.js only adds
"select all on this page" and keeps the selection while the table refreshes itself.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from jobs import bulk

REASON_MAX = 500
SHOWN_IDS = 50


class BulkForm(forms.Form):
    action = forms.ChoiceField(choices=[("rerun", "Rerun"), ("cancel", "Cancel")])
    ids = forms.TypedMultipleChoiceField(required=False, coerce=int)
    all_matching = forms.BooleanField(required=False)
    reason = forms.CharField(required=False, max_length=REASON_MAX, strip=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Any positive id is a valid choice; which exist is bulk.by_ids' business.
        self.fields["ids"].valid_value = _is_id


def _is_id(value) -> bool:
    return str(value).isdigit() and 0 < int(value) < 2**63

    def clean(self):
        data = super().clean()
        if not data.get("all_matching") and not data.get("ids") and "ids" not in self.errors:
            raise ValidationError("Select executions first, or all that match the filter.")
        return data


def may_act(user, action: str | None = None) -> bool:
    actions = [action] if action else bulk.ACTIONS
    return any(user.has_perm(bulk.PERMISSIONS[name]) for name in actions)


def filter_params(data) -> list[tuple[str, str]]:
    """The list's filters in a query dict, as (name, value) pairs to carry on."""
    # Imported here: jobs.views (the list, whose filter form this reuses) imports this
    # module for the list's bulk bar.
    from jobs.views import ExecutionFilterForm

    return [(name, data[name]) for name in ExecutionFilterForm.FILTERS if data.get(name)]


def bulk_context(request, form) -> dict:
    """What the list's bulk bar needs: nothing for a role that may not act; else the
    actions it may take, the filters to carry and how many executions match them."""
    user = request.user
    if not may_act(user):
        return {"may_bulk": False}
    limit = bulk.limit()
    matching = len(bulk.matching_ids(form.filters(), user, limit + 1))
    return {
        "may_bulk": True,
        "bulk_actions": [a for a in bulk.ACTIONS if may_act(user, a)],
        "bulk_filters": filter_params(request.GET),
        "matching_count": min(matching, limit),
        "matching_more": matching > limit,
        "bulk_limit": limit,
    }


@require_http_methods(["GET", "POST"])
@login_required
def execution_bulk(request):
    from jobs.views import ExecutionFilterForm

    if not may_act(request.user):
        raise PermissionDenied
    data = request.POST if request.method == "POST" else request.GET
    form = BulkForm(data)
    filters = ExecutionFilterForm(data)
    back = reverse("execution-list") + _query(filter_params(data))
    context = {
        "form": form,
        "filters": filters,
        "back": back,
        "bulk_filters": filter_params(data),
        "selection": None,
    }
    if not form.is_valid() or not filters.is_valid():
        return render(request, "jobs/execution_bulk.html", context, status=400)
    action = form.cleaned_data["action"]
    if not may_act(request.user, action):
        raise PermissionDenied
    try:
        if form.cleaned_data["all_matching"]:
            selection = bulk.by_filter(filters.filters(), request.user)
            how = {"filter": dict(filter_params(data))}
        else:
            selection = bulk.by_ids(form.cleaned_data["ids"])
            how = {"ids": selection.ids + selection.missing}
    except bulk.TooMany as e:
        context["refused"] = e.messages[0]
        return render(request, "jobs/execution_bulk.html", context, status=400)
    context.update(
        {
            "action": action,
            "selection": selection,
            "shown_ids": selection.ids[:SHOWN_IDS],
            "more_ids": max(0, selection.matched - SHOWN_IDS),
            "all_matching": form.cleaned_data["all_matching"],
        }
    )
    if request.method == "GET":
        return render(request, "jobs/execution_bulk.html", context)
    reason = form.cleaned_data["reason"]
    if not reason:
        form.add_error("reason", "A reason is required for a bulk action.")
        return render(request, "jobs/execution_bulk.html", context, status=400)
    outcome = bulk.run(action, selection, request.user, reason, how)
    messages.success(request, outcome.summary())
    return redirect(back)


def _query(pairs: list[tuple[str, str]]) -> str:
    return "?" + urlencode(pairs) if pairs else ""
