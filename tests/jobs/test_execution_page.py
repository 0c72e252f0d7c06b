"""The execution page's run itself: log (live, paged, downloaded), result, progress,
cancel, lost lock, timeline and chain; for each role, with values redacted below admin.

Data-driven: the tests write the log lines, events and progress the engine would write.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.models import AuditEntry
from jobs import runlog
from jobs.models import Execution, ExecutionEvent, ExecutionLogLine, Trigger
from tests.jobs.factories import make_execution, make_job

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNFINISHED = ["pending", "dispatched", "running"]
FINISHED = ["succeeded", "failed", "timed_out", "cancelled", "abandoned", "skipped"]


def htmx(target: str) -> dict:
    return {**HTMX, "HTTP_HX_TARGET": target}


@pytest.fixture
def job():
    return make_job("reports", target="demo.echo")


def running(job, **fields) -> Execution:
    values = {"state": "running", "finished_at": None, "node": "node-1", "started_at": BASE}
    return make_execution(job, **{**values, **fields})


def write_log(execution, *messages, level="INFO", first_seq=0) -> None:
    ExecutionLogLine.objects.bulk_create(
        ExecutionLogLine(
            execution=execution,
            seq=first_seq + i,
            level=level,
            message=message,
            at=BASE + timedelta(seconds=first_seq + i),
        )  # fmt: skip
        for i, message in enumerate(messages)
    )


def page(client, execution) -> str:
    response = client.get(f"/executions/{execution.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def follow(client, execution, after: int):
    return client.get(f"/executions/{execution.pk}/log/", {"after": after}, **htmx("log-follow"))


def log_messages(html: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'<span class="log-message">(.*?)</span>', html, re.S)]


def follower(html: str) -> str:
    return re.search(r'<li id="log-follow"[^>]*>', html).group(0)


# --- the log --------------------------------------------------------------------------


def test_the_page_shows_the_log_oldest_first_with_time_and_level(client_for, job):
    execution = running(job)
    write_log(execution, "starting", "halfway")
    ExecutionLogLine.objects.create(execution=execution, seq=2, at=BASE + timedelta(seconds=9),
                                    level="STDERR", message="<b>oops</b>")  # fmt: skip
    html = page(client_for("viewer"), execution)
    assert log_messages(html) == ["starting", "halfway", "<b>oops</b>"]
    assert "&lt;b&gt;oops&lt;/b&gt;" in html  # escaped, never markup
    assert '<li class="log-line log-stderr">' in html
    assert '<span class="log-level">STDERR</span>' in html
    assert ">12:00:09</time>" in html
    assert f'href="/executions/{execution.pk}/log.txt"' in html


def test_a_running_log_follows_only_the_lines_after_the_last_one_shown(client_for, job):
    execution = running(job)
    write_log(execution, "one", "two")
    client = client_for("viewer")
    poller = follower(page(client, execution))
    assert f'hx-get="/executions/{execution.pk}/log/?after=1"' in poller
    assert 'hx-trigger="every 2s"' in poller

    write_log(execution, "three", "four", first_seq=2)
    response = follow(client, execution, after=1)
    assert response.status_code == 200
    html = response.content.decode()
    assert log_messages(html) == ["three", "four"]
    assert '?after=3" hx-trigger="every 2s"' in follower(html)

    nothing_new = follow(client, execution, after=3).content.decode()
    assert log_messages(nothing_new) == []
    assert '?after=3" hx-trigger="every 2s"' in follower(nothing_new)


def test_a_run_with_no_output_yet_waits_for_its_first_line(client_for, job):
    execution = running(job)
    html = page(client_for("viewer"), execution)
    assert "?after=-1" in follower(html) and "No output yet." in html
    write_log(execution, "first")
    assert log_messages(follow(client_for("viewer"), execution, -1).content.decode()) == ["first"]


def test_a_poll_that_finds_more_lines_than_it_takes_asks_again_at_once(
    client_for, job, monkeypatch
):
    monkeypatch.setattr(runlog, "POLL_LINES", 3)
    execution = running(job)
    write_log(execution, *[f"line {i}" for i in range(5)])
    html = follow(client_for("viewer"), execution, -1).content.decode()
    assert log_messages(html) == ["line 0", "line 1", "line 2"]
    assert '?after=2" hx-trigger="load"' in follower(html)
    html = follow(client_for("viewer"), execution, 2).content.decode()
    assert log_messages(html) == ["line 3", "line 4"]
    assert 'hx-trigger="every 2s"' in follower(html)


def test_the_log_stops_following_once_the_run_has_finished_and_its_last_lines_are_in(
    client_for, job
):
    execution = running(job)
    write_log(execution, "one")
    client = client_for("viewer")
    write_log(execution, "two", "three", first_seq=1)
    Execution.objects.filter(pk=execution.pk).update(state="succeeded", finished_at=BASE)
    html = follow(client, execution, 0).content.decode()
    assert log_messages(html) == ["two", "three"]
    assert "hx-get" not in follower(html) and "hx-trigger" not in follower(html)
    assert "End of the log: 3 lines." in html
    finished_page = page(client, execution)
    assert "hx-trigger" not in follower(finished_page)


@pytest.mark.parametrize("state, offered", [("timed_out", True), ("cancelled", True),
                                            ("succeeded", False), ("failed", False)])  # fmt: skip
def test_a_run_stopped_while_its_thread_went_on_offers_to_look_for_later_lines(
    client_for, job, state, offered
):
    execution = make_execution(job, state=state)
    write_log(execution, "before")
    client = client_for("viewer")
    html = page(client, execution)
    assert ("Look for later lines" in html) is offered
    if offered:
        link = re.search(r'<a href="([^"]+)" hx-get="([^"]+)"[^>]*>Look for later lines', html)
        assert link.groups() == (
            f"/executions/{execution.pk}/#execution-log",
            f"/executions/{execution.pk}/log/?after=0",
        )
        write_log(execution, "after", first_seq=1)
        assert log_messages(follow(client, execution, 0).content.decode()) == ["after"]


def test_a_run_cancelled_before_it_started_has_no_later_lines_to_look_for(client_for, job):
    execution = make_execution(job, state="cancelled", started_at=None)
    assert "Look for later lines" not in page(client_for("viewer"), execution)


def test_a_finished_run_without_output_says_so(client_for, job):
    html = page(client_for("viewer"), make_execution(job))
    assert "No output." in html and "hx-get" not in follower(html)


def test_the_page_shows_the_newest_lines_of_a_long_log_and_says_where_the_rest_is(
    client_for, job, monkeypatch
):
    monkeypatch.setattr(runlog, "PAGE_LINES", 3)
    execution = make_execution(job)
    write_log(execution, *[f"line {i}" for i in range(10)])
    html = page(client_for("viewer"), execution)
    assert log_messages(html) == ["line 7", "line 8", "line 9"]
    assert "The last 3 of 10 lines; the download has them all." in html


def test_the_truncation_marker_is_shown_as_such(client_for, job):
    execution = make_execution(job)
    write_log(execution, "output", "[log truncated: not really]")  # a job's own words
    marker = "[log truncated: this run's output passed SCHEDULER_LOG_LIMIT (1048576 bytes)]"
    write_log(execution, marker, level="WARNING", first_seq=2)
    html = page(client_for("viewer"), execution)
    assert html.count("log-truncated") == 1
    assert '<strong class="badge state-failed">log truncated</strong>' in html
    assert '<li class="log-line log-warning log-truncated">' in html


def test_a_log_line_only_ends_a_page_not_the_log_unless_it_is_the_last(job):
    execution = make_execution(job)
    write_log(execution, "[log truncated: by the job]", "more", level="WARNING")
    first = runlog.lines_from(execution, 0, 1)
    assert first.more and not first.lines[0].truncation


def test_the_log_downloads_as_streamed_plain_text_with_a_filename(client_for, job):
    execution = make_execution(job)
    write_log(execution, "first line", "second\nspans two lines")
    response = client_for("viewer").get(f"/executions/{execution.pk}/log.txt")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert (
        response["Content-Disposition"]
        == f'attachment; filename="execution-{execution.pk}-log.txt"'
    )
    text = b"".join(response.streaming_content).decode()
    assert text == (
        "2026-03-01T12:00:00+00:00 INFO     first line\n"
        "2026-03-01T12:00:01+00:00 INFO     second\nspans two lines\n"
    )


def test_the_download_reads_a_long_log_in_batches(client_for, job, monkeypatch):
    monkeypatch.setattr(runlog, "TEXT_BATCH", 4)
    execution = make_execution(job)
    write_log(execution, *[f"line {i}" for i in range(10)])
    response = client_for("viewer").get(f"/executions/{execution.pk}/log.txt")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [line.rsplit(" ", 2)[-2:] for line in lines] == [["line", str(i)] for i in range(10)]


@pytest.mark.parametrize("role, sees", [("viewer", False), ("operator", False), ("admin", True)])
def test_log_lines_are_redacted_below_the_admin_role(client_for, job, role, sees):
    execution = running(job)
    secret_lines = ["connecting with password=hunter2", '{"api_key": "k-123", "day": 3}']
    write_log(execution, *secret_lines)
    client = client_for(role)
    shown = [
        log_messages(page(client, execution)),
        log_messages(follow(client, execution, -1).content.decode()),
    ]
    download = b"".join(client.get(f"/executions/{execution.pk}/log.txt").streaming_content)
    if sees:
        assert shown == [secret_lines, secret_lines]
        assert b"hunter2" in download and b"k-123" in download
    else:
        masked = ["connecting with password=••••", '{"api_key": "••••", "day": 3}']
        assert shown == [masked, masked]
        assert b"hunter2" not in download and b"k-123" not in download


def test_the_log_fragment_and_download_need_a_login_and_a_role(client_for, job, client,
                                                                django_user_model):  # fmt: skip
    execution = make_execution(job)
    urls = [f"/executions/{execution.pk}/log/?after=-1", f"/executions/{execution.pk}/log.txt"]
    for url in urls:
        response = client_for(None).get(url, **HTMX)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(django_user_model.objects.create_user("nobody", password="pw"))
    for url in urls:
        assert client.get(url, **HTMX).status_code == 403
    for url in ["/executions/999999/log/?after=-1", "/executions/999999/log.txt"]:
        assert client_for("viewer").get(url, **HTMX).status_code == 404


def test_a_plain_request_for_the_live_log_goes_to_the_page(client_for, job):
    execution = running(job)
    response = client_for("viewer").get(f"/executions/{execution.pk}/log/?after=3")
    assert response.status_code == 302
    assert response["Location"] == f"/executions/{execution.pk}/#execution-log"


@pytest.mark.parametrize("after", ["", "x", "-2", "1.5", str(2**31)])
def test_a_bad_after_is_a_400(client_for, job, after):
    execution = running(job)
    assert follow(client_for("viewer"), execution, after).status_code == 400


def test_the_page_costs_the_same_queries_for_a_long_log_and_many_events(client_for, job):
    def queries_for(lines: int) -> int:
        execution = running(job, progress_done=1, progress_total=9, progress_at=BASE)
        write_log(execution, *[f"password={i}" for i in range(lines)])
        ExecutionEvent.objects.bulk_create(
            ExecutionEvent(execution=execution, kind="progress", message=f"step {i}", at=BASE)
            for i in range(lines)
        )
        client = client_for("viewer")
        client.get(f"/executions/{execution.pk}/")  # the session and permissions, once
        with CaptureQueriesContext(connection) as queries:
            page(client, execution)
        return len(queries)

    assert queries_for(2) == queries_for(60)


# --- result and progress ------------------------------------------------------------------


@pytest.mark.parametrize("role, sees", [("viewer", False), ("operator", False), ("admin", True)])
def test_the_result_shows_as_pretty_json_redacted_below_the_admin_role(client_for, job, role,
                                                                       sees):  # fmt: skip
    result = {"rows": 3, "db": {"password": "hunter2"}, "note": "<i>ok</i>"}
    execution = make_execution(job, result=result)
    html = page(client_for(role), execution)
    shown = re.search(r'<pre class="execution-result">(.*?)</pre>', html, re.S).group(1)
    # In jsonb's order of keys: shorter first.
    expected = '{\n  "db": {\n    "password": "%s"\n  },\n  "note": "<i>ok</i>",\n  "rows": 3\n}'
    assert unescape(shown) == expected % ("hunter2" if sees else "••••")
    assert "<i>ok</i>" not in html


@pytest.mark.parametrize("role, sees", [("viewer", False), ("operator", False), ("admin", True)])
def test_an_error_and_a_note_are_redacted_below_the_admin_role(client_for, job, role, sees):
    execution = make_execution(job, state="failed", error="cannot connect: password=pw1",
                               note="result not JSON: {'api_key': 'k9'}")  # fmt: skip
    html = unescape(page(client_for(role), execution))
    assert ("password=pw1" in html) is sees and ("'api_key': 'k9'" in html) is sees
    assert ("password=••••" in html) is not sees
    assert ("'api_key': '••••'" in html) is not sees


def test_no_result_section_without_a_result_and_the_note_shows(client_for, job):
    execution = make_execution(job, note="Its result was not JSON: kept as a note.")
    html = page(client_for("viewer"), execution)
    assert "execution-result" not in html
    assert "Its result was not JSON: kept as a note." in html


def test_progress_with_a_total_is_a_bar_with_figures_and_the_message(client_for, job):
    execution = running(job, progress_done=30, progress_total=40, progress_message="copying",
                        progress_at=BASE)  # fmt: skip
    html = page(client_for("viewer"), execution)
    assert '<progress value="30.0" max="40.0" aria-label="Progress">75%</progress>' in html
    assert "30 of 40 (75%)" in html
    assert '<span class="progress-message">copying</span>' in html
    assert "style=" not in html  # the CSP allows no inline style: a <progress>, no width


def test_progress_without_a_total_is_an_indeterminate_bar(client_for, job):
    execution = running(job, progress_done=1234.5, progress_at=BASE)
    html = page(client_for("viewer"), execution)
    assert '<progress aria-label="Progress (total unknown)"></progress>' in html
    assert "1,234.5 done, total unknown" in html
    Execution.objects.filter(pk=execution.pk).update(state="succeeded", finished_at=BASE)
    html = page(client_for("viewer"), execution)
    assert "<progress" not in html and "1,234.5 done, total unknown" in html


def test_progress_past_its_total_or_of_a_zero_total_shows_full(client_for, job):
    execution = running(job, progress_done=50, progress_total=40, progress_at=BASE)
    assert 'value="40.0" max="40.0"' in page(client_for("viewer"), execution)
    Execution.objects.filter(pk=execution.pk).update(progress_done=0, progress_total=0)
    assert 'value="1" max="1" aria-label="Progress">100%' in page(client_for("viewer"), execution)


def test_no_progress_bar_before_the_run_reports_progress(client_for, job):
    assert "<progress" not in page(client_for("viewer"), running(job))


def test_progress_updates_with_the_polled_status(client_for, job):
    execution = running(job, progress_done=1, progress_total=4, progress_at=BASE)
    client = client_for("viewer")
    Execution.objects.filter(pk=execution.pk).update(progress_done=3, progress_message="nearly")
    fragment = client.get(f"/executions/{execution.pk}/", **htmx("execution-status"))
    html = fragment.content.decode()
    assert html.lstrip().startswith('<section id="execution-status"')
    assert "3 of 4 (75%)" in html and "nearly" in html


@pytest.mark.parametrize("role, sees", [("viewer", False), ("admin", True)])
def test_a_progress_message_is_redacted_below_the_admin_role(client_for, job, role, sees):
    execution = running(job, progress_done=1, progress_message="using token=abc",
                        progress_at=BASE)  # fmt: skip
    html = page(client_for(role), execution)
    assert ("token=abc" in html) is sees
    assert ("token=••••" in html) is not sees


# --- cancel -------------------------------------------------------------------------------


def cancel_forms(html: str) -> list[str]:
    return re.findall(r'<form[^>]+action="([^"]+/cancel/)"', html)


@pytest.mark.parametrize("state", UNFINISHED)
@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operators_and_admins_get_a_cancel_form_while_the_run_is_unfinished(
    client_for, job, state, role
):
    execution = make_execution(job, state=state, finished_at=None)
    html = page(client_for(role), execution)
    assert cancel_forms(html) == [f"/executions/{execution.pk}/cancel/"]
    form = re.search(r'<form[^>]+/cancel/".*?</form>', html, re.S).group(0)
    assert re.search(r'<input [^>]*name="reason"[^>]*required', form)


@pytest.mark.parametrize("state", FINISHED)
def test_no_cancel_form_once_finished(client_for, job, state):
    assert cancel_forms(page(client_for("operator"), make_execution(job, state=state))) == []


def test_viewers_get_no_cancel_form(client_for, job):
    html = page(client_for("viewer"), running(job))
    assert cancel_forms(html) == [] and "Cancel run" not in html


@pytest.mark.parametrize("state", ["pending", "dispatched"])
def test_cancelling_an_unstarted_run_cancels_it_at_once_and_audits_it(
    client_for, role_users, job, state
):
    execution = make_execution(job, state=state, started_at=None, finished_at=None)
    client = client_for("operator")
    response = client.post(f"/executions/{execution.pk}/cancel/", {"reason": "wrong day"})
    assert response.status_code == 302
    assert response["Location"] == f"/executions/{execution.pk}/"
    execution.refresh_from_db()
    assert execution.state == "cancelled" and execution.finished_at is not None
    assert (execution.cancel_requested_by, execution.cancel_reason) == ("otto", "wrong day")
    entry = AuditEntry.objects.get(action="execution.cancel")
    assert (entry.user, entry.reason, entry.object_id) == (
        role_users["operator"], "wrong day", str(execution.pk)
    )  # fmt: skip
    html = client.get(response["Location"]).content.decode()
    assert f"Cancelled #{execution.pk}: it will not run." in html
    assert "Cancelled by otto</strong> before it started: wrong day" in html
    assert cancel_forms(html) == []


@pytest.mark.parametrize("executor", ["inline", "celery"])
def test_cancelling_a_running_run_asks_it_to_stop_and_says_what_happens_next(
    client_for, job, executor
):
    job.executor = executor
    job.save()
    execution = running(job)
    client = client_for("operator")
    response = client.post(f"/executions/{execution.pk}/cancel/", {"reason": "  stuck  "},
                           follow=True)  # fmt: skip
    html = response.content.decode()
    execution.refresh_from_db()
    assert execution.state == "running" and execution.cancel_requested_at is not None
    assert f"Asked #{execution.pk} to stop." in html
    when = execution.cancel_requested_at.strftime("%Y-%m-%d %H:%M:%S")
    assert f"Cancel requested by otto</strong>: stuck, at {when} UTC." in html
    assert "30s after the request" in html
    if executor == "inline":
        assert (
            "A thread cannot be killed" in html and "whatever it returns later is ignored" in html
        )
    else:
        assert "the Celery worker process running it is terminated" in html
    assert cancel_forms(html) == []  # asked once: nothing more to ask
    event = ExecutionEvent.objects.get(execution=execution)
    assert (event.kind, event.actor, event.message) == ("cancel_requested", "otto", "stuck")


def test_the_cancel_grace_shown_is_the_setting(client_for, job, settings):
    settings.SCHEDULER_CANCEL_GRACE = 90
    execution = running(job)
    client = client_for("operator")
    assert "past 1m 30s it is recorded cancelled" in page(client, execution)


def test_cancel_from_htmx_answers_with_the_status_and_its_message(client_for, job):
    execution = running(job)
    response = client_for("operator").post(
        f"/executions/{execution.pk}/cancel/", {"reason": "stuck"}, **htmx("execution-status")
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="execution-status"')
    assert f"Asked #{execution.pk} to stop." in html and "Cancel requested by otto" in html


@pytest.mark.parametrize("state", FINISHED)
def test_cancelling_a_finished_run_is_refused_and_changes_nothing(client_for, job, state):
    execution = make_execution(job, state=state)
    response = client_for("operator").post(
        f"/executions/{execution.pk}/cancel/", {"reason": "too late"}, follow=True
    )
    html = response.content.decode()
    assert f"Cannot cancel: #{execution.pk} has already finished ({state})." in html
    execution.refresh_from_db()
    assert execution.state == state and execution.cancel_requested_at is None
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_cancelling_needs_a_reason_and_changes_nothing_without_one(client_for, job, reason):
    execution = running(job)
    response = client_for("operator").post(
        f"/executions/{execution.pk}/cancel/", {"reason": reason}, follow=True
    )
    assert "To cancel a run, give a reason (at most 500 characters)." in response.content.decode()
    execution.refresh_from_db()
    assert execution.cancel_requested_at is None and not AuditEntry.objects.exists()


def test_cancelling_twice_asks_once(client_for, job):
    execution = running(job)
    client = client_for("operator")
    client.post(f"/executions/{execution.pk}/cancel/", {"reason": "stuck"})
    html = client.post(f"/executions/{execution.pk}/cancel/", {"reason": "again"},
                       follow=True).content.decode()  # fmt: skip
    assert f"#{execution.pk} was already asked to stop by otto." in html
    execution.refresh_from_db()
    assert execution.cancel_reason == "stuck"
    assert ExecutionEvent.objects.filter(execution=execution).count() == 1


def test_viewers_and_anonymous_users_cannot_cancel_and_get_cannot_either(client_for, job):
    execution = running(job)
    url = f"/executions/{execution.pk}/cancel/"
    assert client_for("viewer").post(url, {"reason": "no"}).status_code == 403
    response = client_for(None).post(url, {"reason": "no"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert client_for("operator").get(url).status_code == 405
    execution.refresh_from_db()
    assert execution.cancel_requested_at is None and not AuditEntry.objects.exists()


def test_cancelling_a_missing_execution_is_404(client_for):
    assert (
        client_for("operator").post("/executions/999999/cancel/", {"reason": "x"}).status_code
        == 404
    )


# --- lost lock ------------------------------------------------------------------------------


def test_a_lost_lock_shows_prominently_with_who_and_why(client_for, job):
    execution = running(job, lock_lost_at=BASE + timedelta(seconds=5))
    ExecutionEvent.objects.create(
        execution=execution, kind="lock_lost", actor="otto", at=BASE + timedelta(seconds=5),
        message="force released: worker wedged",
    )  # fmt: skip
    html = page(client_for("viewer"), execution)
    alert = re.search(r'<div id="lock-lost" class="run-alert" role="alert">(.*?)</div>', html, re.S)
    text = " ".join(unescape(alert.group(1)).split())
    assert (
        "Lock lost</strong> at 2026-03-01 12:00:05 UTC by otto: force released: worker wedged."
        in text
    )
    assert f"job:{job.pk}" in text
    assert '<span class="badge state-failed">lock lost</span>' in html


def test_no_lock_alert_while_the_lock_is_held(client_for, job):
    assert 'id="lock-lost"' not in page(client_for("viewer"), running(job))


# --- timeline -------------------------------------------------------------------------------


def timeline_of(html: str) -> list[tuple[str, str]]:
    section = re.search(r'<section id="execution-timeline".*?</section>', html, re.S).group(0)
    entries = re.findall(
        r'<span class="badge timeline-kind[^"]*">(.*?)</span>\s*'
        r'<span class="timeline-what"><span class="timeline-message">(.*?)</span>', section, re.S,
    )  # fmt: skip
    return [(kind, " ".join(unescape(re.sub(r"<[^>]+>", "", text)).split()))
            for kind, text in entries]  # fmt: skip


def test_the_timeline_tells_the_run_in_order(client_for, role_users, job):
    at = lambda s: BASE + timedelta(seconds=s)  # noqa: E731
    first = make_execution(
        job, state="failed", requested_by=role_users["operator"], reason="month end",
        created_at=at(0), dispatched_at=at(1), started_at=at(2), finished_at=at(9),
        node="node-7", fence=41, error="RuntimeError: disk full\nmore", lock_lost_at=at(6),
    )  # fmt: skip
    for seconds, kind, actor, message in [
        (3, "progress", "node-7", "half of the rows"),
        (6, "lock_lost", "otto", "force released"),
        (5, "cancel_requested", "otto", "stop it"),
        (7, "note", "node-7", "token=abc in a note"),
    ]:
        ExecutionEvent.objects.create(execution=first, at=at(seconds), kind=kind, actor=actor,
                                      message=message)  # fmt: skip
    retry = make_execution(job, origin="retry", attempt=2, retry_of=first, state="pending",
                           created_at=at(9), started_at=None, finished_at=None)  # fmt: skip
    rerun = make_execution(job, origin="rerun", rerun_of=first, created_at=at(20),
                           requested_by=role_users["admin"])  # fmt: skip
    assert timeline_of(page(client_for("viewer"), first)) == [
        ("created", "Run now: month end"),
        ("claimed", "Claimed by node-7"),
        ("started", "Started with fencing token 41"),
        ("progress", "half of the rows"),
        ("cancel requested", "stop it"),
        ("lock lost", "force released"),
        ("note", "token=•••• in a note"),
        ("finished", "Failed: RuntimeError: disk full"),
        ("retried", f"Retried as #{retry.pk} (attempt 2)"),
        ("rerun", f"Rerun as #{rerun.pk}"),
    ]
    html = page(client_for("viewer"), first)
    assert f'<a href="/executions/{retry.pk}/">Retried as #{retry.pk}' in html
    assert timeline_of(page(client_for("viewer"), retry))[0] == (
        "created", f"Attempt 2, a retry of #{first.pk}",
    )  # fmt: skip


def test_a_scheduled_fire_names_its_trigger_and_a_cancelled_one_who_cancelled_it(client_for, job):
    trigger = Trigger.objects.create(job=job, kind="cron", cron="0 2 * * *")
    execution = make_execution(job, trigger=trigger, origin="schedule", state="pending",
                               started_at=None, finished_at=None)  # fmt: skip
    client = client_for("operator")
    client.post(f"/executions/{execution.pk}/cancel/", {"reason": "holiday"})
    assert timeline_of(page(client, execution)) == [
        ("created", f"Scheduled fire of trigger #{trigger.pk} (cron 0 2 * * * (UTC))"),
        ("finished", "Cancelled: holiday"),
    ]


def test_the_timeline_polls_while_unfinished_and_stops_after(client_for, job):
    execution = running(job)
    client = client_for("viewer")
    polling = f'hx-get="/executions/{execution.pk}/" hx-trigger="every 3s"'
    assert polling in page(client, execution)
    ExecutionEvent.objects.create(execution=execution, kind="progress", message="step 2")
    fragment = client.get(f"/executions/{execution.pk}/", **htmx("execution-timeline"))
    html = fragment.content.decode()
    assert html.lstrip().startswith('<section id="execution-timeline"')
    assert polling in html and "step 2" in html
    Execution.objects.filter(pk=execution.pk).update(state="succeeded", finished_at=BASE)
    html = client.get(f"/executions/{execution.pk}/", **htmx("execution-timeline")).content
    assert b"hx-trigger" not in html


# --- chain ----------------------------------------------------------------------------------


def test_the_chain_refreshes_until_every_attempt_and_rerun_has_finished(client_for, job):
    first = make_execution(job, state="failed")
    retry = make_execution(job, state="pending", attempt=2, retry_of=first, origin="retry",
                           started_at=None, finished_at=None)  # fmt: skip
    client = client_for("viewer")
    polling = f'hx-get="/executions/{first.pk}/" hx-trigger="every 5s"'
    assert polling in page(client, first)
    Execution.objects.filter(pk=retry.pk).update(state="running")
    fragment = client.get(f"/executions/{first.pk}/", **htmx("execution-chain")).content.decode()
    assert fragment.lstrip().startswith('<section id="execution-chain"')
    assert polling in fragment and "Running" in fragment
    Execution.objects.filter(pk=retry.pk).update(state="succeeded", finished_at=BASE)
    rerun = make_execution(job, origin="rerun", rerun_of=first, state="dispatched",
                           finished_at=None)  # fmt: skip
    assert (
        polling
        in client.get(f"/executions/{first.pk}/", **htmx("execution-chain")).content.decode()
    )
    Execution.objects.filter(pk=rerun.pk).update(state="succeeded", finished_at=BASE)
    fragment = client.get(f"/executions/{first.pk}/", **htmx("execution-chain")).content.decode()
    assert "hx-trigger" not in fragment


def test_a_finished_single_run_page_polls_nothing(client_for, job):
    assert "hx-trigger" not in page(client_for("viewer"), make_execution(job))
