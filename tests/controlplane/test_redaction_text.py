"""Redaction of free text (a run's log lines, progress messages, errors, events): the
value after a secret-looking key, Authorization credentials, passwords in URLs."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from controlplane import redaction


@pytest.mark.parametrize(
    "text, shown",
    [
        ("connecting with password=hunter2 to db", "connecting with password=•••• to db"),
        ("DB_PASSWORD=xyz;next=1", "DB_PASSWORD=••••;next=1"),
        ("token: abc, other: 1", "token: ••••, other: 1"),
        ('{"user": "x", "api_key": "abc def", "n": 3}', '{"user": "x", "api_key": "••••", "n": 3}'),
        ("{'secret': 's3', 'day': 4}", "{'secret': '••••', 'day': 4}"),
        (
            'payload {"auth": {"private_key": "-----BEGIN"}}',
            'payload {"auth": {"private_key": "••••"}}',
        ),
        ('password = "unterminated', "password = ••••"),
        ('x "password": "a\\"b" y', 'x "password": "••••" y'),
        ("url=postgres://bob:pw@db:5432/app", "url=postgres://bob:••••@db:5432/app"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ••••"),
        ('headers={"Authorization": "Token abc"}', 'headers={"Authorization": "Token ••••"}'),
        ("nothing secret at 12:30:45, day=3", "nothing secret at 12:30:45, day=3"),
        ("cannot connect: password=pw1", "cannot connect: password=••••"),
        ("config={'token': 't', 'n': 1}", "config={'token': '••••', 'n': 1}"),
        ("a: b: secret=x y", "a: b: secret=•••• y"),
        ("", ""),
    ],
)
def test_values_after_secret_looking_keys_are_masked(text, shown):
    assert redaction.redact_text(text) == shown


@override_settings(SCHEDULER_REDACT_KEYS="^pin$")
def test_free_text_follows_the_key_pattern_setting():
    assert redaction.redact_text("pin=1234 password=x spin=5") == "pin=•••• password=x spin=5"


def test_a_pathological_line_is_redacted_in_linear_time():
    # Unclosed quotes after keys: each quoted scan is bounded, never quadratic.
    for text in ['a="' * 100_000, '"a"="' * 100_000, "password=" * 100_000]:
        start = time.monotonic()
        redaction.redact_text(text)
        assert time.monotonic() - start < 5


@pytest.mark.django_db
def test_only_the_admin_role_reads_free_text_as_written(role_users):
    text = "login with password=hunter2"
    assert redaction.text_for_user(text, role_users["admin"]) == text
    for role in ("viewer", "operator"):
        assert redaction.text_for_user(text, role_users[role]) == "login with password=••••"
    assert redaction.text_for_user(text, None) == "login with password=••••"
