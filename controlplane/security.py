"""Who a request comes from, and the audit of login lockouts (django-axes)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q

from controlplane import audit
from controlplane.dashboard import DbNow
from controlplane.models import AuditEntry

LOCKOUT_ACTOR = "login protection"


def client_ip(request) -> str:
    """The client's address: the peer, or with TRUSTED_PROXY_COUNT proxies in front, the
    address the outermost trusted proxy saw (as Django REST framework's throttles read it).

    Only the entries those proxies appended to X-Forwarded-For are trusted; anything
    before them came from the client and could be forged.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        return hops[-min(proxies, len(hops))]
    return request.META.get("REMOTE_ADDR", "")


def audit_lockout(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    """Receiver of axes' user_locked_out: one audit entry per lockout.

    axes signals every attempt refused during a lockout too; an attacker hammering a
    locked account must not fill the audit log, so a lockout of the same username or
    address within the cool-off is recorded once.
    """
    # The username is whatever was typed: keep it to the audit log's column size.
    name = (username or "")[:255]
    recent = AuditEntry.objects.filter(
        action="login.lockout", created_at__gte=DbNow() - settings.AXES_COOLOFF_TIME
    )
    if recent.filter(Q(object_id=name) | Q(after__ip_address=ip_address)).exists():
        return
    audit.record(
        LOCKOUT_ACTOR,
        "login.lockout",
        "user",
        name,
        reason=f"{settings.AXES_FAILURE_LIMIT} failed logins; locked for "
        f"{settings.AXES_COOLOFF_TIME}",
        after={"username": name, "ip_address": ip_address, "path": getattr(request, "path", "")},
    )
