"""The OpenAPI schema, the Swagger UI page (served from local assets), and API tokens.

The schema and the docs page are readable without logging in: they describe the API
but hold no data, and tools (and Swagger UI itself, before a token is entered) fetch
the schema anonymously. Every endpoint they describe still needs credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import include, path
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.authtoken.models import Token
from rest_framework.routers import DefaultRouter
from rest_framework.test import APIClient

from controlplane.models import AuditEntry
from locks import api as locks_api
from tests.conftest import ROOT, test_database_url

SCHEMA = "/api/schema/"
DOCS = "/api/docs/"
STATIC = "/static/"


def schema_from(response) -> dict:
    if "json" in response["Content-Type"]:
        return json.loads(response.content)
    return yaml.safe_load(response.content)


class AssetRefs(HTMLParser):
    """The src of each <script> and the href of each <link> in a page."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.refs.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.refs.append(attrs["href"])


def asset_refs(html: str) -> list[str]:
    parser = AssetRefs()
    parser.feed(html)
    return parser.refs


# --- the schema ---------------------------------------------------------------------------


def test_the_schema_is_openapi_3_in_yaml_by_default_without_login():
    response = Client().get(SCHEMA)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert "json" not in response["Content-Type"]
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/locks/", "/api/v1/locks/{name}/", "/api/v1/locks/{name}/force_release/",
            "/api/v1/locks/cleanup_stale/", "/api/v1/nodes/", "/api/v1/nodes/{id}/",
            } <= set(schema["paths"])  # fmt: skip


