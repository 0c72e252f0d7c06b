"""The role groups: who may cancel a run, and the migrations that give roles their
permissions."""

from __future__ import annotations

import importlib

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from controlplane import roles

pytestmark = pytest.mark.django_db


def test_operators_and_admins_may_cancel_runs_and_viewers_may_not(role_users):
    assert not role_users["viewer"].has_perm("jobs.cancel_execution")
    assert role_users["operator"].has_perm("jobs.cancel_execution")
    assert role_users["admin"].has_perm("jobs.cancel_execution")


def state_at(app_label: str, name: str):
    """The models as that migration left them (what its RunPython is given)."""
    return MigrationLoader(connection).project_state((app_label, name)).apps


def test_the_cancel_permission_migration_gives_it_to_the_roles():
    migration = importlib.import_module("jobs.migrations.0010_runview_cancel_permission")
    Group.objects.all().delete()
    Permission.objects.filter(codename="cancel_execution").delete()
    migration.sync_roles(state_at("jobs", "0010_runview_cancel_permission"), None)
    holders = Group.objects.filter(permissions__codename="cancel_execution")
    assert sorted(holders.values_list("name", flat=True)) == ["admin", "operator"]


def test_earlier_role_migrations_leave_out_the_permission_that_does_not_exist_yet():
    # controlplane 0002 and 0005 run before jobs 0010 declares cancel_execution.
    migration = importlib.import_module("controlplane.migrations.0005_security_roles")
    Group.objects.all().delete()
    Permission.objects.filter(codename="cancel_execution").delete()
    migration.sync(state_at("controlplane", "0005_security_roles"), None)
    operator = Group.objects.get(name="operator")
    assert operator.permissions.filter(codename="rerun_execution").exists()
    assert not Permission.objects.filter(codename="cancel_execution").exists()


def test_a_misspelt_permission_in_the_roles_is_an_error(monkeypatch):
    monkeypatch.setitem(roles.ROLES, "operator", [*roles.OPERATE, "jobs.cancle_execution"])
    with pytest.raises(LookupError, match="no permission jobs.cancle_execution"):
        roles.sync_roles(Group, Permission)
