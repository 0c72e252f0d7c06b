"""Fixtures shared by the jobs app's tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from tests import faults
from tests.conftest import make_api_key

#: API principals that authenticate with a token, and whose token they hold.
TOKEN_OWNERS = {"token": "operator", "admin_token": "admin"}


@pytest.fixture
def api(role_users):
    """api("viewer") -> an APIClient for that principal (session login, or a token)."""

    def make(who: str) -> APIClient:
        client = APIClient()
        if who in TOKEN_OWNERS:
            key = make_api_key(role_users[TOKEN_OWNERS[who]])
            client.credentials(HTTP_AUTHORIZATION="Token " + key)
        elif who != "anonymous":
            client.force_login(role_users[who])
        return client

    return make


@pytest.fixture
def fault_triggers(transactional_db):
    """The fault triggers of tests/faults.py in the test database; returns the marker folder."""
    marker_dir = Path(tempfile.mkdtemp(prefix="faults-", dir="/var/tmp"))
    marker_dir.chmod(0o777)  # the database server writes the markers
    faults.install(faults.on_test_database, marker_dir)
    yield marker_dir
    faults.on_test_database(faults.uninstall_sql())
    shutil.rmtree(marker_dir, ignore_errors=True)
