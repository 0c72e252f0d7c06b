"""Fixtures shared by the jobs app's API tests."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

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
