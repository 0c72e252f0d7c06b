"""The three roles and what each may do. Groups are created by a migration."""

from __future__ import annotations

from django.apps import apps as django_apps

VIEW = [
    "jobs.view_job", "jobs.view_trigger", "jobs.view_execution", "locks.view_lock",
    "locks.view_schedulernode", "controlplane.view_auditentry",
]  # fmt: skip
OPERATE = [
    "jobs.run_job", "jobs.pause_job", "jobs.rerun_execution", "jobs.cancel_execution",
    "locks.force_release_lock", "locks.cleanup_stale_locks",
]  # fmt: skip
EDIT_SCHEDULES = [
    "jobs.add_job", "jobs.change_job", "jobs.delete_job", "jobs.add_trigger",
    "jobs.change_trigger", "jobs.delete_trigger",
]  # fmt: skip
# Security housekeeping in the admin: every user's API tokens (revoking one is deleting
# it) and login lockouts (deleting an attempt lifts its lockout).
SECURITY_ADMIN = [
    "controlplane.view_apitoken", "controlplane.delete_apitoken", "axes.view_accessattempt",
    "axes.delete_accessattempt",
]  # fmt: skip

ROLES = {
    "viewer": VIEW,
    "operator": VIEW + OPERATE,
    "admin": VIEW + OPERATE + EDIT_SCHEDULES + SECURITY_ADMIN,
}


def is_schedule_editor(user) -> bool:
    """The admin role (or a superuser): may change jobs and triggers, override any
    parameter in a run-now, and see argument values that look secret."""
    return user is not None and user.has_perm("jobs.change_job")


def sees_tracebacks(user) -> bool:
    """Operators and admins: a traceback shows code and server paths, a viewer's role
    needs only the error line."""
    return user is not None and user.has_perm("jobs.rerun_execution")


def sync_roles(group_model, permission_model) -> None:
    """Create or update the role groups (idempotent; migrations pass historical models).

    A permission that does not exist yet at that point of the migration history (its
    model, or a custom permission added to the model later, e.g. cancel_execution) is
    left out; the migration that adds it syncs the roles again. With the current models
    (not a migration's), a missing permission is an error: a misspelt name in ROLES.
    """
    historical = permission_model._meta.apps is not django_apps
    # One query for every permission the roles name (the test suite syncs the roles
    # before each test: a query per permission cost it a tenth of a second each time).
    wanted = {dotted.split(".")[1] for names in ROLES.values() for dotted in names}
    found = {
        (permission.content_type.app_label, permission.codename): permission
        for permission in permission_model.objects.select_related("content_type").filter(
            codename__in=wanted
        )
    }
    for role, codenames in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=role)
        permissions = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            permission = found.get((app_label, codename))
            if permission is None:
                if historical and not _declared(permission_model, app_label, codename):
                    continue
                raise LookupError(f"role {role}: no permission {dotted}")
            permissions.append(permission)
        group.permissions.set(permissions)


def _declared(permission_model, app_label: str, codename: str) -> bool:
    """Whether the model state that ``permission_model`` belongs to declares the
    permission: a default permission of one of the app's models, or a Meta.permissions
    entry."""
    try:
        app = permission_model._meta.apps.get_app_config(app_label)
    except LookupError:
        return False
    for model in app.get_models():
        opts = model._meta
        if any(name == codename for name, _description in opts.permissions):
            return True
        if codename in {f"{action}_{opts.model_name}" for action in opts.default_permissions}:
            return True
    return False
