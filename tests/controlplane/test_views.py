"""The overview and audit log pages, and the health endpoint, for every role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane import audit
from controlplane.models import AuditEntry
from jobs.models import Execution, Trigger, database_now
from locks.models import Lock, SchedulerNode
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db

ROLES = ["viewer", "operator", "admin"]
HTMX = {"HX-Request": "true"}
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def execution(job, state="succeeded", ago=timedelta(minutes=5), **fields) -> Execution:
    """An execution created ``ago`` before database now."""
    created = database_now() - ago
    fields.setdefault("scheduled_for", created)
    fields.setdefault("origin", "manual")
    return Execution.objects.create(job=job, state=state, created_at=created, **fields)


def entry(when: datetime, actor="otto", action="job.run_now", object_type="job", object_id="1",
          **fields) -> AuditEntry:  # fmt: skip
    return AuditEntry.objects.create(
        created_at=when, actor=actor, action=action, object_type=object_type,
        object_id=object_id, **fields,
    )  # fmt: skip


# --- access -----------------------------------------------------------------------------


def test_healthz_is_reachable_anonymously(client_for):
    response = client_for(None).get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


@pytest.mark.parametrize("url", ["/", "/audit/", "/tokens/"])
def test_it_redirects_anonymous_users_to_login(client_for, url):
    response = client_for(None).get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url", ["/", "/audit/", "/tokens/"])
def test_every_role_sees_the_overview_the_audit_log_and_its_tokens(client_for, role, url):
    assert client_for(role).get(url).status_code == 200


@pytest.mark.parametrize("url", ["/", "/audit/"])
def test_a_user_without_a_role_gets_403(client, django_user_model, url):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw"))
    assert client.get(url).status_code == 403


# --- overview ---------------------------------------------------------------------------


def test_the_overview_shows_live_and_dead_nodes_with_heartbeat_age(client_for):
    now = database_now()
    SchedulerNode.objects.create(id="live-1", hostname="a", pid=1,
                                 last_heartbeat=now - timedelta(seconds=2))  # fmt: skip
    SchedulerNode.objects.create(id="dead-1", hostname="b", pid=2, state="dead",
                                 declared_dead_by="live-1",
                                 last_heartbeat=now - timedelta(minutes=5))  # fmt: skip
    SchedulerNode.objects.create(id="stopped-1", hostname="c", pid=3, state="stopped",
                                 last_heartbeat=now - timedelta(hours=3))  # fmt: skip

    page = client_for("viewer").get("/").content.decode()

    live, down = page.split("Dead and stopped")
    assert "live-1" in live and "2s ago" in live
    assert "dead-1" in down and "5m ago" in down and "by live-1" in down
    assert "stopped-1" in down and "3h ago" in down
    assert 'class="badge state-dead">dead<' in down


def test_the_overview_flags_a_live_node_past_the_timeout_and_says_when_none_is_live(
    client_for, settings
):
    settings.SCHEDULER_NODE_TIMEOUT = 30
    client = client_for("viewer")
    assert "No live scheduler node" in client.get("/").content.decode()
    SchedulerNode.objects.create(id="quiet", hostname="a", pid=1,
                                 last_heartbeat=database_now() - timedelta(seconds=45))  # fmt: skip
    page = client.get("/").content.decode()
    assert "45s ago" in page and ">overdue<" in page


def test_the_overview_warns_about_stale_locks_with_a_link(client_for):
    now = database_now()
    client = client_for("viewer")
    Lock.objects.create(name="fine", holder="w", locked_at=now, token=1,
                        locked_until=now + timedelta(minutes=1))  # fmt: skip
    assert 'id="stale-warning"' not in client.get("/").content.decode()

    SchedulerNode.objects.create(id="gone", hostname="h", pid=1, state="dead")
    Lock.objects.create(name="stuck", holder="gone", locked_at=now, token=1,
                        locked_until=now + timedelta(minutes=1))  # fmt: skip
    page = client.get("/").content.decode()
    assert 'id="stale-warning"' in page
    assert "1 stale lock:" in page and 'href="/locks/"' in page


def test_the_overview_counts_executions_by_state_over_the_last_24_hours(client_for):
    job = make_job("j")
    for _ in range(3):
        execution(job, "succeeded")
    execution(job, "failed", ago=timedelta(hours=23))
    execution(job, "failed", ago=timedelta(hours=25))  # too old to count
    execution(job, "running", ago=timedelta(seconds=1))

    response = client_for("viewer").get("/")

    counts = dict(response.context["state_counts"])
    assert counts["succeeded"] == 3 and counts["failed"] == 1 and counts["running"] == 1
    assert counts["pending"] == 0 and len(counts) == len(Execution.State.values)
    # Each count links to exactly the window it counts.
    assert 'href="/executions/?state=failed&amp;since=24h"' in response.content.decode()


def test_the_overview_lists_the_next_due_triggers_of_unpaused_jobs(client_for):
    now = database_now()
    job, paused_job = make_job("nightly"), make_job("held back", paused=True)

    def trigger(job, seconds, **fields):
        when = now + timedelta(seconds=seconds)
        return Trigger.objects.bulk_create(
            [Trigger(job=job, kind="once", run_at=when, next_fire_at=when, **fields)]
        )[0]

    later, sooner = trigger(job, 600), trigger(job, 30)
    trigger(job, 10, paused=True)
    trigger(paused_job, 5)
    for i in range(12):
        trigger(job, 1000 + i)

    response = client_for("viewer").get("/")

    upcoming = response.context["upcoming"]
    assert [t.pk for t in upcoming[:2]] == [sooner.pk, later.pk] and len(upcoming) == 10
    page = response.content.decode()
    assert "in 30s" in page and f'href="/jobs/{job.pk}/">nightly<' in page
    assert "held back" not in page


def test_the_overview_lists_recent_failures_linking_to_each_execution(client_for):
    job = make_job("j")
    failures = [
        execution(job, state, ago=timedelta(minutes=m), error=f"boom {m}")
        for m, state in enumerate(["failed", "timed_out", "abandoned"] * 4, start=1)
    ]
    execution(job, "succeeded", ago=timedelta(seconds=1))

    response = client_for("viewer").get("/")

    shown = response.context["failures"]
    assert [e.pk for e in shown] == [e.pk for e in failures[:10]]
    page = response.content.decode()
    assert f'href="/executions/{failures[0].pk}/"' in page and "boom 1" in page
    assert f'href="/executions/{failures[11].pk}/"' not in page


def test_the_overview_shows_no_failure_older_than_a_week(client_for):
    old = execution(make_job("j"), "failed", ago=timedelta(days=8))
    page = client_for("viewer").get("/").content.decode()
    assert f'href="/executions/{old.pk}/"' not in page
    assert "No failed, timed-out or abandoned execution in the last 7 days." in page


def test_the_overview_shows_recent_fire_lag(client_for):
    job = make_job("j")
    now = database_now()
    for i, lag_ms in enumerate([10, 20, 30, 400]):
        when = now - timedelta(minutes=1, seconds=i)
        Execution.objects.create(
            job=job, origin="schedule", state="succeeded", scheduled_for=when, created_at=when,
            dispatched_at=when + timedelta(milliseconds=lag_ms),
        )  # fmt: skip
    old = now - timedelta(minutes=20)
    Execution.objects.create(job=job, origin="schedule", state="succeeded", scheduled_for=old,
                             created_at=old, dispatched_at=old + timedelta(seconds=9))  # fmt: skip

    response = client_for("viewer").get("/")

    lag = response.context["lag"]
    assert (lag.fires, lag.p50_ms, lag.max_ms) == (4, 25.0, 400.0)
    assert ">25ms<" in response.content.decode() and ">400ms<" in response.content.decode()


def test_the_overview_live_sections_answer_htmx_polling_alone(client_for):
    SchedulerNode.objects.create(id="live-1", hostname="a", pid=1)
    response = client_for("viewer").get("/", headers=HTMX)
    page = response.content.decode()
    assert "<html" not in page and "live-1" in page
    assert 'hx-trigger="every 5s"' in page and 'id="overview-live"' in page
    assert "HX-Request" in response["Vary"]


def test_a_job_named_like_a_script_renders_escaped_on_the_overview(client_for):
    job = make_job(XSS)
    execution(job, "failed", error=XSS)
    when = database_now() + timedelta(minutes=1)
    Trigger.objects.bulk_create([Trigger(job=job, kind="once", run_at=when, next_fire_at=when)])

    page = client_for("viewer").get("/").content.decode()

    assert XSS not in page
    assert page.count(XSS_ESCAPED) >= 3  # upcoming fire, failure's job, failure's error


# --- audit log --------------------------------------------------------------------------


def test_the_audit_log_shows_who_did_what_to_which_object_and_why(client_for):
    job = make_job("j")
    trigger = Trigger.objects.bulk_create(
        [Trigger(job=job, kind="once", run_at=database_now(), next_fire_at=database_now())]
    )[0]
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    entry(when, action="job.pause", object_id=str(job.pk), reason="maintenance window",
          before={"paused": False}, after={"paused": True})  # fmt: skip
    entry(when, action="execution.rerun", object_type="execution", object_id="42")
    entry(when, action="lock.force_release", object_type="lock", object_id="a/b:c")
    entry(when, action="trigger.pause", object_type="trigger", object_id=str(trigger.pk))
    entry(when, actor="node-7", action="node.declare_dead", object_type="node", object_id="n-1")
    entry(when, action="something", object_type="widget", object_id="9")

    page = client_for("viewer").get("/audit/").content.decode()

    assert "2024-05-01 12:30:00" in page and "maintenance window" in page
    assert f'<a href="/jobs/{job.pk}/">job j</a>' in page
    assert '<a href="/executions/42/">execution #42</a>' in page
    assert '<a href="/locks/?name=a%2Fb%3Ac">lock a/b:c</a>' in page
    assert f'<a href="/jobs/{job.pk}/">trigger #{trigger.pk} of j</a>' in page
    assert '<a href="/nodes/">node n-1</a>' in page
    assert "widget 9" in page and 'href="/widget' not in page
    assert (
        '<code>paused</code>: <code class="json">false</code> &rarr; <code class="json">true</code>'
        in page
    )


def test_an_audit_reason_and_actor_with_html_render_escaped(client_for, role_users):
    audit.record(role_users["operator"], "lock.force_release", "lock", XSS, reason=XSS,
                 before={"holder": XSS})  # fmt: skip
    page = client_for("viewer").get("/audit/").content.decode()
    assert XSS not in page
    assert page.count(XSS_ESCAPED) >= 2


@pytest.fixture
def audit_trail():
    """Entries one minute apart from 2024-05-01 00:00 UTC by otto and ada."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    return [
        entry(start + timedelta(minutes=i), actor=["otto", "ada"][i % 2],
              action=["job.pause", "job.run_now", "lock.force_release"][i % 3],
              object_type="lock" if i % 3 == 2 else "job", object_id=str(i % 4))
        for i in range(12)
    ]  # fmt: skip


