"""Dashboard pages for locks and scheduler nodes, and the operator actions on locks."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.db.models import BooleanField, ExpressionWrapper, F, Q, Window
from django.db.models.functions import RowNumber
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from controlplane import durations
from controlplane.dashboard import (
    UNFINISHED_STATES,
    DbNow,
    describe_node,
    expiry_text,
    nodes_with_age,
    running_counts,
)
from jobs.models import Execution
from locks.leader import LEADER_LOCK
from locks.leases import InvalidLockName, validate_lock_name
from locks.maintenance import LockError, cleanup_stale_locks, force_release, stale_locks
from locks.models import Lock, SchedulerNode

LOCK_PAGE_SIZE = 200
DOWN_NODES_SHOWN = 200
RUNNING_LINKS_PER_NODE = 20
DEFAULT_CLEANUP_REASON = "stale lock cleanup from the dashboard"

# A lock is held while its holder has not released it (even past its lease: that is a
# stale lock) or while its lease runs (a released lock stays held until at_least).
HELD = Q(locked_until__gt=DbNow()) | ~Q(holder="")


class ForceReleaseForm(forms.Form):
    # CharField strips, so a reason of only spaces is missing too.
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "A reason is required to force-release a lock."},
    )


def lock_release_url(name: str) -> str:
    """The force-release page of a lock, its whole name percent-encoded ("/" as %2F).

    A browser removes "." and ".." segments from a URL path before asking: encoded as
    one segment, a name is sent exactly as it is, whatever it holds.
    """
    return reverse("lock-release", args=["-"])[:-1] + quote(name, safe="")


@require_GET
@permission_required("locks.view_lock", raise_exception=True)
def lock_list(request):
    name, after = request.GET.get("name", ""), request.GET.get("after", "")
    show_all = request.GET.get("all") == "1"
    try:
        for given in filter(None, (name, after)):
            validate_lock_name(given)
    except InvalidLockName as e:
        return _bad_name(request, show_all, e)
    context = _get_locks(show_all=show_all, name=name, after=after)
    return _render(request, "locks/lock_list.html", "locks/_locks.html", context)


@require_http_methods(["GET", "POST"])
@permission_required("locks.force_release_lock", raise_exception=True)
def lock_release(request, name):
    """GET: the confirmation with its required reason; POST: release, then the list."""
    show_all = request.POST.get("all", request.GET.get("all")) == "1"
    try:
        validate_lock_name(name)
    except InvalidLockName as e:
        return _bad_name(request, show_all, e)  # nothing is released
    form = ForceReleaseForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            result = force_release(name, request.user, form.cleaned_data["reason"])
        except LockError as e:
            messages.error(request, f"Nothing released: {e}.")
        else:
            before, after = result["before"], result["after"]
            messages.success(
                request,
                f"Released {name}: it was held by {before['holder'] or 'nobody'} with token "
                f"{before['token']}; the token is now {after['token']}.",
            )
        return _after_action(request, show_all)
    locks = _get_locks(name=name)["locks"]
    if not locks:
        raise Http404(f"there is no lock named {name!r}")
    context = {
        "lock": locks[0],
        "leader_lease": name == LEADER_LOCK,
        "heartbeat": durations.duration(settings.SCHEDULER_HEARTBEAT_INTERVAL),
        "leader_lease_time": durations.duration(settings.SCHEDULER_LEADER_LEASE),
        "form": form,
        "show_all": show_all,
        "inline": bool(request.htmx),
        "list_url": _list_url(show_all),
    }
    return _render(request, "locks/lock_release.html", "locks/_release_form.html", context)


@require_POST
@permission_required("locks.cleanup_stale_locks", raise_exception=True)
def lock_cleanup(request):
    reason = request.POST.get("reason", "").strip() or DEFAULT_CLEANUP_REASON
    freed = cleanup_stale_locks(request.user, reason)
    if freed:
        names = ", ".join(s.name for s in freed[:10])
        more = f" and {len(freed) - 10} more" if len(freed) > 10 else ""
        messages.success(
            request, f"Released {len(freed)} stale lock{'s' * (len(freed) != 1)}: {names}{more}."
        )
    else:
        messages.info(request, "There was no stale lock to release.")
    return _after_action(request, request.POST.get("all") == "1")


@require_GET
@permission_required("locks.view_schedulernode", raise_exception=True)
def node_list(request):
    return _render(request, "locks/node_list.html", "locks/_node_table.html", _get_nodes())


def _get_locks(show_all: bool = False, name: str = "", after: str = "") -> dict:
    """Lock rows with their expiry (database time), holder liveness and stale reason."""
    locks = Lock.objects.annotate(
        expires_in=F("locked_until") - DbNow(),
        held=ExpressionWrapper(HELD, output_field=BooleanField()),
    )
    if name:
        locks = locks.filter(name=name)
    elif not show_all:
        locks = locks.filter(HELD)
    if after:
        locks = locks.filter(name__gt=after)
    rows = list(locks.order_by("name")[: LOCK_PAGE_SIZE + 1])
    more = len(rows) > LOCK_PAGE_SIZE
    rows = rows[:LOCK_PAGE_SIZE]
    stale = {s.name: s.reason for s in stale_locks()}
    holders = {lock.holder for lock in rows if lock.holder}
    node_states = dict(SchedulerNode.objects.filter(id__in=holders).values_list("id", "state"))
    for lock in rows:
        lock.release_url = lock_release_url(lock.name)
        lock.stale_reason = stale.get(lock.name, "")
        lock.holder_state = node_states.get(lock.holder, "")
        lock.expires_text = expiry_text(lock.expires_in)
        lock.status = _lock_status(lock)
    query = {"all": "1" if show_all else "", "name": name, "after": after}
    return {
        # The list polls this URL (the same view of the locks) to stay current.
        "poll_url": reverse("lock-list") + _query({k: v for k, v in query.items() if v}),
        "locks": rows,
        "show_all": show_all,
        "name": name,
        "after": after,
        "next_after": rows[-1].name if more else "",
        "stale_count": len(stale),
    }


def _query(params: dict) -> str:
    return f"?{urlencode(params)}" if params else ""


def _lock_status(lock: Lock) -> str:
    """free, held, stale (its holder can no longer release it) or expired (its lease ran
    out and nobody released it: stale too). A lock past its lease is never "held"."""
    if not lock.held:
        return "free"
    if lock.expires_in is not None and lock.expires_in.total_seconds() <= 0:
        return "expired"
    if lock.stale_reason:
        return "stale"
    return "held"


def _get_nodes() -> dict:
    """Live nodes, then the latest dead and stopped ones, with their unfinished work."""
    live = list(nodes_with_age().filter(state="active").order_by("id"))
    down = list(
        nodes_with_age()
        .exclude(state="active")
        .order_by("-last_heartbeat", "id")[: DOWN_NODES_SHOWN + 1]
    )
    more_down = len(down) > DOWN_NODES_SHOWN
    nodes = [describe_node(n) for n in live + down[:DOWN_NODES_SHOWN]]
    ids = [n.id for n in nodes]
    counts = running_counts(ids)
    # The first few of each node's unfinished executions (execution_unfinished_idx).
    first = (
        Execution.objects.filter(state__in=UNFINISHED_STATES, node__in=ids)
        .annotate(rank=Window(RowNumber(), partition_by=[F("node")], order_by=F("id").asc()))
        .filter(rank__lte=RUNNING_LINKS_PER_NODE)
        .values_list("node", "id", "state")
    )
    links: dict[str, list[tuple[int, str]]] = {}
    for node_id, execution_id, state in first:
        links.setdefault(node_id, []).append((execution_id, state))
    for node in nodes:
        node.running_count = counts.get(node.id, 0)
        node.running = links.get(node.id, [])
    return {"nodes": nodes, "more_down": more_down, "down_shown": DOWN_NODES_SHOWN}


def _bad_name(request, show_all: bool, error: InvalidLockName):
    """The lock list with the error: 400, or for htmx 200 (htmx 2 swaps only successes)."""
    context = {**_get_locks(show_all=show_all), "name_error": str(error)}
    if request.htmx:
        response = render(request, "locks/_locks.html", context)
        return reswap(retarget(response, "#locks"), "outerHTML")
    return render(request, "locks/lock_list.html", context, status=400)


def _list_url(show_all: bool) -> str:
    return reverse("lock-list") + ("?all=1" if show_all else "")


def _after_action(request, show_all: bool):
    """PRG for a plain POST; for htmx, the refreshed lock table (with the messages)."""
    if not request.htmx:
        return redirect(_list_url(show_all))
    response = render(request, "locks/_locks.html", _get_locks(show_all=show_all))
    # An inline release form targets itself (to show its errors); success replaces the table.
    return reswap(retarget(response, "#locks"), "outerHTML")


def _render(request, page: str, fragment: str, context: dict):
    """The whole page, or only its fragment for an htmx request."""
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, fragment if partial else page, context)
    # The same URL answers with a page or a fragment: caches must tell them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response
