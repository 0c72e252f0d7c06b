"""The run itself, on real node processes: captured output, result, progress,
cancellation and lock loss."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from django.db import connection

from controlplane.models import AuditEntry
from jobs.actions import CannotCancel, cancel_execution
from jobs.models import Execution, ExecutionEvent, ExecutionLogLine, queue_manual_run
from locks.maintenance import force_release
from tests.conftest import wait_for
from tests.jobs.factories import make_job

pytestmark = pytest.mark.cluster

UNFINISHED = ("pending", "dispatched", "running")


def log_of(execution) -> list[ExecutionLogLine]:
    return list(ExecutionLogLine.objects.filter(execution=execution).order_by("seq"))


def finished(execution) -> Execution:
    return wait_for(
        lambda: Execution.objects.filter(pk=execution.pk).exclude(state__in=UNFINISHED).first(),
        timeout=30,
        message=f"execution #{execution.pk} to finish",
    )


def test_output_result_and_progress_of_runs_on_one_node(start_node):
    node = start_node("talker", args=["--threads", "2"])
    chatty = make_job("chatty", "demo.chatty", kwargs={"lines": 20, "seconds": 1.5})
    first, second = queue_manual_run(chatty), queue_manual_run(chatty)
    stepper = make_job("stepper", "demo.progress", kwargs={"steps": 6, "seconds": 3})
    stepping = queue_manual_run(stepper)
    # Progress is written while the run goes on, not only at its end.
    wait_for(
        lambda: (
            Execution.objects.filter(pk=stepping.pk, state="running", progress_done__gt=0)
            .exclude(progress_done=6)
            .exists()
        ),
        timeout=20,
        message="progress written while the run goes on",
    )
    # And the log follows it too.
    wait_for(lambda: ExecutionLogLine.objects.filter(execution=stepping).exists(), timeout=10)
    assert Execution.objects.get(pk=stepping.pk).state == "running"
    for execution in (first, second):
        finished(execution)
    stepping = finished(stepping)

    # Two runs printing and logging at the same time on one node: each keeps its own.
    for execution in (first, second):
        lines = log_of(execution)
        assert [line.seq for line in lines] == list(range(40))
        assert Counter(line.level for line in lines) == {"INFO": 20, "STDOUT": 20}
        assert all(f"execution {execution.pk}" in line.message for line in lines), lines
        assert {line.at for line in lines} and all(line.at for line in lines)
    assert stepping.state == "succeeded"
    assert (stepping.progress_done, stepping.progress_total) == (6, 6)
    assert stepping.progress_message == "done" and stepping.progress_at is not None
    assert json.loads(json.dumps(stepping.result)) == {"done": 6}
    milestones = ExecutionEvent.objects.filter(execution=stepping, kind="progress")
    assert milestones.count() >= 3
    assert "step 1 of 6" in " ".join(milestones.values_list("message", flat=True))

    # A return value that is not JSON leaves a note, never a failure.
    odd = finished(queue_manual_run(make_job("odd", "demo.returns_set")))
    assert odd.state == "succeeded" and odd.result is None
    assert "set, which is not JSON" in odd.note
    plain = finished(queue_manual_run(make_job("plain", "demo.returns", kwargs={"value": "x"})))
    assert plain.result == {"value": "x"}
    assert node.terminate() == 0, node.log()


def test_a_run_past_the_log_limit_keeps_the_first_lines_and_a_marker(start_node):
    node = start_node("limited", extra_env={"SCHEDULER_LOG_LIMIT": "2000"})
    run = finished(queue_manual_run(make_job("loud", "demo.chatty", kwargs={"lines": 200})))
    lines = log_of(run)
    kept = sum(len(line.message.encode()) for line in lines[:-1])
    assert 1500 < kept <= 2000
    assert "log truncated" in lines[-1].message and "SCHEDULER_LOG_LIMIT" in lines[-1].message
    assert run.state == "succeeded"
    assert node.terminate() == 0, node.log()


def test_cancelling_running_runs_pending_retries_and_finished_ones(start_node, role_users):
    node = start_node("canceller", extra_env={"SCHEDULER_CANCEL_GRACE": "2"})
    operator = role_users["operator"]
    # A cooperative job stops at its next check, recorded cancelled with who and why.
    polite = queue_manual_run(make_job("polite", "demo.progress",
                                       kwargs={"steps": 100, "seconds": 30}))  # fmt: skip
    wait_for(lambda: Execution.objects.filter(pk=polite.pk, progress_done__gt=0).exists())
    cancel_execution(polite, operator, "wrong day")
    polite = finished(polite)
    assert polite.state == "cancelled"
    assert polite.error == "cancelled by otto: wrong day"
    assert polite.progress_done < 50
    assert polite.cancel_requested_by == "otto" and polite.cancel_reason == "wrong day"
    assert ExecutionEvent.objects.filter(execution=polite, kind="cancel_requested").exists()

    # One that ignores the request is recorded cancelled after the grace; when it returns
    # at last, its result is refused.
    stubborn = queue_manual_run(make_job("stubborn", "demo.stubborn", kwargs={"seconds": 6}))
    wait_for(lambda: ExecutionLogLine.objects.filter(execution=stubborn).exists())
    cancel_execution(stubborn, operator, "enough")
    stubborn = finished(stubborn)
    assert stubborn.state == "cancelled"
    assert "did not stop within 2" in stubborn.error
    wait_for(lambda: "results refused" in node.log(), timeout=15)
    assert Execution.objects.get(pk=stubborn.pk).state == "cancelled"

    # Cancelling a retry waiting out its backoff stops the chain there.
    flaky = make_job("flaky", "demo.fail", max_attempts=4, retry_backoff=3)
    first = finished(queue_manual_run(flaky))
    retry = Execution.objects.get(retry_of=first)
    assert retry.state == "pending"
    cancel_execution(retry, operator, "give up")
    retry.refresh_from_db()
    assert retry.state == "cancelled" and retry.started_at is None
    time.sleep(4)  # past the retry's backoff: nothing more runs
    assert Execution.objects.filter(job=flaky).count() == 2

    # A finished run cannot be cancelled; the refusal changes nothing.
    with pytest.raises(CannotCancel):
        cancel_execution(first, operator, "too late")
    assert Execution.objects.get(pk=first.pk).state == "failed"
    assert node.terminate() == 0, node.log()


def test_a_cancel_that_commits_before_a_start_always_wins(start_node, role_users, tmp_path):
    trace_path = tmp_path / "trace.jsonl"
    job = make_job("raced", "demo.trace", kwargs={"path": str(trace_path), "seconds": 0.1})
    # Nodes that claim ahead of their threads, so cancels meet runs in every state.
    prefetching = {"SCHEDULER_PREFETCH": "8", "SCHEDULER_PREFETCH_WAIT": "5"}
    warm = make_job("warm", "demo.noop")
    nodes = [start_node(f"racer-{i}", args=["--threads", "2"], extra_env=prefetching)
             for i in range(3)]  # fmt: skip
    for _ in range(6):
        queue_manual_run(warm)
    wait_for(lambda: Execution.objects.filter(job=warm, state="succeeded").count() == 6)
    runs = [queue_manual_run(job) for _ in range(200)]
    cancelled_first = []

    errors = []

    def cancel_every_other():
        try:
            # From the newest: the nodes work from the oldest, so the cancels meet runs
            # pending, claimed ahead, starting, running and finished.
            for execution in runs[::-2]:
                try:
                    done = cancel_execution(execution, role_users["operator"], "race")
                except CannotCancel:
                    continue
                if done.state == "cancelled":
                    cancelled_first.append(execution.pk)
        except Exception as e:
            errors.append(e)
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_every_other)
    canceller.start()
    canceller.join()
    assert not errors
    wait_for(lambda: not Execution.objects.filter(job=job, state__in=UNFINISHED).exists(),
             timeout=60)  # fmt: skip
    for node in nodes:
        assert node.terminate() == 0, node.log()

    lines = [json.loads(line) for line in trace_path.read_text().splitlines()]
    started = Counter(line["execution"] for line in lines if line["event"] == "start")
    # No run whose cancel committed before its start ever started, counted from the jobs'
    # own side effects; every other run ran once.
    assert cancelled_first
    assert not set(cancelled_first) & set(started)
    assert max(started.values()) == 1
    audited = AuditEntry.objects.filter(action="execution.cancel")
    assert audited.count() >= len(cancelled_first)
    # A cancel request that reached a run claimed but not started yet stopped it too
    # (demo.trace never looks at cancellation: a cancelled run is one that never started).
    states = dict(Execution.objects.filter(job=job).values_list("id", "state"))
    assert set(states.values()) <= {"succeeded", "cancelled"}
    assert {i for i, state in states.items() if state == "succeeded"} == set(started)
    assert set(cancelled_first) <= {i for i, state in states.items() if state == "cancelled"}


def test_a_forbid_runs_lost_lock_is_recorded_and_the_job_told(start_node, role_users):
    node = start_node("holder")
    job = make_job("guarded", "demo.progress", kwargs={"steps": 60, "seconds": 30},
                   concurrency_policy="forbid")  # fmt: skip
    run = queue_manual_run(job)
    wait_for(lambda: Execution.objects.filter(pk=run.pk, progress_done__gt=0).exists())
    force_release(job.lock_name, role_users["admin"], "stuck, taking it over")
    run = finished(run)
    assert run.lock_lost_at is not None
    event = ExecutionEvent.objects.get(execution=run, kind="lock_lost")
    assert event.actor == "ada" and "stuck, taking it over" in event.message
    # The job saw jobs.context.lock_lost() and stopped early.
    assert run.state == "succeeded" and run.result["stopped"] == "lock lost"
    assert run.result["done"] < 60
    assert node.terminate() == 0, node.log()
