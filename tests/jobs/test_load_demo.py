"""load_demo: demo jobs and an admin login, never a changed password."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    # The password file goes to BASE_DIR/.data: a temporary one, not the checkout's.
    settings.BASE_DIR = tmp_path
    return tmp_path / ".data"


def load_demo() -> str:
    out = io.StringIO()
    call_command("load_demo", stdout=out)
    return out.getvalue()


def test_it_creates_the_admin_and_prints_its_password_every_time(data_dir):
    first = load_demo()
    password = (data_dir / "admin-password").read_text().strip()
    assert f"password {password}" in first
    assert User.objects.get(username="admin").check_password(password)
    assert f"password {password}" in load_demo()
    assert Job.objects.filter(name__startswith="demo:").count() == 7


def test_it_never_changes_an_existing_users_password(data_dir):
    User.objects.create_superuser("admin", "a@example.com", "theirs")
    output = load_demo()
    assert User.objects.get(username="admin").check_password("theirs")
    assert "password unchanged" in output
    assert not (data_dir / "admin-password").exists()


def test_it_does_not_print_a_password_file_that_no_longer_matches(data_dir):
    load_demo()
    user = User.objects.get(username="admin")
    user.set_password("changed")
    user.save()
    output = load_demo()
    assert User.objects.get(username="admin").check_password("changed")
    stale = (data_dir / "admin-password").read_text().strip()
    assert stale not in output
    assert "password unchanged" in output
