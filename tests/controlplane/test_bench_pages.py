"""bench_pages prints per-page server-side timings, then one JSON line (targets not asserted)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.http import Http404, HttpResponse
from django.urls import path

PAGES = (
    "executions", "executions_filtered", "executions_search", "overview", "locks", "job",
    "jobs", "jobs_search", "jobs_sorted", "jobs_failing",
)  # fmt: skip


@pytest.fixture
def bench_output(db):
    call_command("seed_history", executions=300, jobs=3, days=2, stdout=StringIO())
    out = StringIO()
    call_command("bench_pages", requests=2, stdout=out)
    lines = out.getvalue().strip().splitlines()
    return lines[:-1], json.loads(lines[-1])


def test_it_prints_a_table_and_a_json_line_with_every_page(bench_output):
    table, summary = bench_output
    assert "target p95 < 150 ms" in table[0]
    assert table[1].split()[:3] == ["page", "status", "queries"]
    for key in PAGES:
        row = next(line for line in table if line.startswith(f"{key} "))
        assert len(row.split()) >= 6, row
        page = summary["pages"][key]
        assert page["p50_ms"] > 0 and page["p95_ms"] > 0 and page["max_ms"] > 0
        assert page["p50_ms"] <= page["p95_ms"] <= page["max_ms"]
        assert page["queries"] > 0
    assert summary["requests"] == 2
    assert summary["target_p95_ms"] == 150
    assert summary["pages"]["executions_filtered"]["url"].startswith("/executions/?job=")
    assert "state=failed" in summary["pages"]["executions_filtered"]["url"]
    pages = summary["pages"]
    assert pages["executions_search"]["url"] == "/executions/?q=upstream+refused"
    job_id = pages["executions_filtered"]["url"].split("job=")[1].split("&")[0]
    assert pages["job"]["url"] == f"/jobs/{job_id}/"
    assert pages["jobs_search"]["url"] == "/jobs/?q=seed+job+0"  # "seed job 001" less 2
    assert pages["jobs_sorted"]["url"] == "/jobs/?sort=last_result"
    # Every page has the target (and the figures say whether it was met).
    assert {p["target_p95_ms"] for p in pages.values()} == {150}
    assert all(isinstance(p["meets_target"], bool) for p in pages.values())
    server = summary["server"]
    assert server["version"] and server["fsync"] in ("on", "off")
    assert any(line.startswith("server: PostgreSQL ") for line in table)


def test_every_page_answers_200_as_the_bench_superuser(bench_output):
    table, summary = bench_output
    statuses = {key: summary["pages"][key]["status"] for key in PAGES}
    assert statuses == dict.fromkeys(PAGES, 200)
    assert not any(line.startswith("NOT OK") for line in table)
    assert User.objects.get(username="bench").is_superuser


def _missing(request):
    raise Http404("not built yet")


def _fine(request):
    return HttpResponse("ok")


# For the test below (pytest.mark.urls): the locks page is missing.
urlpatterns = [
    path("", _fine, name="overview"),
    path("executions/", _fine, name="execution-list"),
    path("locks/", _missing, name="lock-list"),
    path("jobs/", _fine, name="job-list"),
    path("overview/trends/", _fine, name="overview-trends"),
]


@pytest.mark.urls("tests.controlplane.test_bench_pages")
def test_a_page_that_does_not_answer_200_is_reported(db):
    out = StringIO()
    call_command("bench_pages", requests=1, stdout=out)
    lines = out.getvalue().strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["pages"]["locks"]["status"] == 404
    assert summary["pages"]["overview"]["status"] == 200
    assert summary["all_ok"] is False
    assert any(line.startswith("NOT OK: locks (/locks/) answered 404") for line in lines)
