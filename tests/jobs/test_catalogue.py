"""The target catalogue: the dashboard page, the job form's help and /api/v1/targets/."""

from __future__ import annotations

import pytest

from jobs import registry
from jobs.models import Job
from tests.conftest import make_api_key
from tests.jobs.factories import make_job

SAMPLE = "tests.catalogue_sample"


def sample(path: str, times: int = 3, *extra: str, mode: str | None = None, **options):
    """Copy a file a few times."""


@pytest.fixture
def sample_target():
    # The API's schema declarations build serializers (with the target enum) when the URLs
    # are first imported: import them before this test-only target exists.
    import controlplane.urls  # noqa: F401

    registry.register(SAMPLE, overridable=("times",))(sample)
    yield registry.get_target(SAMPLE)
    registry._targets.pop(SAMPLE, None)


def api(client, path: str, **params):
    return client.get(f"/api/v1/targets/{path}", params)


@pytest.mark.django_db
def test_a_target_lists_its_parameters_defaults_overrides_and_jobs(client_for, sample_target):
    job = make_job("copy-reports", target=SAMPLE, args=["/tmp/x"])
    make_job("other", target="demo.noop")
    response = api(client_for("viewer"), f"{SAMPLE}/")
    assert response.status_code == 200
    body = response.json()
    assert body["description"] == "Copy a file a few times."
    assert body["module"] == __name__
    assert body["jobs"] == [{"id": job.pk, "name": "copy-reports"}]
    params = {p["name"]: p for p in body["parameters"]}
    assert list(params) == ["path", "times", "extra", "mode", "options"]
    assert params["path"] == {
        "name": "path", "kind": "positional_or_keyword", "type": "str", "required": True,
        "has_default": False, "default": None, "overridable": False,
    }  # fmt: skip
    assert params["times"]["default"] == 3 and params["times"]["overridable"] is True
    assert params["times"]["type"] == "int"
    assert params["extra"]["kind"] == "var_positional" and not params["extra"]["required"]
    assert params["mode"]["kind"] == "keyword" and params["mode"]["type"] == "str | null"
    assert params["mode"]["has_default"] is True and params["mode"]["default"] is None
    assert params["options"]["kind"] == "var_keyword" and params["options"]["type"] == "any"


@pytest.mark.django_db
def test_the_target_list_pages_like_every_list(client_for):
    client = client_for("viewer")
    names, url = [], "/api/v1/targets/?page_size=2"
    while url:
        body = client.get(url).json()
        assert set(body) == {"next", "previous", "results"}
        assert len(body["results"]) <= 2
        names += [t["name"] for t in body["results"]]
        url = body["next"]
    assert names == registry.target_names() and len(names) > 2
    # Back from the second page with its previous link.
    second = client.get(client.get("/api/v1/targets/?page_size=2").json()["next"]).json()
    first = client.get(second["previous"]).json()
    assert [t["name"] for t in first["results"]] == names[:2] and first["previous"] is None
    assert api(client, "", page_size=0).status_code == 400
    assert "cursor" in api(client, "", cursor="bogus").json()
    # An empty cursor (as a schema fuzzer sends it) is the first page, not a 500.
    empty = api(client, "", cursor="", page_size=2)
    assert [t["name"] for t in empty.json()["results"]] == names[:2]


@pytest.mark.django_db
def test_an_unknown_target_is_a_json_404_and_anonymous_is_refused(client_for):
    response = api(client_for("viewer"), "no.such/")
    assert response.status_code == 404 and "not a registered" in response.json()["detail"]
    assert api(client_for(None), "").status_code in (401, 403)


@pytest.mark.django_db
def test_a_token_reads_the_catalogue(role_users):
    from django.test import Client

    key = make_api_key(role_users["viewer"])
    response = Client().get("/api/v1/targets/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200
    assert "demo.sleep" in [t["name"] for t in response.json()["results"]]


@pytest.mark.django_db
def test_the_targets_page_shows_each_target_its_parameters_and_its_jobs(client_for):
    job = make_job("nightly-sleep", target="demo.sleep")
    page = client_for("viewer").get("/targets/").content.decode()
    assert "demo.sleep" in page and "Sleep for" in page
    assert "<code>seconds</code>" in page
    assert f'href="/jobs/{job.pk}/">nightly-sleep</a>' in page


@pytest.mark.django_db
def test_the_targets_page_warns_of_jobs_naming_a_target_not_registered_here(client_for):
    job = make_job("orphan")
    Job.objects.filter(pk=job.pk).update(target="gone.module.task")  # code removed since
    page = client_for("viewer").get("/targets/").content.decode()
    assert "not registered here" in page
    assert "gone.module.task" in page and f'href="/jobs/{job.pk}/">orphan</a>' in page


@pytest.mark.django_db
def test_the_job_form_help_describes_the_chosen_target(client_for):
    client = client_for("viewer")
    known = client.get("/targets/help/", {"target": "demo.sleep"}).content.decode()
    assert "Sleep for" in known and "<code>seconds</code>" in known
    unknown = client.get("/targets/help/", {"target": "<b>x"}).content.decode()
    assert "is not a registered job target" in unknown and "<b>" not in unknown
    assert client.get("/targets/help/", {"target": "x\x00"}).status_code == 400
    assert client_for(None).get("/targets/help/").status_code == 302  # to the login page


@pytest.mark.django_db
def test_the_admin_job_form_asks_for_the_target_help(client_for):
    page = client_for("admin").get("/admin/jobs/job/add/").content.decode()
    assert 'data-target-help="/targets/help/"' in page
    assert "jobs/target_help.js" in page
