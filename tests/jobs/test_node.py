"""The node's steps, called directly in this process against the real database."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from jobs import claims, history, metrics, recorder
from jobs.claims import Result
from jobs.models import Execution, Trigger, database_now, queue_manual_run
from jobs.node import CELERY_CHECK_WITHOUT_ROOM, PRUNE_RETRY, Node
from jobs.recorder import write_results
from locks import liveness
from locks.models import SchedulerNode
from tests import faults
from tests.conftest import wait_for
from tests.jobs.factories import due_triggers, make_execution, make_job


@pytest.fixture
def node(transactional_db, settings):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    node = Node(node_id="test-node", batch=50, threads=4)
    node.start()
    yield node
    node.stop()
    node.shutdown()


def finished(execution_ids, count=None):
    qs = Execution.objects.filter(state__in=Execution.FINAL_STATES)
    if execution_ids is not None:
        qs = qs.filter(pk__in=execution_ids)
    return qs.count() >= (count if count is not None else len(execution_ids))


def overdue_trigger(job, seconds_ago: float, **options) -> Trigger:
    """A trigger whose next fire time is ``seconds_ago`` in the past (database time)."""
    trigger = Trigger.objects.create(job=job, **options)
    Trigger.objects.filter(pk=trigger.pk).update(
        next_fire_at=database_now() - timedelta(seconds=seconds_ago)
    )
    trigger.refresh_from_db()
    return trigger


def test_claim_records_a_due_fire_runs_it_and_advances_the_trigger(node):
    job = make_job("tick", "demo.noop")
    trigger = overdue_trigger(job, 1, kind="interval", interval=60)
    due = trigger.next_fire_at

    assert node.claim_due() == 1
    execution = Execution.objects.get(trigger=trigger)
    assert execution.scheduled_for == due
    assert execution.origin == "schedule"
    assert execution.node == "test-node"
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "succeeded")
    execution.refresh_from_db()
    assert execution.started_at <= execution.finished_at
    trigger.refresh_from_db()
    assert trigger.next_fire_at == due + timedelta(seconds=60)
    assert trigger.last_fire_at == due
    assert node.claim_due() == 0


def test_a_trigger_that_is_not_due_is_not_claimed(node):
    job = make_job("later", "demo.noop")
    Trigger.objects.create(job=job, kind="interval", interval=3600)
    assert node.claim_due() == 0
    assert not Execution.objects.exists()


def test_paused_trigger_and_paused_job_are_not_claimed(node):
    paused_trigger = overdue_trigger(make_job("a"), 1, kind="interval", interval=60, paused=True)
    paused_job = make_job("b", paused=True)
    overdue_trigger(paused_job, 1, kind="interval", interval=60)
    assert node.claim_due() == 0
    assert not Execution.objects.exists()
    assert paused_trigger.next_fire_at < database_now()


def test_skip_policy_records_each_missed_fire_as_skipped(node):
    job = make_job("skipper", "demo.noop")
    trigger = overdue_trigger(
        job, 10 * 60 + 30, kind="interval", interval=60, misfire_policy="skip", misfire_grace=5
    )
    node.claim_due()
    skipped = Execution.objects.filter(trigger=trigger, state="skipped")
    # 10.5 minutes late on a one-minute interval: 11 fire times, all missed by > 5 s.
    assert skipped.count() == 11
    assert all("misfire" in e.note for e in skipped)
    assert not Execution.objects.exclude(state="skipped").exists()
    trigger.refresh_from_db()
    assert trigger.next_fire_at > database_now()


def test_fire_once_policy_runs_once_and_notes_the_coalesced_misses(node):
    job = make_job("coalescer", "demo.noop")
    trigger = overdue_trigger(job, 10 * 60 + 30, kind="interval", interval=60, misfire_grace=5)
    node.claim_due()
    executions = Execution.objects.filter(trigger=trigger)
    assert executions.count() == 1
    assert "coalesced 10" in executions.get().note
    wait_for(lambda: finished(None, 1))


def test_fire_all_policy_runs_every_missed_fire(node):
    job = make_job("catcher", "demo.noop")
    trigger = overdue_trigger(
        job, 10 * 60 + 30, kind="interval", interval=60, misfire_policy="fire_all",
        misfire_grace=5,
    )  # fmt: skip
    # The node claims what its 4 free threads can start; the rest stays due for the
    # next claim (on this node or another), so the catch-up never queues on one node.
    node.claim_due()
    fired = list(Execution.objects.filter(trigger=trigger).order_by("scheduled_for"))
    assert len(fired) == 4
    trigger.refresh_from_db()
    assert trigger.next_fire_at == fired[-1].scheduled_for + timedelta(seconds=60)

    def caught_up():
        node.claim_due()
        return Execution.objects.filter(trigger=trigger, state="succeeded").count() == 11

    wait_for(caught_up)
    times = list(
        Execution.objects.filter(trigger=trigger)
        .order_by("scheduled_for")
        .values_list("scheduled_for", flat=True)
    )
    assert {(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)} == {60}


def test_manual_run_is_claimed_as_pending_and_succeeds(node):
    job = make_job("manual", "demo.echo", args=[1])
    execution = queue_manual_run(job, args=[2])
    assert execution.state == "pending"
    assert node.claim_pending() == 1
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "succeeded")
    execution.refresh_from_db()
    assert execution.args == [2]
    assert execution.trigger is None and execution.origin == "manual"


def test_failure_records_error_and_traceback_then_retries_with_backoff(node):
    job = make_job("failing", "demo.fail", kwargs={"message": "boom"}, max_attempts=3,
                   retry_backoff=0.2)  # fmt: skip
    first = queue_manual_run(job)
    node.claim_pending()
    wait_for(lambda: Execution.objects.get(pk=first.pk).state == "failed")
    first.refresh_from_db()
    assert first.error == "RuntimeError: boom"
    assert "Traceback" in first.traceback and "demo failure" not in first.error
    retry = Execution.objects.get(retry_of=first)
    assert retry.origin == "retry" and retry.attempt == 2 and retry.state == "pending"
    # Backoff of 0.2 s with up to 20 % jitter, measured in database time.
    assert 0.2 <= (retry.run_after - first.finished_at).total_seconds() < 0.5

    def all_attempts_failed():
        node.claim_pending()
        return Execution.objects.filter(job=job, state="failed").count() == 3

    wait_for(all_attempts_failed, timeout=15)
    attempts = Execution.objects.filter(job=job).order_by("attempt")
    assert [e.attempt for e in attempts] == [1, 2, 3]
    assert all(e.retry_of_id == first.pk for e in attempts[1:])
    assert not Execution.objects.filter(job=job, attempt=4).exists()


def test_a_run_past_its_timeout_is_marked_timed_out(node):
    job = make_job("stuck", "demo.sleep", kwargs={"seconds": 3}, timeout=1)
    execution = queue_manual_run(job)
    node.claim_pending()
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "timed_out", timeout=10)
    execution.refresh_from_db()
    assert "timed out after 1s" in execution.error
    # The job's own late return must not overwrite the verdict.
    wait_for(lambda: not node.inflight, timeout=10)
    execution.refresh_from_db()
    assert execution.state == "timed_out"


def test_a_node_stops_claiming_while_the_database_does_not_take_its_results(
    transactional_db, settings
):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    settings.SCHEDULER_PREFETCH = 10
    node = Node(node_id="blocked-recorder", batch=100, threads=2)
    job = make_job("quick", "demo.noop")
    triggers = due_triggers(job, node.unrecorded_limit + 500)
    # A result's statement adds the finished run to the minute rollup: with that table
    # locked, no result can be written. Claims add nothing to it, so they could go on.
    blocker = psycopg.connect(**connection.get_connection_params())
    blocker.execute("LOCK TABLE jobs_minuterollup IN SHARE MODE")

    def run_node():
        try:
            node.run_forever()
        finally:
            connection.close()  # this thread's own

    loop = threading.Thread(target=run_node)
    loop.start()
    try:
        wait_for(lambda: Execution.objects.count() >= node.unrecorded_limit, timeout=30)
        time.sleep(1.0)  # a node claims thousands a second: enough to overrun the limit
        assert Execution.objects.count() == node.unrecorded_limit
        assert not Execution.objects.filter(state="succeeded").exists()
        blocker.rollback()
        wait_for(
            lambda: Execution.objects.filter(state="succeeded").count() == len(triggers),
            timeout=60,
        )
        assert Execution.objects.count() == len(triggers)
    finally:
        blocker.close()
        node.stop()
        loop.join(30)


def test_shutdown_hands_unstarted_runs_back_and_marks_the_node_stopped(
    transactional_db, settings, tmp_path
):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    # One thread, and three runs claimed ahead of it once the node has seen how long its
    # runs take (a generous prefetch wait makes it prefetch for half-second runs too).
    settings.SCHEDULER_PREFETCH = 3
    settings.SCHEDULER_PREFETCH_WAIT = 60
    node = Node(node_id="draining", batch=10, threads=1)
    node.start()
    warm_up = queue_manual_run(make_job("warm-up", "demo.noop"))
    node.claim_pending()
    wait_for(lambda: Execution.objects.get(pk=warm_up.pk).state == "succeeded")
    trace = tmp_path / "trace.jsonl"
    job = make_job("queue", "demo.trace", kwargs={"path": str(trace), "seconds": 0.5})
    executions = [queue_manual_run(job) for _ in range(4)]
    assert node.claim_pending() == 4
    assert Counter(Execution.objects.filter(job=job).values_list("state", flat=True)) == {
        "running": 1,
        "dispatched": 3,
    }
    wait_for(lambda: trace.exists())  # the first run's body has started
    node.stop()
    node.shutdown()
    states = Counter(
        Execution.objects.filter(pk__in=[e.pk for e in executions]).values_list("state", flat=True)
    )
    assert states == {"succeeded": 1, "pending": 3}
    assert not Execution.objects.filter(job=job, state="pending").exclude(node="").exists()
    assert SchedulerNode.objects.get(pk="draining").state == "stopped"


def confirmed_starts() -> float:
    """Runs started by CONFIRM_START in this process so far (the node's own metric)."""
    return metrics.REGISTRY.get_sample_value("scheduler_start_confirmation_size_sum") or 0.0


@pytest.mark.parametrize("start_window, recorded_running", [(0.02, 4), (0, 1)])
def test_quick_runs_expected_to_start_within_the_start_window_are_recorded_running_by_the_claim(
    transactional_db, settings, tmp_path, start_window, recorded_running
):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    # One thread and a prefetch: the node claims four quick runs at once. Those it expects
    # to start within the start window need no second write to start: the claim records
    # them running. Beyond the window (or with none), they wait dispatched for
    # CONFIRM_START.
    settings.SCHEDULER_PREFETCH = 10
    settings.SCHEDULER_PREFETCH_WAIT = 60
    settings.SCHEDULER_START_WINDOW = start_window
    node = Node(node_id="windowed", batch=10, threads=1)
    node.start()
    try:
        trace = tmp_path / "trace.jsonl"
        job = make_job("quick", "demo.trace", kwargs={"path": str(trace), "seconds": 0})
        # The node learns how long this job's runs take.
        for _ in range(3):
            warm_up = queue_manual_run(job)
            assert node.claim_pending() == 1
            wait_for(lambda: finished([warm_up.pk]) and node.runner.idle_threads() == 1)  # noqa: B023
        executions = [queue_manual_run(job) for _ in range(4)]
        confirmed_before = confirmed_starts()
        assert node.claim_pending() == 4
        wait_for(lambda: finished([e.pk for e in executions]))
        # Every run not recorded running by the claim needed its own start confirmation.
        assert confirmed_starts() - confirmed_before == 4 - recorded_running
        assert set(Execution.objects.filter(job=job).values_list("state", flat=True)) == {
            "succeeded"
        }
        lines = [json.loads(line) for line in trace.read_text().splitlines()]
        started = Counter(line["execution"] for line in lines if line["event"] == "start")
        assert [started[e.pk] for e in executions] == [1, 1, 1, 1]
    finally:
        node.stop()
        node.shutdown()


def test_heartbeat_declares_a_silent_node_dead_exactly_once(transactional_db, settings):
    job = make_job("orphaned", "demo.noop", recover=True)
    SchedulerNode.objects.create(id="silent", hostname="h", pid=1)
    SchedulerNode.objects.filter(pk="silent").update(
        last_heartbeat=database_now() - timedelta(minutes=5)
    )
    orphan = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="running", node="silent"
    )
    first, second = Node(node_id="first"), Node(node_id="second")
    for n in (first, second):
        liveness.register_node(n.node_id, "h", 2, "test")
    assert first.recover_dead() == 1
    assert second.recover_dead() == 0
    orphan.refresh_from_db()
    assert orphan.state == "abandoned"
    assert SchedulerNode.objects.get(pk="silent").declared_dead_by == "first"
    recovery = Execution.objects.get(rerun_of=orphan)
    assert recovery.origin == "recovery" and recovery.state == "pending"


