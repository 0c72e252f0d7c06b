"""Real scheduler node processes sharing one database."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection

from jobs.models import Execution, Job, Trigger, database_now, queue_manual_run
from tests.conftest import wait_for
from tests.jobs.factories import due_triggers, make_job

pytestmark = pytest.mark.cluster


def recorded_runs(path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def assert_each_fire_recorded_and_run_once(run_file):
    scheduled = Execution.objects.filter(origin="schedule")
    keys = Counter(scheduled.values_list("trigger_id", "scheduled_for"))
    assert keys and max(keys.values()) == 1
    runs = Counter(recorded_runs(run_file))
    assert max(runs.values()) == 1, "an execution ran twice"
    succeeded = set(Execution.objects.filter(state="succeeded").values_list("id", flat=True))
    assert set(runs) == succeeded
    assert not Execution.objects.exclude(state="succeeded").exists()


@pytest.mark.parametrize("node_count", [2, 4])
def test_nodes_record_and_run_every_fire_time_exactly_once(start_node, tmp_path, node_count):
    run_file = tmp_path / "runs.txt"
    record = make_job("record", "demo.record_run", kwargs={"path": str(run_file)})
    one_offs = due_triggers(record, 1500, spread_seconds=4)
    every_second = [
        Trigger.objects.create(job=record, kind="cron", cron="* * * * * *") for _ in range(20)
    ]
    every_second += [
        Trigger.objects.create(job=record, kind="interval", interval=1) for _ in range(20)
    ]
    nodes = [start_node(f"n{i}", args=["--batch", "20"]) for i in range(node_count)]

    wait_for(
        lambda: Execution.objects.filter(trigger__in=one_offs, state="succeeded").count() == 1500,
        timeout=60,
        message="all one-off fires to succeed",
    )
    start = database_now()
    wait_for(lambda: database_now() > start + timedelta(seconds=4), interval=0.5)
    # Quiesce before stopping, so every recorded fire has run.
    Trigger.objects.update(paused=True)
    wait_for(
        lambda: not Execution.objects.filter(state__in=["pending", "dispatched", "running"]),
        message="in-flight executions to finish",
    )
    for node in nodes:
        assert node.terminate() == 0, node.log()

    assert_each_fire_recorded_and_run_once(run_file)
    assert Execution.objects.count() >= 1500 + 40 * 4
    # Nothing was lost: every repeating trigger fired at each of its fire times, with no gaps.
    for trigger in every_second:
        times = list(
            Execution.objects.filter(trigger=trigger)
            .order_by("scheduled_for")
            .values_list("scheduled_for", flat=True)
        )
        gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)}
        assert gaps == {1.0}, (trigger.describe(), gaps)
        trigger.refresh_from_db()
        assert trigger.next_fire_at > times[-1]
    nodes_that_worked = set(Execution.objects.values_list("node", flat=True))
    assert len(nodes_that_worked) >= 2


def test_killed_node_is_declared_dead_and_its_run_recovered(start_node, tmp_path):
    run_file = tmp_path / "runs.txt"
    job = make_job("slow", "demo.record_run", kwargs={"path": str(run_file), "seconds": 3},
                   recover=True)  # fmt: skip
    victim = start_node("victim")
    from jobs.models import queue_manual_run

    first = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=first.pk).state == "running", timeout=20)
    victim.kill9()
    survivor = start_node("survivor")

    first = wait_for(
        lambda: Execution.objects.filter(pk=first.pk, state="abandoned").first(),
        timeout=30,
        message="the killed node's run to be abandoned",
    )
    assert "died" in first.error
    recovery = wait_for(
        lambda: Execution.objects.filter(rerun_of=first, state="succeeded").first(),
        timeout=30,
        message="the recovery run to succeed",
    )
    assert recovery.origin == "recovery"
    assert recovery.node == "survivor"
    from locks.models import SchedulerNode

    victim_row = SchedulerNode.objects.get(pk="victim")
    assert victim_row.state == "dead"
    assert victim_row.declared_dead_by == "survivor"
    assert Execution.objects.filter(origin="recovery").count() == 1
    survivor.terminate()
    # The victim started the run once before dying; the recovery ran it once more.
    assert sorted(recorded_runs(run_file)) == [first.pk, recovery.pk]


def test_a_node_killed_while_draining_quick_runs_loses_no_fire_time(start_node, tmp_path):
    # Runs of a quick job are recorded running by the claim (SCHEDULER_START_WINDOW): a
    # node killed while it holds some it has not started leaves them abandoned, and a
    # job that asks for recovery runs each of them again. No fire time is lost, and no
    # execution runs twice.
    run_file = tmp_path / "runs.txt"
    job = make_job("quick", "demo.record_run", kwargs={"path": str(run_file)}, recover=True)
    victim = start_node("victim")
    for _ in range(3):  # the node learns that this job's runs are quick
        warm_up = queue_manual_run(job)
        wait_for(lambda: Execution.objects.get(pk=warm_up.pk).state == "succeeded")  # noqa: B023
    triggers = due_triggers(job, 20000)
    wait_for(lambda: Execution.objects.filter(origin="schedule").count() >= 2000, timeout=30,
             interval=0.02)  # fmt: skip

    def frozen_holding_runs() -> bool:
        # Frozen, the victim changes nothing (once the statements it had sent are done):
        # what it holds then is what it holds at the kill.
        victim.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        if Execution.objects.filter(origin="schedule", state="running").exists():
            return True
        victim.proc.send_signal(signal.SIGCONT)
        return False

    wait_for(frozen_holding_runs, interval=0.01, message="the victim to hold running runs")
    victim.kill9()
    survivor = start_node("survivor")
    wait_for(
        lambda: (
            not Trigger.objects.filter(next_fire_at__isnull=False).exists()
            and not Execution.objects.filter(
                state__in=["pending", "dispatched", "running"]
            ).exists()
        ),
        timeout=120,
        message="every fire time to be claimed and every run to end",
    )
    assert survivor.terminate() == 0, survivor.log()

    fires = Execution.objects.filter(origin="schedule")
    assert fires.count() == len(triggers)
    assert set(fires.values_list("state", flat=True)) <= {"succeeded", "abandoned"}
    abandoned = fires.filter(state="abandoned")
    assert abandoned.exists()  # what the victim held, recorded running, when it was killed
    recoveries = Execution.objects.filter(origin="recovery")
    assert Counter(recoveries.values_list("rerun_of_id", flat=True)) == Counter(
        abandoned.values_list("id", flat=True)
    )
    assert set(recoveries.values_list("state", flat=True)) == {"succeeded"}
    ran = Counter(recorded_runs(run_file))
    assert max(ran.values()) == 1, "an execution ran twice"
    succeeded = set(Execution.objects.filter(state="succeeded").values_list("id", flat=True))
    assert succeeded <= set(ran)


def test_node_reconnects_after_its_connections_are_terminated(start_node, tmp_path):
    run_file = tmp_path / "runs.txt"
    job = make_job("tick", "demo.record_run", kwargs={"path": str(run_file)})
    trigger = Trigger.objects.create(job=job, kind="interval", interval=1)
    node = start_node("reconnecting")
    wait_for(lambda: Execution.objects.filter(trigger=trigger).count() >= 3, timeout=20)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            ["node:reconnecting"],
        )
        assert cursor.rowcount >= 1
    before = Execution.objects.filter(trigger=trigger).count()
    wait_for(
        lambda: Execution.objects.filter(trigger=trigger, state="succeeded").count() >= before + 3,
        timeout=30,
        message="fires to continue after the connections were killed",
    )
    assert node.terminate() == 0, node.log()
    assert "connection lost" in node.log()
    assert_each_fire_recorded_and_run_once(run_file)


def libfaketime() -> str:
    """Debian's libfaketime (package faketime; `make test` installs it)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "Debian's faketime package is needed (make test installs it)"
    return found[0]


