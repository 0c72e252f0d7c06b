"""One attack per finding of the security review (issue 10), replayed as the reviewer did.

Each test is black-box: it uses the pages, the API and the commands the way an attacker
with the given role would, so that it failed on the code before the fixes and passes now.
The finer behaviour of each fix is tested beside its code (tests/jobs, tests/locks,
tests/controlplane).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection, models
from django.test import Client
from rest_framework.test import APIClient

from controlplane.models import AuditEntry
from jobs.models import Execution
from tests.conftest import ROOT
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

API = "/api/v1"


def api_as(user) -> APIClient:
    client = APIClient(raise_request_exception=False)
    if user is not None:
        client.force_login(user)
    return client


def page_as(user) -> Client:
    client = Client(raise_request_exception=False)
    if user is not None:
        client.force_login(user)
    return client


# --- 1. High: an operator can write any file on a scheduler node -------------------------


def test_demo_targets_are_not_registered_unless_asked_for():
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULER_DEMO_TARGETS"}
    code = (
        "import django; django.setup(); from jobs import registry; "
        "print(','.join(registry.target_names()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "controlplane.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "demo.append_line" not in result.stdout


def test_an_operator_cannot_override_the_path_of_a_file_writing_job(role_users, tmp_path):
    job = make_job("append", target="demo.append_line", kwargs={"path": str(tmp_path / "a")})
    evil = {"path": str(tmp_path / "evil.pth"), "line": "import os; os.system('id')"}

    response = api_as(role_users["operator"]).post(
        f"{API}/jobs/{job.pk}/run/", {"kwargs": evil}, format="json"
    )
    assert response.status_code == 403, response.content
    assert "path" in json.dumps(response.json())

    page = page_as(role_users["operator"]).post(
        f"/jobs/{job.pk}/run/", {"kwargs": json.dumps(evil)}
    )
    assert page.status_code == 400
    assert b"path" in page.content
    assert not Execution.objects.exists()


# --- 2. Medium: lock names with ".." reach another lock -----------------------------------


def test_a_lock_name_with_dot_segments_cannot_be_taken(transactional_db):
    from locks.leases import acquire

    with pytest.raises(ValueError, match="\\.\\."):
        acquire("decoy/../victim", holder="attacker", at_most=60)


def test_a_browser_following_a_lock_link_reaches_that_lock_and_no_other(role_users):
    # A row taken before names were validated: its link must still address it alone.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO locks_lock (name, holder, locked_at, locked_until, token) VALUES "
            "('decoy/../victim', 'attacker', now(), now() + interval '1 hour', 1), "
            "('victim', 'worker-1', now(), now() + interval '1 hour', 1)"
        )
    client = page_as(role_users["operator"])
    body = client.get("/locks/").content.decode()
    hrefs = [part.split('"', 1)[0] for part in body.split('href="')[1:]]
    [decoy] = [h for h in hrefs if h.startswith("/locks/release/") and "decoy" in h]
    # What a browser requests: dot segments removed, percent escapes kept.
    requested = urlsplit(urljoin("http://testserver/locks/", decoy)).path
    assert unquote(requested) != "/locks/release/victim"

    response = api_as(role_users["operator"]).post(
        f"{API}/locks/decoy/../victim/force_release/", {"reason": "x"}, format="json"
    )
    assert response.status_code == 400
    with connection.cursor() as cursor:
        cursor.execute("SELECT holder FROM locks_lock WHERE name = 'victim'")
        assert cursor.fetchone() == ("worker-1",)


# --- 3. Medium: no brute-force protection -------------------------------------------------


@pytest.mark.parametrize("login_url", ["/login/", "/admin/login/"])
def test_many_wrong_passwords_lock_the_login_out(role_users, login_url):
    client = Client(raise_request_exception=False)
    for _ in range(20):
        client.post(login_url, {"username": "ada", "password": "wrong"})
    response = client.post(login_url, {"username": "ada", "password": "pw"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_many_bad_api_tokens_are_throttled(role_users):
    client = APIClient(raise_request_exception=False)
    statuses = [
        client.get(f"{API}/jobs/", HTTP_AUTHORIZATION=f"Token {i:064x}").status_code
        for i in range(40)
    ]
    assert 429 in statuses


# --- 4. Medium: API tokens are stored in plaintext ----------------------------------------


def test_an_api_token_is_stored_nowhere_in_the_clear_and_the_admin_never_shows_it(role_users):
    out = StringIO()
    call_command("create_api_token", "otto", stdout=out, stderr=StringIO())
    key = out.getvalue().split()[-1]
    assert len(key) >= 32
    for model in apps.get_models():
        text = [f.name for f in model._meta.get_fields() if isinstance(f, models.CharField)]
        for name in text:
            assert not model._default_manager.filter(**{name: key}).exists(), (model, name)

    root = role_users["admin"]
    root.is_superuser = True
    root.save()
    admin = page_as(root)
    index = admin.get("/admin/").content.decode()
    changelists = {h.split('"', 1)[0] for h in index.split('href="')[1:] if "/admin/" in h}
    for url in changelists:
        assert key not in admin.get(url).content.decode(), url


# --- 5. Medium: production security settings are missing ----------------------------------


def test_check_deploy_is_clean_with_the_images_environment():
    from tests.test_deployment import image_env

    # The image's environment and what it needs at run time, nothing of this test run's.
    env = {
        **{k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ},
        **image_env(),
        "DATABASE_URL": "postgres://check@127.0.0.1/none",
        "SECRET_KEY": "a-long-random-production-key-" + "x7Qp9" * 10,
        "ALLOWED_HOSTS": "scheduler.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stderr + result.stdout


def test_pages_carry_a_content_security_policy_without_inline_code(client):
    response = client.get("/login/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"]


# --- 6. Medium: viewers read secrets ------------------------------------------------------


def test_a_viewer_sees_no_secret_argument_and_no_traceback(role_users):
    admin = page_as(role_users["admin"])
    job = make_job("billing", target="demo.echo", kwargs={"password": "hunter2"})
    operator = api_as(role_users["admin"])
    run = operator.post(
        f"{API}/jobs/{job.pk}/run/", {"kwargs": {"api_key": "sk-live-42"}}, format="json"
    )
    assert run.status_code == 201, run.content
    failed = make_execution(
        job,
        state="failed",
        kwargs={"password": "hunter2"},
        error="RuntimeError: boom",
        traceback='File "/srv/private/billing/secret_module.py", line 3',
    )
    assert admin.get(f"/executions/{failed.pk}/").content.count(b"secret_module.py") == 1

    viewer = page_as(role_users["viewer"])
    pages = [
        f"/jobs/{job.pk}/",
        f"/executions/{failed.pk}/",
        f"/executions/{run.json()['id']}/",
        "/audit/",
        f"{API}/jobs/{job.pk}/",
        f"{API}/executions/{failed.pk}/",
        f"{API}/executions/{run.json()['id']}/",
    ]
    for url in pages:
        body = viewer.get(url).content.decode()
        assert "hunter2" not in body and "sk-live-42" not in body, url
        assert "secret_module.py" not in body, url
    assert "RuntimeError: boom" in viewer.get(f"/executions/{failed.pk}/").content.decode()


# --- 7. Low: server errors and unbounded input --------------------------------------------


def test_nul_bytes_get_400_not_a_server_error(role_users):
    client = page_as(role_users["operator"])
    for url in ["/locks/?name=a%00b", "/locks/?after=%00", "/locks/release/a%00b"]:
        assert client.get(url).status_code == 400, url
    api = api_as(role_users["operator"])
    for url in [f"{API}/locks/a%00b/", f"{API}/executions/?node=%00"]:
        response = api.get(url)
        assert response.status_code == 400, url
        assert response["Content-Type"] == "application/json", url


def test_deep_and_huge_arguments_are_refused(role_users):
    admin = api_as(role_users["admin"])
    job = make_job("echo", target="demo.echo")
    deep = []
    for _ in range(500):
        deep = [deep]
    response = admin.post(f"{API}/jobs/{job.pk}/run/", {"args": deep}, format="json")
    assert response.status_code == 400, response.status_code

    huge = {"blob": "x" * 2_400_000}
    response = admin.post(f"{API}/jobs/{job.pk}/run/", {"kwargs": huge}, format="json")
    assert response.status_code in (400, 413), response.status_code
    assert response["Content-Type"] == "application/json"
    assert not Execution.objects.exists()
    assert not AuditEntry.objects.filter(action="job.run_now").exists()


def test_an_oversize_api_body_gets_a_json_413(role_users):
    admin = api_as(role_users["admin"])
    job = make_job("echo", target="demo.echo")
    body = json.dumps({"kwargs": {"blob": "x" * 3_000_000}})
    response = admin.post(f"{API}/jobs/{job.pk}/run/", body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json()


# --- 8. Low: the API schema and docs are open to anonymous users --------------------------


def test_the_api_schema_and_docs_need_a_login():
    client = Client(raise_request_exception=False)
    assert client.get("/api/schema/").status_code == 401
    docs = client.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/login/")