def test_a_node_restarted_under_the_same_id_recovers_what_its_last_process_left(
    transactional_db,
):
    # A crashed node comes back (same --node-id) before anyone declared it dead.
    job = make_job("interrupted", "demo.noop", recover=True)
    liveness.register_node("node-1", "h", 1, "test")
    leftover = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="schedule", state="running",
        node="node-1",
    )  # fmt: skip
    node = Node(node_id="node-1")
    node.start()
    try:
        leftover.refresh_from_db()
        assert leftover.state == "abandoned" and "restarted" in leftover.error
        recovery = Execution.objects.get(rerun_of=leftover)
        assert recovery.origin == "recovery"
        node.claim_pending()
        wait_for(lambda: Execution.objects.get(pk=recovery.pk).state == "succeeded")
    finally:
        node.stop()
        node.shutdown()


def test_a_node_without_room_looks_for_celery_fires_only_now_and_then(transactional_db, settings):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    make_job("remote", executor="celery")  # a celery job: a full node still claims those
    slow = make_job("slow", "demo.sleep", kwargs={"seconds": 1.5})
    node = Node(node_id="full-node", batch=10, threads=1)
    node.start()
    try:
        node.wake.set()
        node.sleep()  # learns that a celery job exists
        due_triggers(slow, 3)
        assert node.claim_due() == 1  # the one thread is busy now; two fires wait
        with CaptureQueriesContext(connection) as queries:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                node.step()
        claims_made = [q for q in queries.captured_queries if "FOR UPDATE OF t" in q["sql"]]
        # Every CELERY_CHECK_WITHOUT_ROOM (0.1 s), not on every pass of the loop.
        assert 1 <= len(claims_made) <= 0.5 / CELERY_CHECK_WITHOUT_ROOM + 2
    finally:
        node.stop()
        node.shutdown()


