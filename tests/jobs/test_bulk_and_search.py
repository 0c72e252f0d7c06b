"""Bulk rerun and cancel of executions (API and dashboard), and finding failures: the error
column, text search that never finds a value redacted for the reader, node prefixes and
the overview's counts linking to exactly the window they count."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection, transaction

from controlplane.models import AuditEntry
from jobs import bulk, queries
from jobs.models import Execution, database_now
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

BULK = "/api/v1/executions/bulk/"
LIST = "/api/v1/executions/"


@pytest.fixture
def job():
    return make_job("reports")


def failed(job, **fields) -> Execution:
    return make_execution(job, state="failed", error="ValueError: boom", **fields)


def post_bulk(client, body):
    return client.post(BULK, body, format="json")


# --- the bulk endpoint: who may -----------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "action", "status"),
    [
        ("anonymous", "rerun", 401),
        ("anonymous", "cancel", 401),
        ("viewer", "rerun", 403),
        ("viewer", "cancel", 403),
        ("operator", "rerun", 200),
        ("operator", "cancel", 200),
        ("token", "rerun", 200),
        ("admin", "rerun", 200),
        ("admin", "cancel", 200),
    ],
)
def test_bulk_actions_by_role(api, job, who, action, status):
    execution = failed(job) if action == "rerun" else make_execution(job, state="pending")
    response = post_bulk(api(who), {"action": action, "ids": [execution.pk], "reason": "r"})
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["acted"] == 1
    else:
        assert not AuditEntry.objects.filter(action__startswith="execution.bulk").exists()
        assert Execution.objects.count() == 1
        execution.refresh_from_db()
        assert execution.state == ("failed" if action == "rerun" else "pending")


def test_a_role_with_rerun_but_not_cancel_may_not_bulk_cancel(api, role_users, job):
    from django.contrib.auth.models import Permission

    operator = role_users["operator"]
    operator.groups.clear()
    for codename in ("view_execution", "rerun_execution"):
        operator.user_permissions.add(Permission.objects.get(codename=codename))
    execution = make_execution(job, state="pending")
    body = {"action": "cancel", "ids": [execution.pk], "reason": "r"}
    response = post_bulk(api("operator"), body)
    assert response.status_code == 403
    assert "cancel" in response.json()["detail"]


# --- the bulk endpoint: what it does --------------------------------------------------------


def test_a_bulk_rerun_by_ids_reruns_each_and_writes_one_audit_entry(api, job):
    first, second = failed(job), failed(job)
    pending = make_execution(job, state="pending")
    body = {"action": "rerun", "ids": [first.pk, second.pk, pending.pk, 999999], "reason": "flaky"}
    data = post_bulk(api("operator"), body).json()
    assert data["matched"] == 3 and data["acted"] == 2 and data["not_acted"] == 1
    assert data["executions"] == [first.pk, second.pk]
    assert data["missing"] == [999999]
    assert data["not_acted_reasons"] == [
        {"why": "it has not run yet", "count": 1, "executions": [pending.pk]}
    ]
    reruns = Execution.objects.filter(pk__in=data["created"])
    assert sorted(r.rerun_of_id for r in reruns) == [first.pk, second.pk]
    assert {r.reason for r in reruns} == {"flaky"} and {r.origin for r in reruns} == {"rerun"}
    (entry,) = AuditEntry.objects.all()  # one entry, none per execution
    assert entry.action == "execution.bulk_rerun" and entry.reason == "flaky"
    assert entry.actor == "otto" and entry.id == data["audit_entry"]
    assert entry.before == {"ids": [first.pk, second.pk, pending.pk, 999999]}
    assert entry.after["acted"] == [first.pk, second.pk]
    assert entry.after["created"] == data["created"]
    assert entry.after["not_acted"] == {"it has not run yet": [pending.pk]}


def test_a_bulk_cancel_by_filter_cancels_what_can_be_and_counts_the_rest(api, job):
    pending = make_execution(job, state="pending", node="")
    running = make_execution(job, state="running", node="node-a", finished_at=None)
    done = make_execution(job, state="succeeded")
    other = make_job("other")
    untouched = make_execution(other, state="pending")
    body = {"action": "cancel", "filter": {"job": job.pk}, "reason": "incident 42"}
    data = post_bulk(api("operator"), body).json()
    assert data["matched"] == 3 and data["acted"] == 2 and data["not_acted"] == 1
    assert sorted(data["executions"]) == sorted([pending.pk, running.pk])
    assert data["not_acted_reasons"][0]["why"] == "it has already finished"
    assert data["not_acted_reasons"][0]["executions"] == [done.pk]
    pending.refresh_from_db()
    running.refresh_from_db()
    untouched.refresh_from_db()
    assert pending.state == "cancelled" and pending.cancel_reason == "incident 42"
    assert running.state == "running" and running.cancel_requested_at is not None
    assert untouched.state == "pending"
    (entry,) = AuditEntry.objects.all()
    assert entry.action == "execution.bulk_cancel"
    assert entry.before == {"filter": {"job": job.pk}}
    assert sorted(entry.after["acted"]) == sorted([pending.pk, running.pk])


def test_a_bulk_action_over_the_cap_is_refused_naming_count_and_cap(api, job, settings):
    settings.SCHEDULER_BULK_LIMIT = 2
    executions = [failed(job) for _ in range(3)]
    response = post_bulk(api("operator"), {"action": "rerun", "filter": {}, "reason": "r"})
    assert response.status_code == 400
    message = response.json()["filter"][0]
    assert "3 executions match" in message and "at most 2" in message
    assert "SCHEDULER_BULK_LIMIT" in message
    ids = [e.pk for e in executions]
    response = post_bulk(api("operator"), {"action": "rerun", "ids": ids, "reason": "r"})
    assert response.status_code == 400 and "at most 2" in response.json()["ids"][0]
    assert Execution.objects.count() == 3
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "rerun", "ids": [1]}, "reason"),
        ({"action": "rerun", "ids": [1], "reason": "  "}, "reason"),
        ({"action": "rerun", "ids": [1], "reason": 5}, "reason"),
        ({"action": "delete", "ids": [1], "reason": "r"}, "action"),
        ({"action": "rerun", "reason": "r"}, "non_field_errors"),
        ({"action": "rerun", "ids": [1], "filter": {}, "reason": "r"}, "non_field_errors"),
        ({"action": "rerun", "ids": [], "reason": "r"}, "ids"),
        ({"action": "rerun", "ids": ["x"], "reason": "r"}, "ids"),
        ({"action": "rerun", "filter": {"stat": "failed"}, "reason": "r"}, "filter"),
        ({"action": "rerun", "filter": {"state": "broken"}, "reason": "r"}, "filter"),
        ({"action": "rerun", "filter": {"q": "ab"}, "reason": "r"}, "filter"),
        ({"action": "rerun", "filter": {"since": "1y"}, "reason": "r"}, "filter"),
        ({"action": "rerun", "filter": [], "reason": "r"}, "filter"),
    ],
)
def test_bad_bulk_bodies_are_400s_naming_the_field(api, job, body, field):
    failed(job)
    response = post_bulk(api("operator"), body)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Execution.objects.count() == 1 and not AuditEntry.objects.exists()


def test_an_unknown_filter_names_itself(api):
    body = {"action": "cancel", "filter": {"stat": "failed"}, "reason": "r"}
    response = post_bulk(api("operator"), body)
    assert "Unknown filters: stat." in response.json()["filter"]


def test_bulk_runs_in_batches(job, role_users, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH_SIZE", 2)
    executions = [failed(job) for _ in range(5)]
    selection = bulk.by_ids([e.pk for e in executions])
    outcome = bulk.run("rerun", selection, role_users["operator"], "r", {"ids": "..."})
    assert len(outcome.created) == 5
    assert AuditEntry.objects.count() == 1


# --- search -------------------------------------------------------------------------------


def test_q_finds_text_in_errors_and_arguments_any_case(api, job):
    in_error = make_execution(
        job, state="failed", error="psycopg.OperationalError: Connection refused"
    )
    in_args = make_execution(job, kwargs={"host": "db-replica-7"})
    make_execution(job, state="failed", error="Timeout")
    ids = [e["id"] for e in api("viewer").get(LIST, {"q": "connection REFUSED"}).json()["results"]]
    assert ids == [in_error.pk]
    ids = [e["id"] for e in api("viewer").get(LIST, {"q": "replica-7"}).json()["results"]]
    assert ids == [in_args.pk]
    # LIKE's wildcards are plain characters in q.
    assert api("viewer").get(LIST, {"q": "db-%-7"}).json()["results"] == []


def test_q_needs_three_characters(api):
    response = api("viewer").get(LIST, {"q": "ab"})
    assert response.status_code == 400 and "q" in response.json()


@pytest.mark.parametrize("who", ["viewer", "operator"])
def test_nobody_below_admin_finds_rows_by_a_redacted_secret(api, client_for, job, who):
    secret_args = make_execution(job, kwargs={"db_password": "hunter2xyz", "region": "eu"})
    secret_error = make_execution(
        job, state="failed", error="login failed: password=hunter2xyz for user app"
    )
    for q in ("hunter2xyz", "hunter2", 'password": "hunter', "password=hunter"):
        assert api(who).get(LIST, {"q": q}).json()["results"] == [], q
        page = client_for(who).get("/executions/", {"q": q}).content.decode()
        assert f"execution-{secret_args.pk}" not in page
        assert f"execution-{secret_error.pk}" not in page
    # What they can see is still found.
    ids = {e["id"] for e in api(who).get(LIST, {"q": "region"}).json()["results"]}
    assert ids == {secret_args.pk}
    ids = {e["id"] for e in api(who).get(LIST, {"q": "login failed"}).json()["results"]}
    assert ids == {secret_error.pk}
    # Nor can they act on them by searching: a bulk filter selects what the list shows.
    if who == "operator":
        body = {"action": "rerun", "filter": {"q": "hunter2xyz"}, "reason": "probe"}
        assert post_bulk(api(who), body).json()["matched"] == 0
    # The admin, who sees the values, finds them.
    ids = {e["id"] for e in api("admin").get(LIST, {"q": "hunter2xyz"}).json()["results"]}
    assert ids == {secret_args.pk, secret_error.pk}


def test_a_search_page_hidden_rows_do_not_shorten_the_listing(api, job):
    visible = [make_execution(job, kwargs={"note": f"match-{i}"}) for i in range(3)]
    for _ in range(5):
        make_execution(job, kwargs={"token": "match-secret"})
    response = api("operator").get(LIST, {"q": "match-", "page_size": 2})
    data = response.json()
    assert [e["id"] for e in data["results"]] == [visible[2].pk, visible[1].pk]
    rest = api("operator").get(data["next"]).json()
    assert [e["id"] for e in rest["results"]] == [visible[0].pk]


# --- node prefix, windows, the error column ------------------------------------------------


def test_the_node_filter_matches_a_prefix(api, client_for, job):
    a = make_execution(job, node="worker-eu-1")
    b = make_execution(job, node="worker-eu-2")
    make_execution(job, node="worker-us-1")
    ids = {e["id"] for e in api("viewer").get(LIST, {"node": "worker-eu"}).json()["results"]}
    assert ids == {a.pk, b.pk}
    page = client_for("viewer").get("/executions/", {"node": "worker-eu"}).content.decode()
    assert f"execution-{a.pk}" in page and "worker-us-1" not in page
    # An underscore or percent sign in a node id is itself, not a wildcard.
    assert api("viewer").get(LIST, {"node": "worker_eu"}).json()["results"] == []


def test_since_is_a_window_back_from_the_database_now(api, client_for, job):
    recent = failed(job)
    old = failed(job)
    Execution.objects.filter(pk=old.pk).update(created_at=database_now() - timedelta(hours=25))
    ids = [
        e["id"]
        for e in api("viewer").get(LIST, {"since": "24h", "state": "failed"}).json()["results"]
    ]
    assert ids == [recent.pk]
    page = client_for("viewer").get("/executions/", {"since": "24h"}).content.decode()
    assert f"execution-{recent.pk}" in page and f"execution-{old.pk}" not in page
    for bad in ("24", "0h", "1w", "400d"):
        assert api("viewer").get(LIST, {"since": bad}).status_code == 400


def test_the_overview_counts_link_to_exactly_the_window_they_count(client_for, job):
    recent = failed(job)
    old = failed(job)
    Execution.objects.filter(pk=old.pk).update(created_at=database_now() - timedelta(days=2))
    overview = client_for("viewer").get("/").content.decode()
    links = re.findall(r'href="(/executions/\?state=failed[^"]*)"', overview)
    assert links and all(link == "/executions/?state=failed&amp;since=24h" for link in links)
    row = re.search(r'state=failed&amp;since=24h">(\d+)</a>', overview)
    assert row and row[1] == "1"  # the count beside the link
    listing = client_for("viewer").get("/executions/?state=failed&since=24h").content.decode()
    assert f"execution-{recent.pk}" in listing and f"execution-{old.pk}" not in listing


def test_the_list_shows_the_errors_first_line_redacted_below_admin(client_for, job):
    make_execution(
        job, state="failed", error="connect failed: password=hunter2xyz\nTraceback line two"
    )
    viewer_page = client_for("viewer").get("/executions/").content.decode()
    assert "connect failed: password=••••" in viewer_page
    assert "hunter2xyz" not in viewer_page and "Traceback line two" not in viewer_page
    admin_page = client_for("admin").get("/executions/").content.decode()
    assert "connect failed: password=hunter2xyz" in admin_page


# --- the dashboard's bulk flow -------------------------------------------------------------


def test_only_operators_and_up_get_the_bulk_bar(client_for, job):
    failed(job)
    assert 'id="bulk-form"' not in client_for("viewer").get("/executions/").content.decode()
    page = client_for("operator").get("/executions/?state=failed").content.decode()
    assert 'id="bulk-form"' in page and "Select all 1 matching this filter" in page
    assert client_for("viewer").get("/executions/bulk/?action=rerun&ids=1").status_code == 403
    response = client_for(None).get("/executions/bulk/?action=rerun&ids=1")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_confirm_page_shows_the_count_and_changes_nothing(client_for, job):
    for _ in range(3):
        failed(job)
    client = client_for("operator")
    page = client.get("/executions/bulk/?action=rerun&all_matching=1&state=failed")
    text = page.content.decode()
    assert page.status_code == 200 and "Rerun <span data-bulk-confirm-count>3</span>" in text
    assert 'name="reason"' in text and "required" in text
    assert Execution.objects.count() == 3 and not AuditEntry.objects.exists()


def test_confirming_without_a_reason_does_nothing(client_for, job):
    execution = failed(job)
    client = client_for("operator")
    response = client.post("/executions/bulk/", {"action": "rerun", "ids": [execution.pk]})
    assert response.status_code == 400 and "A reason is required" in response.content.decode()
    assert Execution.objects.count() == 1 and not AuditEntry.objects.exists()


def test_confirming_acts_and_says_what_happened(client_for, job):
    done = failed(job)
    pending = make_execution(job, state="pending")
    client = client_for("operator")
    body = {"action": "cancel", "all_matching": "1", "job": job.pk, "reason": "stop it"}
    response = client.post("/executions/bulk/", body, follow=True)
    text = response.content.decode()
    assert response.redirect_chain[-1][0] == f"/executions/?job={job.pk}"
    assert "Cancelled 1 of 2 executions. 1 not: it has already finished." in text
    pending.refresh_from_db()
    done.refresh_from_db()
    assert pending.state == "cancelled" and done.state == "failed"
    assert AuditEntry.objects.get().action == "execution.bulk_cancel"


def test_the_dashboard_refuses_over_the_cap(client_for, job, settings):
    settings.SCHEDULER_BULK_LIMIT = 1
    failed(job)
    failed(job)
    response = client_for("operator").get("/executions/bulk/?action=rerun&all_matching=1")
    assert response.status_code == 400
    assert "2 executions match; a bulk action acts on at most 1" in response.content.decode()


# --- the query plans at scale ---------------------------------------------------------------


def explain(sql: str, params) -> str:
    """EXPLAIN with sequential scans discouraged: the test table is small, and what is
    asked is which index the planner serves the query with (tests/jobs/test_indexes.py
    names each index's query the same way)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_search_and_prefix_queries_are_served_by_their_indexes(job):
    """EXPLAIN of the list's own queries for q and a node prefix, over a few thousand
    rows of which a tenth have an error."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO jobs_execution (job_id, scheduled_for, origin, state, attempt, args,
                kwargs, node, error, traceback, note, created_at, run_after)
            SELECT %s, now(), 'schedule', 'succeeded', 1, '[]', jsonb_build_object('n', i),
                'node-' || (i %% 50), CASE WHEN i %% 10 = 0 THEN 'Error ' || i ELSE '' END,
                '', '', now() - make_interval(secs => i), now()
            FROM generate_series(1, 5000) AS i
            """,
            [job.pk],
        )
        cursor.execute("ANALYZE jobs_execution")
    found = explain(*queries.filter_executions(q="needle-xyz").values("id").query.sql_with_params())
    assert "BitmapOr" in found
    assert "execution_error_trgm_idx" in found and "execution_args_trgm_idx" in found
    found = explain(*queries.filter_executions(node="node-4").values("id").query.sql_with_params())
    assert "execution_node_prefix_idx" in found and "~>=~" in found