def shown(response) -> list[int]:
    assert response.status_code == 200
    return [e.pk for e in response.context["page"].entries]


def newest_first(entries) -> list[int]:
    return [e.pk for e in sorted(entries, key=lambda e: (e.created_at, e.pk), reverse=True)]


@pytest.mark.parametrize(
    "query, keep",
    [
        ({"actor": "ada"}, lambda e: e.actor == "ada"),
        ({"action": "job.run_now"}, lambda e: e.action == "job.run_now"),
        ({"object_type": "lock"}, lambda e: e.object_type == "lock"),
        ({"object_type": "job", "object_id": "1"},
         lambda e: e.object_type == "job" and e.object_id == "1"),
        ({"since": "2024-05-01T00:03", "until": "2024-05-01T00:07"},
         lambda e: 3 <= e.created_at.minute < 7),
        ({"actor": "otto", "action": "job.pause", "since": "2024-05-01T00:05"},
         lambda e: e.actor == "otto" and e.action == "job.pause" and e.created_at.minute >= 5),
    ],
)  # fmt: skip
def test_audit_filters_return_the_matching_entries_newest_first(
    client_for, audit_trail, query, keep
):
    expected = newest_first(e for e in audit_trail if keep(e))
    assert expected  # each case matches something
    assert shown(client_for("viewer").get("/audit/", query)) == expected