def trigger_rows_read() -> int:
    """Rows and index entries of jobs_trigger read so far in this transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_get_xact_tuples_returned('jobs_trigger'::regclass)"
            " + (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
            "    WHERE indrelid = 'jobs_trigger'::regclass)"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_full_node_claims_celery_fires_without_reading_the_inline_backlog():
    # A node with no free thread still claims celery jobs' triggers (SELECT_DUE_CELERY_
    # TRIGGERS). Overdue inline triggers ahead of them in time must not be read one by
    # one: with a big backlog that was its whole length, on every loop of a full node.
    backlog = make_job("inline backlog")
    remote = make_job("remote", executor="celery")
    now = database_now()
    Trigger.objects.bulk_create(
        Trigger(job=backlog, kind="once", run_at=when, next_fire_at=when)
        for when in [now - timedelta(hours=1)] * 2000
    )
    due_triggers(remote, 3)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_trigger")
        cursor.execute("ANALYZE jobs_job")
    before = trigger_rows_read()

    claimed = claims.claim_due_triggers(
        "full-node", limit=100, misfire_chunk=10, inline_room=0, starts=claims.StartPlan(0)
    )

    assert [run.job_id for run in claimed.runs] == [remote.pk] * 3
    assert trigger_rows_read() - before < 50


@pytest.mark.django_db
def test_a_full_node_without_celery_jobs_does_not_look_for_their_triggers():
    due_triggers(make_job("inline backlog"), 200)

    with CaptureQueriesContext(connection) as queries:
        claimed = claims.claim_due_triggers(
            "full-node", limit=100, misfire_chunk=10, inline_room=0, starts=claims.StartPlan(0)
        )

    assert claimed.runs == []
    assert not [q for q in queries.captured_queries if "FROM jobs_trigger" in q["sql"]]


@pytest.mark.django_db
def test_a_result_written_late_keeps_the_times_its_run_started_and_finished():
    # A result's times are "so long ago" when the run makes it; the recorder adds how long
    # the result waited before it was written.
    execution = make_execution(
        make_job("late"), state="dispatched", node="n1", started_at=None, finished_at=None
    )
    result = Result(execution.pk, "succeeded", started_ago=5.0, finished_ago=1.0)
    assert write_results("n1", [result], waited=[10.0]) == {execution.pk}
    execution.refresh_from_db()
    now = database_now()
    assert abs((now - execution.started_at).total_seconds() - 15.0) < 1.0
    assert abs((now - execution.finished_at).total_seconds() - 11.0) < 1.0


def test_a_result_written_after_a_dropped_connection_keeps_its_run_s_finish_time(
    node, fault_triggers, monkeypatch
):
    # The recorder's connection is terminated as it writes the result: it writes again
    # after RECONNECT_WAIT on a new connection, adding how long the result waited, so the
    # run is recorded finishing when it finished, not when the write went through.
    monkeypatch.setattr(recorder, "RECONNECT_WAIT", 1.0)
    faults.arm(faults.on_test_database, "record", "kill")
    trigger = overdue_trigger(make_job("quick", "demo.noop"), 1, kind="interval", interval=60)
    assert node.claim_due() == 1
    execution = Execution.objects.get(trigger=trigger)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "succeeded", timeout=30)
    assert faults.killed(faults.on_test_database, "record")
    execution.refresh_from_db()
    assert (execution.finished_at - execution.started_at).total_seconds() < 0.5


def hold_hand_over(node: Node) -> tuple[threading.Event, threading.Event]:
    """Make the node's next claim stop between its commit and the queueing of its runs
    (the node's own step, not the database: the claim has committed) until ``go_on``."""
    handing_over, go_on = threading.Event(), threading.Event()
    dispatch = node.dispatch

    def held_dispatch(runs, generation):
        if not handing_over.is_set():
            handing_over.set()
            go_on.wait(30)
        dispatch(runs, generation)

    node.dispatch = held_dispatch
    return handing_over, go_on


def in_thread(action) -> threading.Thread:
    def run():
        try:
            action()
        finally:
            connection.close()  # this thread's own

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@contextlib.contextmanager
def claim_held_before_queueing(node: Node):
    """node.claim_due in a thread of its own, held between its commit and the queueing of
    its runs for as long as the block lasts."""
    handing_over, go_on = hold_hand_over(node)
    claimer = in_thread(node.claim_due)
    try:
        assert handing_over.wait(10)
        yield
    finally:
        go_on.set()
        claimer.join(10)


def test_after_a_lost_connection_the_runs_of_a_claim_in_flight_are_not_taken_for_orphans(
    transactional_db,
):
    # The second claimer's claim has committed; before it queues its runs, the loop comes
    # back from a lost connection and looks for runs claimed unseen.
    node = Node(node_id="two-claims", batch=10, threads=4)
    due_triggers(make_job("quick", "demo.noop"), 3)
    with claim_held_before_queueing(node):
        node.connection_lost = True
        adopter = in_thread(node.adopt_orphans)
        adopter.join(0.5)
        assert adopter.is_alive(), "adopt_orphans did not wait for the claim in flight"
    adopter.join(10)
    # None was given back to pending (another node would have run it too): all three are
    # this node's, queued to run.
    assert Counter(Execution.objects.values_list("state", "node")) == {("running", "two-claims"): 3}
    assert set(node.inflight) == set(Execution.objects.values_list("pk", flat=True))
    assert not node.connection_lost


def test_two_claims_in_flight_never_record_more_runs_running_than_free_threads(
    transactional_db, settings
):
    settings.SCHEDULER_PREFETCH = 0  # free threads only
    node = Node(node_id="two-claims", batch=10, threads=2)
    due_triggers(make_job("quick", "demo.noop"), 6)
    with claim_held_before_queueing(node):
        # The first claim took both free threads; its runs are not queued yet.
        assert node.claim_due() == 0
        assert Execution.objects.filter(state="running").count() == 2
    assert Execution.objects.count() == 2


def test_shutdown_waits_for_the_second_claimer_and_gives_back_what_it_claimed(
    transactional_db, settings
):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    node = Node(node_id="stopping", batch=10, threads=2)
    job = make_job("slow", "demo.sleep", kwargs={"seconds": 30})
    node.start()
    handing_over, go_on = hold_hand_over(node)
    due_triggers(job, 4)
    node.draining = True  # as after a full claim: the second claimer claims too
    node.second_wake.set()
    assert handing_over.wait(10)
    node.stop()
    stopper = in_thread(node.shutdown)
    stopper.join(0.5)  # without waiting for the second claimer, it would be done by now
    go_on.set()
    stopper.join(30)
    assert not stopper.is_alive()
    # Nothing stranded in the name of a stopped node: what the claim recorded (a run for
    # each free thread) went back to pending, never started, for any node to run.
    assert Counter(Execution.objects.values_list("state", "node")) == {("pending", ""): 2}
    assert SchedulerNode.objects.get(pk="stopping").state == "stopped"


def test_a_claim_that_committed_before_the_node_was_declared_dead_starts_nothing_unconfirmed(
    transactional_db, settings, tmp_path
):
    # The node is paused between its claim's commit and queueing the runs; meanwhile the
    # cluster declares it dead and takes the runs back, and one of its threads rejoins.
    # The runs the claim recorded running must not start on the strength of that claim.
    node = Node(node_id="paused", batch=10, threads=2)
    trace = tmp_path / "trace.jsonl"
    job = make_job("traced", "demo.trace", kwargs={"path": str(trace)}, recover=True)
    node.start()
    try:
        due_triggers(job, 2)
        with claim_held_before_queueing(node):
            assert Counter(Execution.objects.values_list("state", flat=True)) == {"running": 2}
            SchedulerNode.objects.filter(pk="paused").update(
                last_heartbeat=database_now() - timedelta(minutes=5)
            )
            other = Node(node_id="other")
            liveness.register_node(other.node_id, "h", 2, "test")
            assert other.recover_dead() == 1
            assert node.prove_alive() is False  # declared dead: it rejoins
        # Each was abandoned and recovered by the cluster; the node may run the recovery
        # runs, never the abandoned ones.
        recoveries = Execution.objects.filter(origin="recovery")
        assert recoveries.count() == 2
        wait_for(lambda: node.runner.idle_threads() == 2 and not node.inflight)
        assert node.claim_pending() == 2
        wait_for(lambda: finished([e.pk for e in recoveries]))
        wait_for(lambda: not node.inflight)
        started = [
            json.loads(line)["execution"]
            for line in trace.read_text().splitlines()
            if json.loads(line)["event"] == "start"
        ]
        assert sorted(started) == sorted(e.pk for e in recoveries)
    finally:
        node.stop()
        node.shutdown()


def test_an_unexpected_error_in_the_second_claimer_stops_the_node_and_leaves_nothing_stranded(
    transactional_db, settings
):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    node = Node(node_id="failing", batch=2, threads=4)
    job = make_job("quick", "demo.noop")
    due_triggers(job, 200)
    dispatch = node.dispatch

    def failing_dispatch(runs, generation):
        if threading.current_thread().name == "second-claimer":
            raise ValueError("a bug between the claim's commit and its runs' queueing")
        dispatch(runs, generation)

    node.dispatch = failing_dispatch
    failure = []

    def run_node():
        try:
            node.run_forever()
        except RuntimeError as e:
            failure.append(e)

    loop = in_thread(run_node)
    loop.join(30)
    assert not loop.is_alive()
    assert failure and isinstance(failure[0].__cause__, ValueError)
    # Its failed claim committed runs it never queued: the node is left active rather than
    # marked stopped, so that the cluster declares it dead and takes them back.
    assert SchedulerNode.objects.get(pk="failing").state == "active"
    SchedulerNode.objects.filter(pk="failing").update(
        last_heartbeat=database_now() - timedelta(minutes=5)
    )
    other = Node(node_id="other")
    liveness.register_node(other.node_id, "h", 2, "test")
    assert other.recover_dead() == 1
    assert not Execution.objects.filter(state__in=["dispatched", "running"]).exists()


def old_history(job, count: int) -> list[int]:
    """``count`` succeeded executions of ``job`` past a 30-day retention."""
    old = database_now() - timedelta(days=40)
    return [make_execution(job, created_at=old).pk for _ in range(count)]


@contextlib.contextmanager
def row_locked(*execution_ids: int):
    """The executions' rows locked by another connection: a prune's DELETE waits on them.

    FOR NO KEY UPDATE: a foreign key check (FOR KEY SHARE) of a row that references one
    of them does not wait, as it would on FOR UPDATE or on the DELETE's own lock.
    """
    blocker = psycopg.connect(**connection.get_connection_params())
    try:
        blocker.execute(
            "SELECT 1 FROM jobs_execution WHERE id = ANY(%s) FOR NO KEY UPDATE",
            [list(execution_ids)],
        )
        yield
    finally:
        blocker.close()


def pruning_backend() -> int | None:
    """The pid of the connection whose prune statement waits for a row lock, if one does.

    Waiting, not merely active: a statement shows as active before it takes its snapshot,
    and a rerun committed in between would be unlinked by the very batch meant to trip on
    it (a fresh-clone CI run saw "pruned 2" instead of the failure).
    """
    rows = faults.on_test_database(
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active'"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        ["%DELETE FROM jobs_execution WHERE id IN (SELECT id FROM old)%"],
    )
    return rows[0][0] if rows else None


def start_leader_prune(node: Node) -> int:
    """The leader's heartbeat with its prune due; returns the pid of the pruning backend
    once its statement runs (held there by a row lock the test took)."""
    node.next_prune = 0.0
    node.heartbeat()
    return wait_for(pruning_backend)


def test_the_leader_prunes_on_a_thread_of_its_own_and_goes_on_claiming_meanwhile(node, settings):
    settings.SCHEDULER_HISTORY_RETENTION_DAYS = 30
    job = make_job("tick", "demo.noop")
    old = old_history(job, 3)
    with row_locked(old[0]):
        node.next_prune = 0.0
        beat = in_thread(node.heartbeat)
        beat.join(10)
        assert not beat.is_alive(), "the leader's heartbeat waited for its prune"
        wait_for(lambda: pruning_backend() is not None)
        trigger = overdue_trigger(job, 1, kind="interval", interval=60)
        assert node.claim_due() == 1
        wait_for(lambda: Execution.objects.filter(trigger=trigger, state="succeeded").exists())
        assert Execution.objects.filter(pk__in=old).count() == 3
    node.pruner.join(10)
    assert not Execution.objects.filter(pk__in=old).exists()


def test_a_prune_that_loses_its_connection_is_logged_and_tried_again_soon(node, settings, caplog):
    settings.SCHEDULER_HISTORY_RETENTION_DAYS = 30
    job = make_job("tick", "demo.noop")
    old = old_history(job, 3)
    with row_locked(old[0]):
        pid = start_leader_prune(node)
        faults.on_test_database("SELECT pg_terminate_backend(%s)", [pid])
        node.pruner.join(10)
        assert not node.pruner.is_alive()
    assert "pruning history stopped: database connection lost" in caplog.text
    assert Execution.objects.filter(pk__in=old).count() == 3
    assert node.next_prune <= time.monotonic() + PRUNE_RETRY
    # The leader's next try, once due, prunes it all.
    node.next_prune = 0.0
    node.heartbeat()
    node.pruner.join(10)
    assert not Execution.objects.filter(pk__in=old).exists()


def test_a_stopping_node_ends_its_prune_at_the_batch_in_hand(node, settings):
    settings.SCHEDULER_HISTORY_RETENTION_DAYS = 30
    job = make_job("tick", "demo.noop")
    first = old_history(job, 1)[0]
    batch = history.PRUNE_BATCH_SIZE
    faults.on_test_database(
        "INSERT INTO jobs_execution (job_id, scheduled_for, origin, state, attempt, args,"
        " kwargs, node, created_at, run_after, started_at, finished_at, error, traceback,"
        " note, cancel_reason, cancel_requested_by, progress_message, reason)"
        " SELECT job_id, scheduled_for, origin, state, attempt, args, kwargs, node,"
        " created_at + interval '1 hour', run_after, started_at, finished_at, error,"
        " traceback, note,"
        " cancel_reason, cancel_requested_by, progress_message, reason"
        " FROM jobs_execution, generate_series(1, %s) WHERE id = %s",
        [2 * batch, first],
    )
    # The oldest, so in the first batch: that batch waits for its lock.
    with row_locked(first):
        start_leader_prune(node)
        node.stop()
        stopping = in_thread(node.shutdown)
    stopping.join(30)
    assert not stopping.is_alive() and not node.pruner.is_alive()
    # The batch it was deleting when told to stop, and no other.
    assert Execution.objects.count() == batch + 1
    assert SchedulerNode.objects.get(pk=node.node_id).state == "stopped"


def test_each_claimed_run_has_args_and_kwargs_of_its_own(transactional_db):
    # Most runs have none: the claim builds them without the JSON parser, and a run that
    # changes its own must not change another's.
    job = make_job("plain", "demo.noop")
    due_triggers(job, 2)
    claimed = claims.claim_due_triggers(
        "test-node", 10, 10, inline_room=10, starts=claims.StartPlan(0)
    )
    first, second = claimed.runs
    assert (first.args, first.kwargs) == ([], {})
    first.args.append("changed")
    first.kwargs["changed"] = True
    assert (second.args, second.kwargs) == ([], {})


@pytest.mark.parametrize("rerun_of_first", [False, True])
def test_a_prune_that_fails_is_logged_counted_and_tried_again_soon(
    node, settings, caplog, rerun_of_first
):
    settings.SCHEDULER_HISTORY_RETENTION_DAYS = 30
    job = make_job("tick", "demo.noop")
    # The batch waits on the lock of whichever of the two rows it comes to first (the
    # order is the plan's: each order is tried); meanwhile a rerun of ``rerun_of``
    # commits. The batch then deletes that row too, and its commit fails the foreign key
    # of the rerun, which its statement did not see.
    first, second = old_history(job, 2)
    # ``first`` comes first by id and by age.
    Execution.objects.filter(pk=second).update(created_at=F("created_at") + timedelta(hours=1))
    held, rerun_of = (second, first) if rerun_of_first else (first, second)
    errors = metrics.REGISTRY.get_sample_value(
        "scheduler_internal_errors_total", {"thread": "pruner"}
    )
    # Both rows locked: the batch cannot have taken ``rerun_of``'s row before the rerun's
    # foreign key check, whichever it comes to first.
    with row_locked(held, rerun_of):
        start_leader_prune(node)
        rerun = make_execution(job, rerun_of_id=rerun_of)
        node.pruner.join(0.5)
        assert node.pruner.is_alive()  # still waiting for the lock
    node.pruner.join(10)
    assert not node.pruner.is_alive()
    assert "pruning history failed" in caplog.text
    assert (
        metrics.REGISTRY.get_sample_value("scheduler_internal_errors_total", {"thread": "pruner"})
        == errors + 1
    )
    assert Execution.objects.filter(pk__in=[held, rerun_of]).count() == 2  # rolled back
    assert node.next_prune <= time.monotonic() + PRUNE_RETRY
    # The next try unlinks the rerun first, as for any newer row, and prunes both.
    node.next_prune = 0.0
    node.heartbeat()
    node.pruner.join(10)
    assert not Execution.objects.filter(pk__in=[held, rerun_of]).exists()
    assert Execution.objects.get(pk=rerun.pk).rerun_of_id is None