@pytest.mark.parametrize("skew", ["+1h", "-1h"])
def test_node_with_a_skewed_clock_fires_when_the_others_would(start_node, tmp_path, skew):
    # The library is preloaded into the node itself (the `faketime` wrapper would stand
    # between the test and the node's signals). A machine with a wrong wall clock still
    # has a correct monotonic clock (time since boot), so only the wall clock is faked.
    skewed_env = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": skew,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    shown = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env={**os.environ, **skewed_env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        real = float(cursor.fetchone()[0])
    assert abs(abs(float(shown.stdout) - real) - 3600) < 60, "the clock was not skewed"

    run_file = tmp_path / "runs.txt"
    job = make_job("skewed", "demo.record_run", kwargs={"path": str(run_file)})
    soon = Trigger.objects.create(job=job, kind="interval", interval=2)
    later = Trigger.objects.create(
        job=job, kind="once", run_at=database_now() + timedelta(minutes=30)
    )
    node = start_node("skewed", extra_env=skewed_env)
    wait_for(
        lambda: Execution.objects.filter(trigger=soon, state="succeeded").count() >= 3,
        timeout=30,
    )
    assert node.terminate() == 0, node.log()

    for execution in Execution.objects.filter(trigger=soon):
        lag = (execution.dispatched_at - execution.scheduled_for).total_seconds()
        assert 0 <= lag < 1.5, f"fired {lag:.3f}s after its time"
    assert not Execution.objects.filter(trigger=later).exists()
    from locks.models import SchedulerNode

    row = SchedulerNode.objects.get(pk="skewed")
    assert abs((row.last_heartbeat - row.started_at).total_seconds()) < 60
    assert Job.objects.count() == 1


