"""The jobs list at scale: search, filters, sort, pages, row menus, the job-name lookup."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import actions, queries
from jobs.job_list import JOBS_PER_PAGE
from jobs.models import Job, Trigger
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def names(response) -> list[str]:
    return [job.name for job in response.context["jobs"]]


@pytest.fixture
def jobs():
    """Five jobs: two failing, one paused, one celery, one with no trigger."""
    made = {
        "billing sync": make_job("billing sync", target="demo.echo"),
        "billing export": make_job("billing export", target="demo.noop", paused=True),
        "cache warmup": make_job("cache warmup", target="demo.noop"),
        "nightly report": make_job(
            "nightly report", executor="celery", target="", celery_task="reports.nightly"
        ),  # fmt: skip
        "manual cleanup": make_job("manual cleanup", target="demo.noop"),
    }
    Trigger.objects.create(job=made["billing sync"], kind="interval", interval=3600)
    Trigger.objects.create(job=made["billing export"], kind="interval", interval=60)
    Trigger.objects.create(job=made["cache warmup"], kind="interval", interval=60)
    Trigger.objects.create(job=made["nightly report"], kind="interval", interval=600)
    make_execution(made["billing sync"], state="failed", created_at=BASE)
    make_execution(made["cache warmup"], state="succeeded", created_at=BASE)
    make_execution(made["cache warmup"], state="timed_out", created_at=BASE + timedelta(hours=1))
    make_execution(made["nightly report"], state="failed", created_at=BASE)
    make_execution(made["nightly report"], state="succeeded", created_at=BASE + timedelta(hours=2))
    return made


def test_it_searches_by_name_case_insensitively(client_for, jobs):
    response = client_for("viewer").get("/jobs/?q=BILLING")
    assert names(response) == ["billing export", "billing sync"]
    assert "2 jobs matches" not in response.content.decode()
    assert "2 jobs match" in response.content.decode()


@pytest.mark.parametrize(
    "query, expected",
    [
        ("paused=yes", ["billing export"]),
        ("paused=no", ["billing sync", "cache warmup", "manual cleanup", "nightly report"]),
        ("failing=yes", ["billing sync", "cache warmup"]),
        ("failing=no", ["billing export", "manual cleanup", "nightly report"]),
        ("executor=celery", ["nightly report"]),
        ("target=demo.echo", ["billing sync"]),
        ("target=reports.nightly", ["nightly report"]),
        ("q=billing&paused=no", ["billing sync"]),
    ],
)
def test_filters_narrow_the_list(client_for, jobs, query, expected):
    assert names(client_for("viewer").get(f"/jobs/?{query}")) == expected


def test_sorts_by_name_next_fire_and_last_result(client_for, jobs):
    client = client_for("viewer")
    assert names(client.get("/jobs/?sort=-name"))[0] == "nightly report"
    # Soonest next fire first (hourly job last among those that fire); paused job and a
    # job with no trigger have none and come last.
    by_fire = names(client.get("/jobs/?sort=next_fire"))
    assert by_fire[:2] == ["cache warmup", "nightly report"]
    assert by_fire[2] == "billing sync"
    assert set(by_fire[3:]) == {"billing export", "manual cleanup"}
    # Failures first (newest first), then other results, then jobs that never ran.
    by_result = names(client.get("/jobs/?sort=last_result"))
    assert by_result[:2] == ["cache warmup", "billing sync"]
    assert by_result[2] == "nightly report"
    assert by_result[3:] == ["billing export", "manual cleanup"]


def test_bad_parameters_show_a_warning_not_an_error(client_for, jobs):
    response = client_for("viewer").get("/jobs/?sort=bogus&paused=maybe")
    assert response.status_code == 200
    assert "Fix the filters above" in response.content.decode()


def test_pages_hold_fifty_jobs_and_keep_the_filters(client_for):
    Job.objects.bulk_create(
        Job(name=f"bulk {i:03d}", target="demo.noop") for i in range(JOBS_PER_PAGE + 5)
    )
    make_job("other", target="demo.noop")
    client = client_for("viewer")
    first = client.get("/jobs/?q=bulk&sort=-name")
    assert len(first.context["jobs"]) == JOBS_PER_PAGE
    assert names(first)[0] == "bulk 054"
    html = first.content.decode()
    assert "page 1 of 2" in html
    next_link = re.search(r'<a rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert "q=bulk" in next_link and "sort=-name" in next_link and "page=2" in next_link
    second = client.get(next_link)
    assert names(second) == [f"bulk {i:03d}" for i in range(4, -1, -1)]
    assert 'rel="prev"' in second.content.decode()
    # A page past the end shows the last one.
    assert names(client.get("/jobs/?q=bulk&sort=-name&page=99")) == names(second)


def test_each_job_is_one_row_with_a_menu_and_its_last_runs(client_for, jobs):
    html = client_for("operator").get("/jobs/").content.decode()
    job = jobs["billing sync"]
    row = re.search(rf'<tr id="job-{job.pk}" class="job-row">(.*?)</tr>', html, re.S).group(1)
    assert f'hx-get="/jobs/{job.pk}/menu/?back=/jobs/"' in row
    # The last runs as a strip of squares, oldest first, each linking to its run.
    strip = re.search(r'<td class="job-last-runs">(.*?)</td>', row, re.S).group(1)
    runs = list(job.executions.order_by("created_at", "id"))
    marks = re.findall(r'class="run-mark s-(\w+)" href="/executions/(\d+)/"', strip)
    assert marks == [(e.state, str(e.pk)) for e in runs][-queries.LIST_STRIP_RUNS :]
    assert '<th class="job-last-runs">Last runs</th>' in html
    # The row itself has no forms: no reason boxes, no pause buttons.
    assert "<form" not in row and 'name="reason"' not in row


def test_the_page_costs_the_same_queries_for_more_jobs(client_for):
    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    client = client_for("operator")
    for i in range(2):
        j = make_job(f"job-{i}")
        Trigger.objects.create(job=j, kind="interval", interval=60)
        make_execution(j, state="failed")
    urls = ["/jobs/", "/jobs/?q=job&sort=last_result&failing=yes", "/jobs/?sort=next_fire"]
    few = [count(url) for url in urls]
    for i in range(2, 70):
        j = make_job(f"job-{i:02d}")
        Trigger.objects.create(job=j, kind="interval", interval=60)
        Trigger.objects.create(job=j, kind="cron", cron="*/5 * * * *")
        make_execution(j)
        make_execution(j, state="failed")
    assert [count(url) for url in urls] == few


def test_the_menu_offers_what_the_role_may_do(client_for, jobs):
    job = jobs["billing sync"]
    trigger = job.triggers.get()
    url = f"/jobs/{job.pk}/menu/?back=/jobs/%3Fq%3Dbilling"
    viewer = client_for("viewer").get(url).content.decode()
    assert f'href="/jobs/{job.pk}/"' in viewer
    assert "<form" not in viewer
    operator = client_for("operator").get(url).content.decode()
    assert f'action="/jobs/{job.pk}/pause/"' in operator
    assert f'action="/triggers/{trigger.pk}/pause/"' in operator
    assert f'action="/jobs/{job.pk}/run/"' in operator
    assert 'name="next" value="/jobs/?q=billing"' in operator
    assert "Edit in the admin" not in operator
    assert "Edit in the admin" in client_for("admin").get(url).content.decode()
    # A paused job offers resume.
    actions.set_job_paused(job, True, None)
    assert f'action="/jobs/{job.pk}/resume/"' in client_for("operator").get(url).content.decode()


def test_the_menu_does_not_send_actions_back_to_another_site(client_for, jobs):
    job = jobs["billing sync"]
    html = client_for("operator").get(f"/jobs/{job.pk}/menu/?back=//evil.example/").content
    assert b"evil.example" not in html


def test_pausing_from_the_menu_answers_with_the_row(client_for, jobs):
    job = jobs["cache warmup"]
    response = client_for("operator").post(
        f"/jobs/{job.pk}/pause/",
        {"next": "/jobs/", "reason": "maintenance"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET=f"job-{job.pk}",
    )
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="job-{job.pk}" class="job-row">')
    assert "job paused" in html and "Paused job cache warmup." in html


def test_the_table_alone_answers_an_htmx_filter(client_for, jobs):
    response = client_for("viewer").get(
        "/jobs/?q=cache", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="job-table"
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="job-table">')
    assert "<html" not in html and "cache warmup" in html


# --- the job-name lookup --------------------------------------------------------------


def test_names_lists_matching_jobs_prefix_matches_first(client_for, jobs):
    html = client_for("viewer").get("/jobs/names/?q=sync").content.decode()
    assert re.findall(r'<option value="([^"]+)"', html) == ["billing sync"]
    html = client_for("viewer").get("/jobs/names/?q=c").content.decode()
    found = re.findall(r'<option value="([^"]+)"', html)
    assert found[0] == "cache warmup"  # starts with "c"
    assert set(found) == {"cache warmup", "billing sync", "manual cleanup"}


def test_names_escapes_and_is_bounded(client_for):
    make_job('<b>"x"</b>', target="demo.noop")
    Job.objects.bulk_create(Job(name=f"many {i:02d}", target="demo.noop") for i in range(30))
    client = client_for("viewer")
    assert len(re.findall("<option", client.get("/jobs/names/?q=many").content.decode())) == 20
    html = client.get("/jobs/names/?q=%3Cb").content.decode()
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_odd_input_gets_no_suggestions_or_a_clear_error_never_a_500(client_for, jobs):
    client = client_for("viewer")
    # A NUL anywhere in a query string is refused before any view (a 400).
    assert client.get("/jobs/names/", {"q": "\x00"}).status_code == 400
    response = client.get("/jobs/names/", {"q": "x" * 201})
    assert response.status_code == 200 and b"<option" not in response.content
    assert "Fix the filters above" in client.get("/jobs/", {"q": "x" * 201}).content.decode()
    for job in ("x" * 201, "²", "9" * 30):
        response = client.get("/executions/", {"job": job})
        assert response.status_code == 200 and response.context["page"] is None


def test_names_and_menu_need_a_login_and_the_view_permission(client_for, jobs, django_user_model):
    job = jobs["billing sync"]
    for url in ("/jobs/names/?q=b", f"/jobs/{job.pk}/menu/", "/jobs/?q=b"):
        response = client_for(None).get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
        for role in ("viewer", "operator", "admin"):
            assert client_for(role).get(url).status_code == 200, (role, url)
    nobody = django_user_model.objects.create_user("no-role", password="pw")
    from django.test import Client

    client = Client()
    client.force_login(nobody)
    for url in ("/jobs/names/?q=b", f"/jobs/{job.pk}/menu/", "/jobs/"):
        assert client.get(url).status_code == 403, url
    assert client_for("viewer").post("/jobs/names/").status_code == 405
    assert client_for("viewer").get("/jobs/999999/menu/").status_code == 404


# --- the executions page's job filter -------------------------------------------------


def test_executions_filter_takes_a_job_name_or_id(client_for, jobs):
    job = jobs["cache warmup"]
    client = client_for("viewer")
    for value in (job.name, str(job.pk)):
        response = client.get("/executions/", {"job": value})
        rows = response.context["page"].rows
        assert len(rows) == 2 and {e.job_id for e in rows} == {job.pk}
    html = client.get("/executions/").content.decode()
    assert 'list="job-names"' in html and 'data-names-url="/jobs/names/"' in html
    assert '<select name="job"' not in html


def test_a_job_named_like_an_id_wins_over_the_id(client_for, jobs):
    numbered = make_job(str(jobs["cache warmup"].pk), target="demo.noop")
    response = client_for("viewer").get("/executions/", {"job": numbered.name})
    assert response.context["form"].cleaned_data["job"] == numbered


def test_executions_filter_names_an_unknown_job(client_for, jobs):
    response = client_for("viewer").get("/executions/", {"job": "no such job"})
    assert response.context["page"] is None
    assert "No job named" in response.content.decode()


# --- API ------------------------------------------------------------------------------


def test_api_searches_jobs_by_name(client_for, jobs):
    client = client_for("viewer")
    body = client.get("/api/v1/jobs/", {"q": "billing"}).json()
    assert [job["name"] for job in body["results"]] == ["billing export", "billing sync"]
    assert len(client.get("/api/v1/jobs/", {"q": ""}).json()["results"]) == 5
    assert client.get("/api/v1/jobs/", {"q": "x" * 201}).status_code == 400
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    parameters = schema["paths"]["/api/v1/jobs/"]["get"]["parameters"]
    assert "q" in {p["name"] for p in parameters}