def test_the_action_filter_offers_the_actions_in_the_log(client_for, audit_trail):
    page = client_for("viewer").get("/audit/").content.decode()
    for action in ("job.pause", "job.run_now", "lock.force_release"):
        assert f'<option value="{action}">{action}</option>' in page


@pytest.mark.parametrize(
    "query, field",
    [
        ({"action": "no.such_action"}, "action"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-05-02T00:00", "until": "2024-05-01T00:00"}, "until"),
        ({"before": "garbage"}, "before"),
    ],
)
def test_bad_audit_filters_show_an_error_and_no_entries(client_for, audit_trail, query, field):
    response = client_for("viewer").get("/audit/", query)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert response.context["page"] is None
    assert 'class="errorlist' in response.content.decode()


def test_the_audit_log_pages_by_keyset_with_newer_and_older_links(client_for):
    start = datetime(2024, 5, 1, tzinfo=UTC)
    # Runs of entries sharing a timestamp: the id breaks ties, so no entry is lost or
    # repeated at a page boundary.
    entries = [entry(start + timedelta(seconds=i // 7)) for i in range(120)]
    expected = newest_first(entries)
    client = client_for("viewer")

    first = client.get("/audit/")
    assert shown(first) == expected[:50]
    assert first.context["page"].newer is None
    older = first.context["page"].older
    assert "Older &rarr;" in first.content.decode() and "Newer" not in first.content.decode()

    second = client.get("/audit/", {"before": older})
    assert shown(second) == expected[50:100]
    third = client.get("/audit/", {"before": second.context["page"].older})
    assert shown(third) == expected[100:]
    assert third.context["page"].older is None
    assert "Older &rarr;" not in third.content.decode()

    back = client.get("/audit/", {"after": third.context["page"].newer})
    assert shown(back) == expected[50:100]
    top = client.get("/audit/", {"after": back.context["page"].newer})
    assert shown(top) == expected[:50]
    assert top.context["page"].newer is None


def test_audit_pagination_keeps_the_filters(client_for):
    start = datetime(2024, 5, 1, tzinfo=UTC)
    entries = [
        entry(start + timedelta(seconds=i), actor=["ada", "otto"][i % 2]) for i in range(130)
    ]
    expected = newest_first(e for e in entries if e.actor == "ada")
    client = client_for("viewer")

    first = client.get("/audit/", {"actor": "ada"})
    older = first.context["page"].older
    assert f"actor=ada&amp;before={older.replace('+', '%2B').replace(':', '%3A')}" in (
        first.content.decode()
    )
    second = client.get("/audit/", {"actor": "ada", "before": older})
    assert shown(first) + shown(second) == expected


def test_the_audit_log_answers_htmx_with_its_fragment(client_for, audit_trail):
    response = client_for("viewer").get("/audit/", {"actor": "ada"}, headers=HTMX)
    page = response.content.decode()
    assert "<html" not in page and page.lstrip().startswith('<div id="audit">')
    assert 'hx-push-url="true"' in page