def test_a_sleeping_node_is_woken_by_notify_for_manual_runs_and_sooner_triggers(start_node):
    from jobs.models import queue_manual_run

    job = make_job("wake", "demo.noop")
    trigger = Trigger.objects.create(job=job, kind="interval", interval=3600)
    # Heartbeats and polls far apart: only a NOTIFY can make this node act in time.
    node = start_node(
        "sleeper",
        extra_env={
            "SCHEDULER_HEARTBEAT_INTERVAL": "60",
            "SCHEDULER_POLL_INTERVAL": "120",
            "SCHEDULER_LEADER_LEASE": "150",
        },
    )
    wait_for(lambda: "started" in node.log(), timeout=20)
    wait_for(lambda: database_now() > trigger.created_at + timedelta(seconds=2), interval=0.2)

    manual = queue_manual_run(job)
    wait_for(
        lambda: Execution.objects.get(pk=manual.pk).state == "succeeded",
        timeout=10,
        message="the manual run to wake the node and succeed",
    )

    trigger.interval = 1  # a schedule edit that makes the trigger due sooner
    trigger.save()
    wait_for(
        lambda: Execution.objects.filter(trigger=trigger, state="succeeded").exists(),
        timeout=10,
        message="the edited trigger to wake the node and fire",
    )
    assert node.terminate() == 0, node.log()