@pytest.mark.parametrize(
    "query, headers, content_type",
    [
        ({"format": "json"}, {}, "application/vnd.oai.openapi+json"),
        ({}, {"Accept": "application/json"}, "application/json"),
        ({}, {"Accept": "application/vnd.oai.openapi+json"}, "application/vnd.oai.openapi+json"),
    ],
)
def test_the_schema_comes_as_json_on_request(query, headers, content_type):
    as_yaml = schema_from(Client().get(SCHEMA))
    response = Client().get(SCHEMA, query, headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == content_type
    assert json.loads(response.content) == as_yaml


def test_the_schema_declares_token_and_session_auth_and_every_answer_of_the_lock_actions():
    schema = schema_from(Client().get(SCHEMA, {"format": "json"}))
    paths, components = schema["paths"], schema["components"]

    assert components["securitySchemes"]["tokenAuth"]["name"] == "Authorization"
    release = paths["/api/v1/locks/{name}/force_release/"]["post"]
    assert {"tokenAuth": []} in release["security"] and {"cookieAuth": []} in release["security"]
    assert set(release["responses"]) == {"200", "400", "401", "403", "404", "409", "415"}
    assert release["requestBody"]["required"] is True
    request = release["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert components["schemas"][request.rsplit("/", 1)[1]]["required"] == ["reason"]
    cleanup = paths["/api/v1/locks/cleanup_stale/"]["post"]
    assert set(cleanup["responses"]) == {"200", "400", "401", "403", "415"}
    assert set(release["requestBody"]["content"]) == {"application/json"}
    for url in ["/api/v1/locks/", "/api/v1/nodes/"]:
        assert set(paths[url]["get"]["responses"]) == {"200", "400", "401", "403"}
    for url in ["/api/v1/locks/{name}/", "/api/v1/nodes/{id}/"]:
        assert set(paths[url]["get"]["responses"]) == {"200", "401", "403", "404"}
    lock = components["schemas"]["Lock"]["properties"]
    for field in ["holder_state", "locked_at", "expires_in_seconds", "execution_id",
                  "stale_reason"]:  # fmt: skip
        assert lock[field]["nullable"] is True, field
    assert "nullable" not in lock["held"] and "nullable" not in lock["token"]


def test_the_locks_and_nodes_schema_validates_without_a_warning():
    # Only this app's routes: the whole schema is checked by `manage.py spectacular
    # --validate --fail-on-warn`, which also covers the other apps.
    router = DefaultRouter()
    locks_api.register(router)
    generator = SchemaGenerator(patterns=[path("api/v1/", include(router.urls))])
    GENERATOR_STATS.reset()
    schema = generator.get_schema(request=None, public=True)
    validate_schema(schema)
    assert not GENERATOR_STATS, "drf-spectacular warned; run manage.py spectacular --validate"
    assert len(schema["paths"]) == 6


def test_the_whole_schema_validates_without_a_warning(tmp_path):
    GENERATOR_STATS.reset()
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", tmp_path / "s.yaml")
    assert yaml.safe_load((tmp_path / "s.yaml").read_text())["openapi"].startswith("3.")


# --- the docs page ------------------------------------------------------------------------


def test_the_docs_page_is_swagger_ui_from_local_static_files_only():
    response = Client().get(DOCS)
    page = response.content.decode()

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    refs = asset_refs(page)
    assert any(ref.endswith("swagger-ui-bundle.js") for ref in refs)
    assert any(ref.endswith("swagger-ui.css") for ref in refs)
    for ref in refs:
        assert ref.startswith(STATIC), ref  # no CDN: same host, under STATIC_URL
        assert not ref.startswith("//"), ref
        assert finders.find(ref.removeprefix(STATIC)), f"{ref} is not in any static dir"
    assert "http://" not in page and "https://" not in page
    assert f'url: "{SCHEMA}"' in page


def test_a_live_server_serves_the_docs_page_its_assets_and_the_schema(live_server):
    def fetch(url: str):
        with urllib.request.urlopen(f"{live_server.url}{url}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()

    status, _, page = fetch(DOCS)
    assert status == 200
    refs = asset_refs(page.decode())
    assert refs
    for ref in refs:
        status, content_type, body = fetch(ref)
        assert status == 200, ref
        assert body == Path(finders.find(ref.removeprefix(STATIC))).read_bytes()
        if ref.endswith(".js"):
            assert "javascript" in content_type
        if ref.endswith(".css"):
            assert content_type.startswith("text/css")
    status, content_type, body = fetch(SCHEMA)
    assert status == 200 and yaml.safe_load(body)["openapi"].startswith("3.")


# --- API tokens ---------------------------------------------------------------------------


def create_api_token(*args) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def status_with(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/locks/").status_code


def test_create_api_token_creates_prints_and_audits_a_token_that_acts_as_its_user(role_users):
    printed = create_api_token("otto")

    key = printed.strip()
    assert printed == f"{key}\n"  # only the key: TOKEN=$(manage.py create_api_token otto)
    assert Token.objects.get(user=role_users["operator"]).key == key
    entry = AuditEntry.objects.get()
    assert (entry.user, entry.actor, entry.action) == (
        None, "manage.py create_api_token", "token.create"
    )  # fmt: skip
    assert (entry.object_type, entry.object_id) == ("user", "otto")
    assert key not in json.dumps([entry.before, entry.after, entry.reason])
    assert status_with(key) == 200


def test_create_api_token_prints_the_existing_token_again(role_users):
    first = create_api_token("otto")
    assert create_api_token("otto") == first
    assert Token.objects.count() == 1 and AuditEntry.objects.count() == 1


def test_rotate_replaces_the_token_and_the_old_one_stops_working(role_users):
    old = create_api_token("otto").strip()
    new = create_api_token("otto", "--rotate").strip()

    assert new != old
    assert Token.objects.get(user=role_users["operator"]).key == new
    assert status_with(old) == 401 and status_with(new) == 200
    assert AuditEntry.objects.filter(action="token.rotate", object_id="otto").count() == 1


def test_rotate_creates_a_token_for_a_user_without_one(role_users):
    key = create_api_token("ada", "--rotate").strip()
    assert Token.objects.get(user=role_users["admin"]).key == key
    assert AuditEntry.objects.get().action == "token.create"


def test_an_unknown_user_is_a_clear_error_and_creates_nothing(role_users):
    with pytest.raises(CommandError, match="There is no user named 'nobody'"):
        create_api_token("nobody")
    assert not Token.objects.exists() and not AuditEntry.objects.exists()


def test_an_inactive_user_gets_a_token_and_a_warning(role_users):
    User.objects.filter(username="vera").update(is_active=False)
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "vera", stdout=out, stderr=err)
    assert "vera is inactive" in err.getvalue()
    assert status_with(out.getvalue().strip()) == 401


@pytest.mark.django_db(transaction=True)
def test_from_the_command_line_it_prints_only_the_key_or_fails_with_a_message(role_users):
    env = {**os.environ, "DATABASE_URL": test_database_url()}

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", "create_api_token", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    made = run("otto")
    missing = run("nobody")

    assert made.returncode == 0, made.stderr
    assert made.stdout == f"{Token.objects.get(user__username='otto').key}\n"
    assert missing.returncode == 1 and missing.stdout == ""
    assert "There is no user named 'nobody'" in missing.stderr


def test_superusers_manage_tokens_in_the_admin_and_the_admin_role_does_not(role_users):
    create_api_token("otto")
    root = User.objects.create_superuser("root", password="pw")
    superuser, admin_role = Client(), Client()
    superuser.force_login(root)
    admin_role.force_login(role_users["admin"])

    listed = superuser.get("/admin/authtoken/tokenproxy/")

    assert listed.status_code == 200 and "otto" in listed.content.decode()
    assert superuser.get("/admin/authtoken/tokenproxy/add/").status_code == 200
    assert admin_role.get("/admin/authtoken/tokenproxy/").status_code == 403
