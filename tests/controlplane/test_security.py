"""Redaction, login lockout, throttling, API tokens, security headers and input bounds,
for every role."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from axes.models import AccessAttempt
from django.test import Client, RequestFactory, override_settings
from rest_framework.test import APIClient

from controlplane import limits, redaction
from controlplane.models import ApiToken, AuditEntry
from controlplane.security import client_ip
from controlplane.tokens import create_token
from jobs.models import Execution
from tests.conftest import ROOT, make_api_key
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

ROLES = ["viewer", "operator", "admin"]
SECRET = {"password": "hunter2", "day": 3, "nested": [{"Api_Key": "k-1"}]}
SHOWN = '{"password": "••••", "day": 3, "nested": [{"Api_Key": "••••"}]}'


# --- redaction ---------------------------------------------------------------------------


def test_redact_masks_values_under_secret_looking_keys_at_any_depth():
    assert redaction.redact(SECRET) == {
        "password": "••••", "day": 3, "nested": [{"Api_Key": "••••"}]
    }  # fmt: skip
    assert redaction.redact([{"db_credentials": {"a": 1}}, "plain"]) == [
        {"db_credentials": "••••"},
        "plain",
    ]


@override_settings(SCHEDULER_REDACT_KEYS="^pin$")
def test_the_key_pattern_is_a_setting():
    assert redaction.redact({"pin": 1234, "password": "x", "spin": 1}) == {
        "pin": "••••", "password": "x", "spin": 1
    }  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_pages_show_secret_arguments_only_to_the_admin_role(client_for, role_users, role):
    job = make_job("billing", target="demo.echo", kwargs=SECRET)
    execution = make_execution(job, kwargs=SECRET)
    from jobs.actions import run_now

    run_now(job, role_users["admin"], kwargs={"token": "t-9"}, reason="try")
    client = client_for(role)
    pages = [f"/jobs/{job.pk}/", f"/executions/{execution.pk}/", "/audit/"]
    for url in pages:
        html = client.get(url).content.decode()
        leaked = "hunter2" in html or "k-1" in html or "t-9" in html
        assert leaked == (role == "admin"), (url, role)
    if role != "admin":
        assert "&quot;password&quot;: &quot;••••&quot;" in client.get(pages[0]).content.decode()


def test_the_job_pages_schedule_history_redacts_arguments(client_for, role_users):
    body = {"name": "n", "target": "demo.echo", "kwargs": {"secret_token": "s-1"}}
    created = client_for("admin").post("/api/v1/jobs/", body, content_type="application/json")
    job_id = created.json()["id"]
    assert "s-1" not in client_for("operator").get(f"/jobs/{job_id}/").content.decode()
    assert "s-1" in client_for("admin").get(f"/jobs/{job_id}/").content.decode()


def test_the_django_admin_redacts_for_staff_below_the_admin_role(client_for, role_users):
    job = make_job("billing", target="demo.echo", kwargs=SECRET)
    execution = make_execution(job, kwargs=SECRET, state="failed", traceback="File /srv/x.py")
    entry = AuditEntry.objects.create(actor="t", action="job.change", object_type="job",
                                      object_id=str(job.pk), after={"kwargs": SECRET})  # fmt: skip
    operator = client_for("operator")  # staff, with view permissions
    for url in [
        f"/admin/jobs/job/{job.pk}/change/",
        f"/admin/jobs/execution/{execution.pk}/change/",
        f"/admin/controlplane/auditentry/{entry.pk}/change/",
    ]:
        response = operator.get(url)
        assert response.status_code == 200, url
        assert "hunter2" not in response.content.decode(), url
        assert "••••" in response.content.decode(), url
    admin = client_for("admin")
    assert "hunter2" in admin.get(f"/admin/jobs/execution/{execution.pk}/change/").content.decode()


def test_logging_masks_secret_looking_values_in_arguments(caplog):
    logger = logging.getLogger("tests.redaction")
    logger.addFilter(redaction.RedactingFilter())
    with caplog.at_level(logging.INFO, logger="tests.redaction"):
        logger.info("running with %s and %s", {"password": "hunter2"}, "plain")
    assert caplog.messages == ["running with {'password': '••••'} and plain"]


@pytest.mark.parametrize("role, sees", [("viewer", False), ("operator", True), ("admin", True)])
def test_only_operators_and_admins_see_a_traceback_on_the_page(client_for, role, sees):
    failed = make_execution(make_job(), state="failed", error="OSError: disk full",
                            traceback='File "/srv/app/jobs.py", line 3')  # fmt: skip
    html = client_for(role).get(f"/executions/{failed.pk}/").content.decode()
    assert "OSError: disk full" in html
    assert ("/srv/app/jobs.py" in html) == sees


# --- login lockout ----------------------------------------------------------------------


def fail_logins(client, url, username, times):
    for _ in range(times):
        client.post(url, {"username": username, "password": "wrong"})


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_a_lockout_is_per_user_and_audited(role_users, url):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    fail_logins(attacker, url, "ada", 5)
    # The user is locked out from anywhere, not only from the attacker's address.
    response = Client(REMOTE_ADDR="198.51.100.1").post(url, {"username": "ada", "password": "pw"})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    entry = AuditEntry.objects.get(action="login.lockout")
    assert (entry.actor, entry.object_type, entry.object_id) == ("login protection", "user", "ada")
    assert entry.after["ip_address"] == "203.0.113.7"
    # Another user can still log in from another address.
    other = Client(REMOTE_ADDR="198.51.100.2")
    other.post("/login/", {"username": "otto", "password": "pw"})
    assert "_auth_user_id" in other.session


def test_a_lockout_is_per_address_too(role_users):
    attacker = Client(REMOTE_ADDR="203.0.113.8")
    for name in ["a", "b", "c", "d", "e"]:
        fail_logins(attacker, "/login/", name, 1)
    response = attacker.post("/login/", {"username": "vera", "password": "pw"})
    assert response.status_code == 429


def test_a_login_within_the_limit_resets_the_count(role_users):
    client = Client()
    fail_logins(client, "/login/", "vera", 4)
    client.post("/login/", {"username": "vera", "password": "pw"})
    assert "_auth_user_id" in client.session
    assert not AccessAttempt.objects.filter(username="vera", failures_since_start__gt=0).exists()


@pytest.mark.parametrize("role, status", [("viewer", 302), ("operator", 403), ("admin", 200)])
def test_the_admin_role_sees_and_lifts_lockouts_in_the_admin(client_for, role_users, role, status):
    fail_logins(Client(), "/login/", "vera", 5)
    response = client_for(role).get("/admin/axes/accessattempt/")
    assert response.status_code == status
    if role == "admin":
        assert "vera" in response.content.decode()
        attempt = AccessAttempt.objects.get(username="vera")
        client_for("admin").post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
        assert not AccessAttempt.objects.exists()


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_behind_a_trusted_proxy_the_client_is_the_address_it_saw():
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1",
                                   HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")  # fmt: skip
    assert client_ip(request) == "203.0.113.9"


def test_without_trusted_proxies_forwarded_for_is_ignored():
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert client_ip(request) == "10.0.0.1"


# --- API throttling ---------------------------------------------------------------------


def test_bad_tokens_are_throttled_per_address_even_with_a_good_one_after(role_users):
    key = make_api_key(role_users["viewer"])
    client = APIClient()
    statuses = [
        client.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Token {'0' * 64}").status_code
        for _ in range(11)
    ]
    assert statuses == [401] * 10 + [429]
    response = client.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 429 and "Retry-After" in response
    other = APIClient(REMOTE_ADDR="198.51.100.3")
    assert other.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200


@pytest.mark.parametrize("header", ["Token \xff" * 1, "Token abc", "Token " + "g" * 64])
def test_a_malformed_token_is_401_not_a_server_error(role_users, header):
    response = APIClient().get("/api/v1/jobs/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_authenticated_clients_are_throttled_by_user(role_users, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min"})
    client = APIClient()
    client.force_login(role_users["viewer"])
    assert [client.get("/api/v1/jobs/").status_code for _ in range(4)] == [200, 200, 200, 429]


# --- API tokens: the dashboard page, the API, the admin ---------------------------------


@pytest.mark.parametrize("role", [None, *ROLES])
def test_every_role_manages_its_own_tokens_on_the_dashboard(client_for, role_users, role):
    client = client_for(role)
    page = client.get("/tokens/")
    if role is None:
        assert page.status_code == 302 and page["Location"].startswith("/login/")
        assert client.post("/tokens/", {"name": "x"}).status_code == 302
        return
    assert page.status_code == 200
    made = client.post("/tokens/", {"name": "ci", "expires_in_days": "30"})
    assert made.status_code == 200
    assert "no-store" in made["Cache-Control"]
    key = made.content.decode().split('<pre class="token-key">')[1].split("<")[0]
    token = ApiToken.objects.get(user=role_users[role])
    assert (token.name, token.expiry is not None) == ("ci", True)
    assert key not in client.get("/tokens/").content.decode()  # shown once
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/locks/").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None

    duplicate = client.post("/tokens/", {"name": "ci"})
    assert "already has a token named" in duplicate.content.decode()
    revoked = client.post(f"/tokens/{token.pk}/revoke/")
    assert revoked.status_code == 302
    assert api.get("/api/v1/locks/").status_code == 401
    actions = list(AuditEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["token.create", "token.revoke"]
    assert key not in json.dumps([e.after for e in AuditEntry.objects.all()])


def test_nobody_revokes_another_users_token(client_for, role_users):
    token, key = create_token(role_users["viewer"], "mine", None, "tests")
    assert client_for("admin").post(f"/tokens/{token.pk}/revoke/").status_code == 404
    api = APIClient()
    api.force_login(role_users["operator"])
    assert api.delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
    assert ApiToken.objects.filter(pk=token.pk).exists()


@pytest.mark.parametrize("role", [None, *ROLES, "token"])
def test_the_token_api_lists_and_revokes_only_your_own(role_users, role):
    from django.contrib.auth.models import User

    create_token(User.objects.create_user("eve"), "someone else's", None, "tests")
    api = APIClient()
    if role == "token":
        api.credentials(HTTP_AUTHORIZATION=f"Token {make_api_key(role_users['viewer'], 'self')}")
    elif role is not None:
        api.force_login(role_users[role])
        make_api_key(role_users[role], "mine")
    listed = api.get("/api/v1/tokens/")
    if role is None:
        assert listed.status_code == 401
        return
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert set(row) == {"id", "name", "key_starts", "created", "expiry", "expired", "last_used_at"}
    assert api.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code == 405
    assert api.delete("/api/v1/tokens/nope/").status_code == 404
    assert api.delete(f"/api/v1/tokens/{row['id']}/").status_code == 204
    assert ApiToken.objects.count() == 1  # only the other user's is left


@pytest.mark.parametrize("role, status", [("viewer", 302), ("operator", 403), ("admin", 200)])
def test_the_admin_role_sees_and_revokes_every_token_in_the_admin(
    client_for, role_users, role, status
):
    token, key = create_token(role_users["viewer"], "ci", None, "tests")
    client = client_for(role)
    listed = client.get("/admin/controlplane/apitoken/")
    assert listed.status_code == status
    if role != "admin":
        return
    html = listed.content.decode()
    assert "vera" in html and key[:8] in html and key not in html
    assert client.get("/admin/controlplane/apitoken/add/").status_code == 403
    client.post(f"/admin/controlplane/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert not ApiToken.objects.exists()
    entry = AuditEntry.objects.filter(action="token.revoke").get()
    assert (entry.user, entry.reason) == (role_users["admin"], "revoked in the admin")


def test_an_expired_token_is_refused(role_users):
    token, key = create_token(role_users["viewer"], "old", 1, "tests")
    ApiToken.objects.filter(pk=token.pk).update(expiry="2000-01-01T00:00:00Z")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/locks/").status_code == 401


# --- headers and input bounds -----------------------------------------------------------


@pytest.mark.parametrize("url", ["/login/", "/admin/login/", "/api/v1/jobs/"])
def test_every_response_carries_the_security_headers(client, url):
    response = client.get(url)
    policy = response["Content-Security-Policy"]
    for directive in ["default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "frame-ancestors 'none'", "object-src 'none'"]:  # fmt: skip
        assert directive in policy
    assert "unsafe" not in policy
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_no_template_holds_inline_script_style_or_event_handlers():
    for path in (ROOT / "templates").rglob("*.html"):
        html = re.sub(r"{#.*?#}", "", path.read_text())  # comments aside
        assert "<script>" not in html and "<style" not in html, path
        assert not re.search(r"\s(style|hx-on[:\w-]*|on[a-z]+)=", html), path


def test_the_image_settings_turn_https_on_behind_a_proxy():
    from tests.test_deployment import image_env

    env = image_env()
    for name in ["SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
                 "SECURE_HSTS_INCLUDE_SUBDOMAINS"]:  # fmt: skip
        assert env[name] == "1", name
    assert int(env["SECURE_HSTS_SECONDS"]) >= 31536000
    assert env["SECURE_PROXY_SSL_HEADER"] == "X-Forwarded-Proto"
    assert "SCHEDULER_DEMO_TARGETS" not in env


@pytest.mark.parametrize("value", ["1", None])
def test_the_demo_targets_switch(value):
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULER_DEMO_TARGETS"}
    if value:
        env["SCHEDULER_DEMO_TARGETS"] = value
    code = (
        "import django; django.setup(); from jobs import registry; print(registry.target_names())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**env, "DJANGO_SETTINGS_MODULE": "controlplane.settings"},
    )  # fmt: skip
    assert ("demo.append_line" in result.stdout) == bool(value), result.stderr


def test_check_json_bounds_depth_and_nul_without_recursion():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(limits.InputError, match="deeper than 20"):
        limits.check_json(deep, 20)
    with pytest.raises(limits.InputError, match="U\\+0000"):
        limits.check_json({"k\x00": 1}, 20)
    with pytest.raises(limits.InputError, match="deeper than 20"):
        limits.loads("[" * 100_000 + "]" * 100_000, 20)
    with pytest.raises(limits.InputError, match="NaN is not a JSON value"):
        limits.loads("[NaN]", 20)


def test_arguments_over_the_size_limit_are_refused_naming_the_field(client_for):
    job = make_job("echo", target="demo.echo")
    body = {"kwargs": {"blob": "x" * 70_000}}
    response = client_for("admin").post(
        f"/api/v1/jobs/{job.pk}/run/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["kwargs"][0].startswith("Too large:")
    page = client_for("admin").post(f"/jobs/{job.pk}/run/", {"args": "[" * 30 + "]" * 30})
    assert page.status_code == 400 and b"Nested deeper than 20 levels" in page.content
    assert not Execution.objects.exists()


@pytest.mark.parametrize("role", ROLES)
def test_a_nul_byte_in_a_form_is_400_on_every_page(client_for, role):
    job = make_job()
    client = client_for(role)
    assert client.post(f"/jobs/{job.pk}/pause/", {"reason": "a\x00b"}).status_code == 400
    assert client.get("/executions/", {"node": "a\x00b"}).status_code == 400
    assert client.get("/audit/", {"actor": "\x00"}).status_code == 400
    job.refresh_from_db()
    assert not job.paused


def test_api_errors_raised_outside_a_view_are_json_too(rf):
    from controlplane import views

    for handler, status in [(views.bad_request, 400), (views.server_error, 500)]:
        response = handler(rf.get("/api/v1/jobs/"))
        assert response.status_code == status
        assert response["Content-Type"] == "application/json"
        assert handler(rf.get("/jobs/")).status_code == status