def traced(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_node_paused_past_its_timeout_never_starts_runs_taken_from_it(start_node, tmp_path):
    trace_path = tmp_path / "trace.jsonl"
    job = make_job("traced", "demo.trace", kwargs={"path": str(trace_path), "seconds": 3},
                   recover=True)  # fmt: skip
    # Two threads, and up to four runs claimed ahead of them once the node knows how long
    # its runs take (a long prefetch wait makes it prefetch even for 3-second runs).
    paused = start_node(
        "paused",
        args=["--threads", "2"],
        extra_env={"SCHEDULER_PREFETCH": "4", "SCHEDULER_PREFETCH_WAIT": "3600"},
    )
    warm_up = queue_manual_run(make_job("warm-up", "demo.noop"))
    wait_for(lambda: Execution.objects.get(pk=warm_up.pk).state == "succeeded")
    triggers = due_triggers(job, 6)
    wait_for(
        lambda: (
            Execution.objects.filter(job=job, node="paused").count() == 6
            and len(traced(trace_path)) == 2
        ),
        message="the node to start two runs and hold four more",
    )
    assert Execution.objects.filter(job=job, state="dispatched").count() == 4
    survivor = start_node("survivor")
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        from locks.models import SchedulerNode

        wait_for(
            lambda: SchedulerNode.objects.get(pk="paused").state == "dead",
            timeout=30,
            message="the paused node to be declared dead",
        )
        wait_for(
            lambda: all(
                Execution.objects.filter(trigger=t, state="succeeded").exists() for t in triggers
            ),
            timeout=30,
            message=f"every fire time to run on the survivor\n{survivor.log()}",
        )
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "declared dead by another node" in paused.log(), timeout=20)
    # The two bodies the paused node had started run to their end.
    wait_for(lambda: sum(1 for line in traced(trace_path) if line["event"] == "end") == 8)
    Trigger.objects.update(paused=True)
    wait_for(lambda: not Execution.objects.filter(state__in=["pending", "dispatched", "running"]))
    assert paused.terminate() == 0, paused.log()
    assert survivor.terminate() == 0, survivor.log()

    lines = traced(trace_path)
    starts = [line for line in lines if line["event"] == "start"]
    paused_starts = [line for line in starts if line["pid"] == paused.proc.pid]
    # The paused node started only the two runs it had begun before the pause.
    assert len(paused_starts) == 2
    assert max(line["time"] for line in paused_starts) < min(
        e.finished_at.timestamp() for e in Execution.objects.filter(state="abandoned")
    )
    assert Counter(line["execution"] for line in starts).most_common(1)[0][1] == 1
    for trigger in triggers:
        runs = list(Execution.objects.filter(trigger=trigger).order_by("id"))
        bodies = [line for line in starts if line["execution"] in {e.pk for e in runs}]
        if runs[0].state == "abandoned":
            # Really in progress when the node was declared dead: run again as a recovery,
            # and the history says why; the recovery holds a larger fencing token.
            assert "runner node died" in runs[0].error
            assert [(e.origin, e.state, e.rerun_of_id) for e in runs[1:]] == [
                ("recovery", "succeeded", runs[0].pk)
            ]
            assert len(bodies) == 2 and bodies[0]["fence"] < bodies[1]["fence"]
        else:
            # Claimed but not started: given back and run once, by the survivor.
            assert [(e.state, e.node) for e in runs] == [("succeeded", "survivor")]
            assert len(bodies) == 1 and bodies[0]["pid"] != paused.proc.pid
    assert Execution.objects.filter(job=job, state="abandoned").count() == 2


def test_fast_runs_never_wait_behind_slow_ones_while_other_nodes_have_free_threads(
    start_node, tmp_path
):
    trace_path = tmp_path / "trace.jsonl"
    kwargs = {"path": str(trace_path)}
    slow = make_job("slow", "demo.trace", kwargs={**kwargs, "seconds": 1.5})
    fast = make_job("fast", "demo.trace", kwargs=kwargs)
    Trigger.objects.create(job=slow, kind="interval", interval=1, paused=True)
    for _ in range(5):
        Trigger.objects.create(job=fast, kind="interval", interval=1, paused=True)
    nodes = [start_node(f"m{i}", args=["--threads", "1"]) for i in range(3)]
    wait_for(lambda: all("started" in node.log() for node in nodes))
    # Every second the slow job comes due just before five fast ones.
    due = database_now() + timedelta(seconds=1)
    Trigger.objects.filter(job=slow).update(next_fire_at=due, paused=False)
    Trigger.objects.filter(job=fast).update(
        next_fire_at=due + timedelta(seconds=0.05), paused=False
    )
    wait_for(
        lambda: Execution.objects.filter(job=slow, state="succeeded").count() >= 10, timeout=40
    )
    Trigger.objects.update(paused=True)
    wait_for(lambda: not Execution.objects.filter(state__in=["pending", "dispatched", "running"]))
    for node in nodes:
        assert node.terminate() == 0, node.log()

    started = {
        line["execution"]: line["time"] for line in traced(trace_path) if line["event"] == "start"
    }
    fast_runs = Execution.objects.filter(job=fast)
    lags = [started[e.pk] - e.scheduled_for.timestamp() for e in fast_runs]
    assert len(lags) >= 50
    # A fast run claimed by a node whose only thread runs a 1.5 s job would wait for it.
    assert max(lags) < 0.75, sorted(
        (round(lag, 3), str(e.scheduled_for), e.node)
        for lag, e in zip(lags, fast_runs, strict=True)
    )[-12:]
    shares = Counter(Execution.objects.values_list("node", flat=True))
    fair = sum(shares.values()) / len(nodes)
    # No node hoards: each takes a real part (not an exact third: timing is noisy).
    assert all(shares[node.node_id] >= fair / 4 for node in nodes), shares
