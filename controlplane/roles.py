"""The three roles and what each may do. Groups are created by a migration."""

from __future__ import annotations

VIEW = [
    "jobs.view_job", "jobs.view_trigger", "jobs.view_execution", "locks.view_lock",
    "locks.view_schedulernode", "controlplane.view_auditentry",
]  # fmt: skip
OPERATE = [
    "jobs.run_job", "jobs.pause_job", "jobs.rerun_execution", "locks.force_release_lock",
    "locks.cleanup_stale_locks",
]  # fmt: skip
EDIT_SCHEDULES = [
    "jobs.add_job", "jobs.change_job", "jobs.delete_job", "jobs.add_trigger",
    "jobs.change_trigger", "jobs.delete_trigger",
]  # fmt: skip

ROLES = {
    "viewer": VIEW,
    "operator": VIEW + OPERATE,
    "admin": VIEW + OPERATE + EDIT_SCHEDULES,
}


def sync_roles(group_model, permission_model) -> None:
    """Create or update the role groups (idempotent; migrations pass historical models)."""
    for role, codenames in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            permissions.append(
                permission_model.objects.get(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(permissions)