def test_the_overviews_recent_failures_redact_the_error_below_admin(client_for, job):
    make_execution(job, state="failed", error="connect failed: password=hunter2xyz")
    assert "hunter2xyz" not in client_for("viewer").get("/").content.decode()
    assert "hunter2xyz" in client_for("admin").get("/").content.decode()


@pytest.mark.parametrize("bad", ["x", "0", "-1", str(2**63)])
def test_the_confirm_page_refuses_a_bad_id(client_for, bad):
    response = client_for("operator").get(f"/executions/bulk/?action=rerun&ids={bad}")
    assert response.status_code == 400


def test_a_search_page_cut_short_by_hidden_rows_links_on_to_the_rest(api, job, monkeypatch):
    monkeypatch.setattr(queries, "KEEP_CHUNK", 2)
    monkeypatch.setattr(queries, "KEEP_SCAN_CHUNKS", 1)
    visible = make_execution(job, kwargs={"note": "match-me"})
    hidden = {make_execution(job, kwargs={"token": "match-me"}).pk for _ in range(5)}
    url, seen, pages = LIST + "?q=match-me&page_size=1", [], 0
    while url and pages < 10:
        data = api("viewer").get(url).json()
        seen += [e["id"] for e in data["results"]]
        url, pages = data["next"], pages + 1
    assert seen == [visible.pk] and not hidden & set(seen)
    assert pages > 1  # the first pages, cut short by hidden rows, linked on
