"""The jobs and executions pages and their actions, for each role."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from controlplane.models import AuditEntry
from jobs import actions
from jobs.models import Execution, Job, Trigger, database_now
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

ROLES = ["viewer", "operator", "admin"]
HTMX = {"HTTP_HX_REQUEST": "true"}
POLLING = 'hx-trigger="every 2s"'
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def htmx(target: str) -> dict:
    return {**HTMX, "HTTP_HX_TARGET": target}


@pytest.fixture
def job():
    job = make_job("nightly", target="demo.echo", args=["a"], kwargs={"n": 1})
    Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *", timezone="Asia/Kolkata")
    return job


@pytest.fixture
def trigger(job):
    return job.triggers.get()


@pytest.fixture
def finished(job, trigger):
    return make_execution(
        job, trigger=trigger, origin="schedule", state="failed", args=[1, 2], kwargs={"x": "y"},
        scheduled_for=BASE, error="ValueError: boom",
    )  # fmt: skip


def pages(job, execution) -> list[str]:
    return [
        "/jobs/",
        f"/jobs/{job.pk}/",
        "/executions/",
        f"/executions/?job={job.pk}&state=failed",
        f"/executions/{execution.pk}/",
    ]


def page_ids(response) -> list[int]:
    return [e.pk for e in response.context["page"].rows]


# --- pages, by role -------------------------------------------------------------------


def test_every_page_redirects_anonymous_users_to_login(client_for, job, finished):
    for url in pages(job, finished):
        response = client_for(None).get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", ROLES)
def test_every_page_renders_for_each_role(client_for, role, job, finished):
    client = client_for(role)
    for url in pages(job, finished):
        assert client.get(url).status_code == 200, url


def test_a_user_without_a_role_is_refused(client, job, finished, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw"))
    for url in pages(job, finished):
        assert client.get(url).status_code == 403, url


def test_a_missing_job_or_execution_is_404(client_for):
    client = client_for("viewer")
    assert client.get("/jobs/999999/").status_code == 404
    assert client.get("/executions/999999/").status_code == 404


# --- actions, by role -----------------------------------------------------------------

# action -> (url name, what it acts on, audit action, the state it changes)
ACTIONS = {
    "run": ("job-run", "job", "job.run_now"),
    "pause job": ("job-pause", "job", "job.pause"),
    "resume job": ("job-resume", "job", "job.resume"),
    "pause trigger": ("trigger-pause", "trigger", "trigger.pause"),
    "resume trigger": ("trigger-resume", "trigger", "trigger.resume"),
    "rerun": ("execution-rerun", "execution", "execution.rerun"),
}


def state_of_world():
    return (
        Execution.objects.count(),
        list(Job.objects.values_list("pk", "paused").order_by("pk")),
        list(Trigger.objects.values_list("pk", "paused").order_by("pk")),
        AuditEntry.objects.count(),
    )


@pytest.fixture
def action_url(job, trigger, finished):
    from django.urls import reverse

    def make(action: str) -> str:
        url_name, on, _ = ACTIONS[action]
        if action == "resume job":
            Job.objects.filter(pk=job.pk).update(paused=True)
        if action == "resume trigger":
            Trigger.objects.filter(pk=trigger.pk).update(paused=True)
        obj = {"job": job, "trigger": trigger, "execution": finished}[on]
        return reverse(url_name, args=[obj.pk])

    return make


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ["operator", "admin"])
def test_allowed_actions_work_and_are_audited_with_the_user(
    client_for, role_users, action_url, action, role, job, trigger
):
    url = action_url(action)
    response = client_for(role).post(url, {"reason": "because"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action=ACTIONS[action][2])
    assert entry.user == role_users[role]
    assert entry.reason == "because"
    job.refresh_from_db()
    trigger.refresh_from_db()
    if action == "run":
        assert Execution.objects.filter(origin="manual", requested_by=role_users[role]).exists()
    elif action == "rerun":
        assert Execution.objects.filter(origin="rerun", requested_by=role_users[role]).exists()
    else:
        paused = action.startswith("pause")
        assert (job if action.endswith("job") else trigger).paused is paused


@pytest.mark.parametrize("action", ACTIONS)
def test_viewers_are_refused_every_action_and_nothing_changes(client_for, action_url, action):
    url = action_url(action)
    before = state_of_world()
    assert client_for("viewer").post(url, {"reason": "nope"}).status_code == 403
    assert state_of_world() == before


@pytest.mark.parametrize("action", ACTIONS)
def test_anonymous_users_are_sent_to_login_and_nothing_changes(client_for, action_url, action):
    url = action_url(action)
    before = state_of_world()
    response = client_for(None).post(url, {"reason": "nope"})
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")
    assert state_of_world() == before


@pytest.mark.parametrize("action", ACTIONS)
def test_actions_refuse_get(client_for, action_url, action):
    url = action_url(action)
    before = state_of_world()
    assert client_for("operator").get(url).status_code == 405
    assert state_of_world() == before


def test_actions_redirect_back_to_the_page_they_were_posted_from(client_for, job):
    response = client_for("operator").post(f"/jobs/{job.pk}/pause/", {"next": "/jobs/"})
    assert response["Location"] == "/jobs/"
    response = client_for("operator").post(
        f"/jobs/{job.pk}/resume/", {"next": "https://evil.example/"}
    )
    assert response["Location"] == f"/jobs/{job.pk}/"


def test_pausing_twice_is_audited_once_and_says_so(client_for, job):
    client = client_for("operator")
    client.post(f"/jobs/{job.pk}/pause/")
    response = client.post(f"/jobs/{job.pk}/pause/", follow=True)
    assert "was already paused" in response.content.decode()
    assert AuditEntry.objects.filter(action="job.pause").count() == 1


def test_a_too_long_reason_is_refused_and_changes_nothing(client_for, job):
    before = state_of_world()
    response = client_for("operator").post(f"/jobs/{job.pk}/pause/", {"reason": "x" * 501},
                                           follow=True)  # fmt: skip
    assert "The reason is too long" in response.content.decode()
    assert state_of_world() == before


# --- buttons --------------------------------------------------------------------------


def action_forms(html: str) -> list[str]:
    return re.findall(r'<form[^>]+action="([^"]+/(?:run|pause|resume|rerun)/)"', html)


def test_viewers_see_no_action_buttons(client_for, job, finished):
    client = client_for("viewer")
    for url in (
        "/jobs/",
        f"/jobs/{job.pk}/menu/",
        f"/jobs/{job.pk}/",
        f"/executions/{finished.pk}/",
    ):
        html = client.get(url).content.decode()
        assert action_forms(html) == [], url
        assert "Run now" not in html and "Rerun" not in html


def test_operators_see_run_pause_and_rerun_buttons(client_for, job, trigger, finished):
    client = client_for("operator")
    listed = action_forms(client.get(f"/jobs/{job.pk}/menu/").content.decode())
    assert f"/jobs/{job.pk}/run/" in listed
    assert f"/jobs/{job.pk}/pause/" in listed
    assert f"/triggers/{trigger.pk}/pause/" in listed
    detail = action_forms(client.get(f"/jobs/{job.pk}/").content.decode())
    assert {
        f"/jobs/{job.pk}/run/",
        f"/jobs/{job.pk}/pause/",
        f"/triggers/{trigger.pk}/pause/",
    } <= set(detail)
    execution = action_forms(client.get(f"/executions/{finished.pk}/").content.decode())
    assert execution == [f"/executions/{finished.pk}/rerun/"]


def test_a_paused_job_and_trigger_offer_resume(client_for, job, trigger):
    actions.set_job_paused(job, True, None)
    actions.set_trigger_paused(trigger, True, None)
    listed = action_forms(client_for("operator").get(f"/jobs/{job.pk}/menu/").content.decode())
    assert f"/jobs/{job.pk}/resume/" in listed
    assert f"/triggers/{trigger.pk}/resume/" in listed


def test_no_rerun_button_before_an_execution_has_run(client_for, job):
    pending = make_execution(job, state="pending", started_at=None, finished_at=None)
    html = client_for("operator").get(f"/executions/{pending.pk}/").content.decode()
    assert action_forms(html) == []


# --- escaping -------------------------------------------------------------------------


def test_a_job_name_and_an_error_with_html_render_escaped(client_for):
    job = make_job("<script>alert(1)</script>", target="demo.noop")
    execution = make_execution(
        job, state="failed", error="<b>boom</b><script>alert(2)</script>",
        traceback='File "<img src=x onerror=alert(3)>"', note="<i>late</i>",
    )  # fmt: skip
    client = client_for("operator")
    for url in ("/jobs/", f"/jobs/{job.pk}/", "/executions/", f"/executions/{execution.pk}/"):
        html = client.get(url).content.decode()
        assert "<script>alert(1)</script>" not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
    html = client.get(f"/executions/{execution.pk}/").content.decode()
    assert "<script>alert(2)</script>" not in html and "<img src=x" not in html
    assert "&lt;b&gt;boom&lt;/b&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(3)&gt;" in html
    assert "&lt;i&gt;late&lt;/i&gt;" in html


# --- jobs page ------------------------------------------------------------------------


def test_jobs_page_shows_triggers_next_fire_and_last_result(client_for, job, trigger):
    make_execution(job, state="failed", created_at=BASE, finished_at=BASE)
    latest = make_execution(job, state="succeeded", created_at=BASE + timedelta(hours=1),
                            finished_at=BASE + timedelta(hours=1, seconds=3))  # fmt: skip
    make_execution(job, state="running", created_at=BASE + timedelta(hours=2), finished_at=None)
    response = client_for("viewer").get("/jobs/")
    (row,) = response.context["jobs"]
    assert row.next_fire == trigger.next_fire_at
    assert row.last_result.pk == latest.pk
    html = response.content.decode()
    assert '<code title="At 02:00">0 2 * * *</code>' in html and "Asia/Kolkata" in html
    assert "At 02:00" in html
    assert trigger.next_fire_at.strftime("%Y-%m-%d %H:%M:%S") in html
    assert f'href="/executions/{latest.pk}/"' in html


def test_next_fire_skips_paused_triggers_and_a_paused_job_shows_paused(client_for, job, trigger):
    soon = Trigger.objects.create(job=job, kind="interval", interval=60)
    response = client_for("viewer").get("/jobs/")
    assert response.context["jobs"][0].next_fire == soon.next_fire_at
    actions.set_trigger_paused(soon, True, None)
    response = client_for("viewer").get("/jobs/")
    assert response.context["jobs"][0].next_fire == trigger.next_fire_at
    actions.set_job_paused(job, True, None)
    response = client_for("viewer").get("/jobs/")
    assert response.context["jobs"][0].next_fire is None
    assert "job paused" in response.content.decode()


def test_jobs_page_runs_the_same_number_of_queries_for_more_jobs(client_for):
    def queries_for_jobs_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/jobs/").status_code == 200
        return len(captured)

    client = client_for("operator")
    for i in range(2):
        j = make_job(f"job-{i}")
        Trigger.objects.create(job=j, kind="interval", interval=60)
        make_execution(j)
    few = queries_for_jobs_page()
    for i in range(2, 8):
        j = make_job(f"job-{i}")
        Trigger.objects.create(job=j, kind="interval", interval=60)
        Trigger.objects.create(job=j, kind="cron", cron="*/5 * * * *")
        make_execution(j)
        make_execution(j, state="failed")
    assert queries_for_jobs_page() == few


def test_run_now_with_overrides_queues_them(client_for, role_users, job):
    response = client_for("operator").post(
        f"/jobs/{job.pk}/run/", {"args": '[1, "two"]', "kwargs": "", "reason": "test"}
    )
    assert response.status_code == 302
    execution = Execution.objects.get()
    assert execution.args == [1, "two"]
    assert execution.kwargs == {"n": 1}  # empty: the job's own
    assert execution.requested_by == role_users["operator"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("args", "[1, ", "Not valid JSON"),
        ("kwargs", "{'a': 1}", "Not valid JSON"),
        ("args", '{"a": 1}', "args must be a JSON list"),
        ("kwargs", "[1]", "kwargs must be a JSON object"),
    ],
)
def test_run_now_with_bad_arguments_shows_the_error_beside_the_field_and_queues_nothing(
    client_for, job, field, value, message
):
    client = client_for("operator")
    response = client.post(f"/jobs/{job.pk}/run/", {field: value})
    assert response.status_code == 400
    html = response.content.decode()
    field_html = html[html.index(f'id="run-{job.pk}-{field}"') :]
    errors = field_html[: field_html.index("<label")]  # up to the next field
    assert message in unescape(errors)
    assert f'name="{field}" value="{escape(value)}"' in html  # what was typed is kept
    assert Execution.objects.count() == 0
    assert not AuditEntry.objects.exists()

    fragment = client.post(f"/jobs/{job.pk}/run/", {field: value}, **htmx(f"run-{job.pk}"))
    assert fragment.status_code == 200  # htmx swaps only 2xx: the errors must show
    assert message in unescape(fragment.content.decode())
    assert "<html" not in fragment.content.decode()
    assert Execution.objects.count() == 0


def test_run_now_from_htmx_answers_with_the_form_and_a_link_to_the_execution(client_for, job):
    response = client_for("operator").post(f"/jobs/{job.pk}/run/", {"next": "/jobs/"},
                                           **htmx(f"run-{job.pk}"))  # fmt: skip
    execution = Execution.objects.get()
    html = response.content.decode()
    assert html.lstrip().startswith(f'<form id="run-{job.pk}"')
    assert f'href="/executions/{execution.pk}/"' in html
    assert f"execution #{execution.pk}" in html  # the message, shown in the fragment


def test_pause_from_htmx_answers_with_the_fragment_of_the_page_it_came_from(client_for, job):
    client = client_for("operator")
    row = client.post(f"/jobs/{job.pk}/pause/", {"next": "/jobs/"}, **htmx(f"job-{job.pk}"))
    html = row.content.decode()
    assert html.lstrip().startswith(f'<tr id="job-{job.pk}"')
    assert "job paused" in html  # its actions are in the row's menu, loaded on opening
    assert html.count("Paused job nightly.") == 1
    schedule = client.post(f"/jobs/{job.pk}/resume/", **htmx("job-schedule"))
    html = schedule.content.decode()
    assert html.lstrip().startswith('<div id="job-schedule">')
    assert f"/jobs/{job.pk}/pause/" in html and "Resumed job nightly." in html


# --- job page -------------------------------------------------------------------------


def test_job_page_shows_the_next_five_fire_times_in_the_trigger_zone_and_utc(client_for, job):
    html = client_for("viewer").get(f"/jobs/{job.pk}/").content.decode()
    # 02:00 in Kolkata (UTC+05:30, no DST) is 20:30 UTC the day before.
    assert html.count(" 02:00:00 IST") == 5
    assert html.count(" 20:30:00</td>") == 5


def test_job_page_shows_recent_executions_newest_first(client_for, job):
    made = [make_execution(job, created_at=BASE + timedelta(minutes=i)) for i in range(25)]
    response = client_for("viewer").get(f"/jobs/{job.pk}/")
    shown = [e.pk for e in response.context["executions"]]
    assert shown == [e.pk for e in reversed(made)][:20]


def test_job_page_shows_the_schedule_history_of_the_job_and_its_triggers(
    client_for, role_users, job, trigger
):
    other = make_job("other")
    otto = role_users["operator"]
    actions.set_job_paused(job, True, otto, reason="maintenance window")
    actions.set_trigger_paused(trigger, True, otto, reason="noisy")
    actions.set_job_paused(other, True, otto, reason="not this one")
    response = client_for("viewer").get(f"/jobs/{job.pk}/")
    history = response.context["history"]
    assert [e.action for e in history] == ["trigger.pause", "job.pause"]
    html = response.content.decode()
    assert "maintenance window" in html and "noisy" in html and "not this one" not in html
    assert "otto" in html
    assert "<code>paused</code>: <code>false</code> → <code>true</code>" in html


# --- executions page ------------------------------------------------------------------


@pytest.fixture
def history(job):
    """Executions of two jobs over ten hours, one per hour, alternating details."""
    other = make_job("other")
    rows = {}
    for i in range(10):
        rows[i] = make_execution(
            job if i % 2 == 0 else other,
            state=["succeeded", "failed", "running"][i % 3],
            origin=["schedule", "manual"][i % 2],
            node=["node-a", "node-b"][i // 5],
            created_at=BASE + timedelta(hours=i),
            scheduled_for=BASE + timedelta(hours=i),
        )
    return rows


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ("job={job}", [8, 6, 4, 2, 0]),
        ("state=failed", [7, 4, 1]),
        ("origin=manual", [9, 7, 5, 3, 1]),
        ("node=node-a", [4, 3, 2, 1, 0]),
        ("job={job}&state=succeeded", [6, 0]),
        ("created_from=2026-01-01T03:00&created_to=2026-01-01T06:00", [5, 4, 3]),
        ("node=node-c", []),
    ],
)
def test_filters_return_the_matching_executions_newest_first(
    client_for, history, job, query, expected
):
    response = client_for("viewer").get("/executions/?" + query.format(job=job.pk))
    assert response.status_code == 200
    assert page_ids(response) == [history[i].pk for i in expected]


@pytest.mark.parametrize(
    "query, field",
    [
        ("created_from=yesterday", "created_from"),
        ("created_from=2026-01-02T00:00&created_to=2026-01-01T00:00", "created_to"),
        ("state=exploded", "state"),
        ("job=999999", "job"),
        ("cursor=not-a-cursor", "cursor"),
        ("limit=0", "limit"),
    ],
)
def test_bad_filters_show_an_error_and_no_rows(client_for, history, query, field):
    response = client_for("viewer").get("/executions/?" + query)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert response.context["page"] is None
    assert 'class="errorlist"' in response.content.decode()


def test_pages_walk_older_then_newer_by_cursor(client_for, job):
    # Four share a created_at: the id breaks the tie, so none is skipped or repeated.
    made = [
        make_execution(job, created_at=BASE + timedelta(minutes=i if i < 20 else 20))
        for i in range(25)
    ]
    newest_first = [e.pk for e in sorted(made, key=lambda e: (e.created_at, e.pk), reverse=True)]
    client = client_for("viewer")

    def follow(html: str, rel: str):
        match = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
        return match and unescape(match.group(1))

    response = client.get("/executions/?limit=10")
    seen = [page_ids(response)]
    html = response.content.decode()
    assert follow(html, "prev") is None
    while url := follow(html, "next"):
        assert "limit=10" in url
        response = client.get(url)
        seen.append(page_ids(response))
        html = response.content.decode()
    assert seen == [newest_first[0:10], newest_first[10:20], newest_first[20:25]]

    back = []
    while url := follow(html, "prev"):
        response = client.get(url)
        back.append(page_ids(response))
        html = response.content.decode()
    assert back == [newest_first[10:20], newest_first[0:10]]


def test_pager_keeps_the_filters(client_for, job):
    other = make_job("other")
    for i in range(6):
        make_execution(job, created_at=BASE + timedelta(minutes=i))
        make_execution(other, created_at=BASE + timedelta(minutes=i))
    client = client_for("viewer")
    first = client.get(f"/executions/?job={job.pk}&limit=4")
    older = re.search(r'<a rel="next" href="([^"]+)"', first.content.decode()).group(1)
    second = client.get(unescape(older))
    rows = first.context["page"].rows + second.context["page"].rows
    assert len(rows) == 6 and {e.job_id for e in rows} == {job.pk}


def test_the_table_polls_while_an_execution_is_unfinished_and_stops_when_it_finishes(
    client_for, job
):
    make_execution(job, created_at=BASE)
    running = make_execution(job, state="running", finished_at=None, created_at=BASE)
    client = client_for("viewer")
    page = client.get("/executions/").content.decode()
    assert POLLING in page
    fragment = client.get("/executions/", **htmx("executions"))
    assert fragment.content.decode().lstrip().startswith('<div id="executions" hx-get=')
    assert POLLING in fragment.content.decode()

    Execution.objects.filter(pk=running.pk).update(state="succeeded", finished_at=database_now())
    fragment = client.get("/executions/", **htmx("executions")).content.decode()
    assert fragment.lstrip().startswith('<div id="executions"')
    assert POLLING not in fragment
    assert 'hx-get="/executions/" hx-trigger' not in fragment
    assert POLLING not in client.get("/executions/").content.decode()


def test_a_finished_page_does_not_poll(client_for, history):
    client = client_for("viewer")
    assert POLLING in client.get("/executions/").content.decode()  # history has running ones
    assert POLLING not in client.get("/executions/?state=failed").content.decode()


# --- execution page -------------------------------------------------------------------


def test_execution_page_shows_timing_lag_node_and_arguments(client_for, job, trigger):
    execution = make_execution(
        job, trigger=trigger, origin="schedule", state="failed", node="node-7", attempt=2,
        scheduled_for=BASE, dispatched_at=BASE + timedelta(milliseconds=40),
        started_at=BASE + timedelta(seconds=1),
        finished_at=BASE + timedelta(seconds=13, milliseconds=500),
        args=[1, "x"], kwargs={"k": True}, traceback="Traceback: line 1",
    )  # fmt: skip
    html = client_for("operator").get(f"/executions/{execution.pk}/").content.decode()
    assert "node-7" in html
    assert "40ms" in html  # lag: dispatched - scheduled
    assert "12s" in html  # duration: finished - started
    assert "[1, &quot;x&quot;]" in html and "{&quot;k&quot;: true}" in html
    assert '<pre class="execution-traceback">Traceback: line 1</pre>' in html


def test_execution_page_polls_its_status_until_finished(client_for, job):
    running = make_execution(job, state="running", finished_at=None)
    client = client_for("viewer")
    assert POLLING in client.get(f"/executions/{running.pk}/").content.decode()
    fragment = client.get(f"/executions/{running.pk}/", **htmx("execution-status"))
    assert fragment.content.decode().lstrip().startswith('<section id="execution-status"')
    assert POLLING in fragment.content.decode()
    Execution.objects.filter(pk=running.pk).update(state="succeeded", finished_at=database_now())
    fragment = client.get(f"/executions/{running.pk}/", **htmx("execution-status")).content
    assert POLLING not in fragment.decode()
    assert "Succeeded" in fragment.decode()


def test_execution_page_shows_the_chain_of_attempts_and_reruns(client_for, job):
    first = make_execution(job, state="failed", attempt=1)
    second = make_execution(job, state="failed", attempt=2, retry_of=first, origin="retry")
    third = make_execution(job, state="succeeded", attempt=3, retry_of=first, origin="retry")
    rerun = make_execution(job, origin="rerun", rerun_of=second)
    response = client_for("viewer").get(f"/executions/{second.pk}/")
    chain = response.context["chain"]
    assert [e.pk for e in chain["attempts"]] == [first.pk, second.pk, third.pk]
    assert [e.pk for e in chain["reruns"]] == [rerun.pk]
    html = client_for("viewer").get(f"/executions/{rerun.pk}/").content.decode()
    assert f'Reruns <a href="/executions/{second.pk}/">' in html


def test_rerun_keeps_arguments_and_fire_time_and_links_the_original(
    client_for, role_users, finished
):
    response = client_for("operator").post(f"/executions/{finished.pk}/rerun/", {"reason": "r"})
    rerun = Execution.objects.get(origin="rerun")
    assert response.status_code == 302
    assert response["Location"] == f"/executions/{rerun.pk}/"
    assert rerun.args == finished.args == [1, 2]
    assert rerun.kwargs == finished.kwargs == {"x": "y"}
    assert rerun.scheduled_for == finished.scheduled_for
    assert rerun.trigger_id == finished.trigger_id
    assert rerun.rerun_of_id == finished.pk
    assert rerun.requested_by == role_users["operator"]
    assert rerun.state == "pending"


def test_rerun_from_htmx_redirects_the_browser_to_the_new_execution(client_for, finished):
    response = client_for("operator").post(f"/executions/{finished.pk}/rerun/", **HTMX)
    rerun = Execution.objects.get(origin="rerun")
    assert response["HX-Redirect"] == f"/executions/{rerun.pk}/"


def test_rerun_of_a_missing_execution_is_404(client_for):
    before = state_of_world()
    assert client_for("operator").post("/executions/999999/rerun/").status_code == 404
    assert state_of_world() == before


def test_rerun_of_an_execution_that_has_not_run_is_a_clear_error(client_for, job):
    pending = make_execution(job, state="pending", started_at=None, finished_at=None)
    before = state_of_world()
    response = client_for("operator").post(f"/executions/{pending.pk}/rerun/", follow=True)
    assert "Cannot rerun" in response.content.decode()
    assert "has not run yet" in response.content.decode()
    assert state_of_world() == before
