"""The OpenAPI schema, the Swagger UI page (served from local assets), and API tokens.

The schema and the docs page need a login (a session or a token) unless API_DOCS_PUBLIC
is set: the schema maps the whole attack surface. Swagger UI runs under the site's CSP:
its start-up script is a separate request, not inline code.
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
from rest_framework.routers import DefaultRouter
from rest_framework.test import APIClient

from controlplane.models import ApiToken, AuditEntry
from locks import api as locks_api
from tests.conftest import ROOT, test_database_url

pytestmark = pytest.mark.django_db

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


@pytest.fixture
def reader(client_for) -> Client:
    """Any role may read the schema and the docs; the viewer's is the smallest."""
    return client_for("viewer")


# --- the schema ---------------------------------------------------------------------------


def test_the_schema_and_the_docs_need_a_login():
    anonymous = Client()
    schema = anonymous.get(SCHEMA)
    assert schema.status_code == 401 and schema.json()["detail"]
    docs = anonymous.get(DOCS)
    assert docs.status_code == 302 and docs["Location"] == f"/login/?next={DOCS}"


def test_the_schema_answers_a_token(role_users):
    from tests.conftest import make_api_key

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_api_key(role_users['viewer'])}")
    assert client.get(SCHEMA).status_code == 200


def test_api_docs_public_opens_the_schema_and_the_docs_to_anonymous_users():
    env = {**os.environ, "API_DOCS_PUBLIC": "1", "ALLOWED_HOSTS": "testserver"}
    env["DATABASE_URL"] = test_database_url()
    code = (
        "import django; django.setup(); from django.test import Client; "
        "c = Client(); print(c.get('/api/schema/').status_code, c.get('/api/docs/').status_code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**env, "DJANGO_SETTINGS_MODULE": "controlplane.settings"},
    )  # fmt: skip
    assert result.stdout.split() == ["200", "200"], result.stderr


def test_the_schema_is_openapi_3_in_yaml_by_default(reader):
    response = reader.get(SCHEMA)
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
def test_the_schema_comes_as_json_on_request(reader, query, headers, content_type):
    as_yaml = schema_from(reader.get(SCHEMA))
    response = reader.get(SCHEMA, query, headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == content_type
    assert json.loads(response.content) == as_yaml


def test_the_schema_declares_token_and_session_auth_and_every_answer_of_the_lock_actions(
    reader,
):
    schema = schema_from(reader.get(SCHEMA, {"format": "json"}))
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
    assert set(paths["/api/v1/locks/{name}/"]["get"]["responses"]) == {
        "200", "400", "401", "403", "404"
    }  # fmt: skip
    assert set(paths["/api/v1/nodes/{id}/"]["get"]["responses"]) == {"200", "401", "403", "404"}
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


def test_the_docs_page_is_swagger_ui_from_local_static_files_only(reader):
    response = reader.get(DOCS)
    page = response.content.decode()

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    refs = asset_refs(page)
    assert any(ref.endswith("swagger-ui-bundle.js") for ref in refs)
    assert any(ref.endswith("swagger-ui.css") for ref in refs)
    # Its start-up script is a request of its own: no inline <script> or <style> (CSP).
    assert f"{DOCS}?script=" in refs
    assert "<style" not in page and "<script>" not in page
    for ref in refs:
        if ref == f"{DOCS}?script=":
            continue
        assert ref.startswith(STATIC), ref  # no CDN: same host, under STATIC_URL
        assert not ref.startswith("//"), ref
        assert finders.find(ref.removeprefix(STATIC)), f"{ref} is not in any static dir"
    assert "http://" not in page and "https://" not in page
    script = reader.get(f"{DOCS}?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert SCHEMA in script.content.decode()


def test_a_live_server_serves_the_docs_page_its_assets_and_the_schema(live_server, role_users):
    from tests.conftest import make_api_key

    # The page's own requests carry the browser's session; a token stands in for it here.
    key = make_api_key(role_users["viewer"])

    def fetch(url: str):
        request = urllib.request.Request(
            f"{live_server.url}{url}", headers={"Authorization": f"Token {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()

    client = Client()
    client.force_login(role_users["viewer"])
    page = client.get(DOCS).content
    refs = [ref for ref in asset_refs(page.decode()) if ref.startswith(STATIC)]
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
    token = ApiToken.objects.get(user=role_users["operator"])
    assert (token.name, token.expiry) == ("cli", None)
    assert key not in (token.digest, token.token_key)  # only a hash and the first characters
    entry = AuditEntry.objects.get()
    assert (entry.user, entry.actor, entry.action) == (
        None, "manage.py create_api_token", "token.create"
    )  # fmt: skip
    assert (entry.object_type, entry.object_id) == ("user", "otto")
    assert key not in json.dumps([entry.before, entry.after, entry.reason])
    assert entry.after["name"] == "cli" and key.startswith(entry.after["key_starts"])
    assert status_with(key) == 200


def test_the_key_of_an_existing_token_cannot_be_printed_again(role_users):
    create_api_token("otto")
    with pytest.raises(CommandError, match="cannot be shown again"):
        create_api_token("otto")
    assert ApiToken.objects.count() == 1 and AuditEntry.objects.count() == 1


def test_named_tokens_live_side_by_side(role_users):
    first = create_api_token("otto", "--name", "ci").strip()
    second = create_api_token("otto", "--name", "deploy", "--expires-days", "30").strip()
    assert status_with(first) == 200 and status_with(second) == 200
    deploy = ApiToken.objects.get(name="deploy")
    assert deploy.expiry is not None and not deploy.expired


def test_rotate_replaces_the_token_and_the_old_one_stops_working(role_users):
    old = create_api_token("otto").strip()
    new = create_api_token("otto", "--rotate").strip()

    assert new != old
    assert ApiToken.objects.filter(user=role_users["operator"]).count() == 1
    assert status_with(old) == 401 and status_with(new) == 200
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "reason"))
    assert actions == [("token.create", ""), ("token.revoke", "rotated"), ("token.create", "")]


def test_rotate_creates_a_token_for_a_user_without_one(role_users):
    key = create_api_token("ada", "--rotate").strip()
    assert status_with(key) == 200
    assert AuditEntry.objects.get().action == "token.create"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nobody"], "There is no user named 'nobody'"),
        (["otto", "--expires-days", "0"], "--expires-days must be between"),
        (["otto", "--name", " "], "--name must be"),
    ],
)
def test_bad_arguments_are_a_clear_error_and_create_nothing(role_users, args, message):
    with pytest.raises(CommandError, match=message):
        create_api_token(*args)
    assert not ApiToken.objects.exists() and not AuditEntry.objects.exists()


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
    key = made.stdout.strip()
    assert made.stdout == f"{key}\n" and len(key) == 64
    assert status_with(key) == 200
    assert missing.returncode == 1 and missing.stdout == ""
    assert "There is no user named 'nobody'" in missing.stderr
