"""Recording operator actions in the audit log."""

from __future__ import annotations

from controlplane.models import AuditEntry


def actor_of(by) -> tuple[object | None, str]:
    """(user or None, name) for a user object or a plain string such as a node id."""
    if by is None:
        return None, "system"
    if isinstance(by, str):
        return None, by
    return by, by.get_username()


def record(by, action: str, obj_type: str, obj_id, reason: str = "", before=None, after=None):
    """Write one audit entry; ``by`` is a user or a string naming a process."""
    user, actor = actor_of(by)
    return AuditEntry.objects.create(
        user=user,
        actor=actor,
        action=action,
        object_type=obj_type,
        object_id=str(obj_id),
        reason=reason,
        before=before,
        after=after,
    )
