"""Concurrency policy: `forbid` never lets two runs of a job overlap, and says so."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.models import Execution, Trigger, database_now, queue_manual_run
from jobs.node import Node
from locks.models import Lock
from tests.conftest import wait_for
from tests.jobs.factories import make_job


def runs_never_overlap(path) -> list[str]:
    """The job's start/end lines alternate: no run started while another was running."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        expected = "start" if i % 2 == 0 else "end"
        assert line.split()[0] == expected, f"overlap at line {i}: {lines}"
        if expected == "end":
            assert line.split()[1] == lines[i - 1].split()[1]
    return lines


@pytest.mark.cluster
def test_forbid_records_overlapping_fires_as_skipped_across_nodes(start_node, tmp_path):
    hold_file = tmp_path / "hold.txt"
    job = make_job("slow", "demo.hold", kwargs={"path": str(hold_file), "seconds": 1.5},
                   concurrency_policy="forbid")  # fmt: skip
    trigger = Trigger.objects.create(job=job, kind="interval", interval=1)
    nodes = [start_node("a"), start_node("b")]
    wait_for(
        lambda: (
            Execution.objects.filter(trigger=trigger, state="skipped").count() >= 3
            and Execution.objects.filter(trigger=trigger, state="succeeded").count() >= 2
        ),
        timeout=30,
        message="both skipped and succeeded runs",
    )
    Trigger.objects.update(paused=True)
    wait_for(lambda: not Execution.objects.exclude(state__in=Execution.FINAL_STATES).exists())
    for node in nodes:
        assert node.terminate() == 0, node.log()

    lines = runs_never_overlap(hold_file)
    succeeded = Execution.objects.filter(state="succeeded")
    assert {int(line.split()[1]) for line in lines} == set(succeeded.values_list("id", flat=True))
    skipped = Execution.objects.filter(state="skipped")
    assert all("concurrency policy forbid" in e.note for e in skipped)
    assert all(e.started_at is None for e in skipped)
    assert not Execution.objects.exclude(state__in=["succeeded", "skipped"]).exists()
    lock = Lock.objects.get(name=job.lock_name)
    assert lock.holder == "" and lock.token == succeeded.count()


def test_allow_lets_runs_overlap(transactional_db, tmp_path):
    hold_file = tmp_path / "hold.txt"
    job = make_job("parallel", "demo.hold", kwargs={"path": str(hold_file), "seconds": 0.5})
    node = Node(node_id="allowing", threads=4)
    node.start()
    try:
        for _ in range(3):
            queue_manual_run(job)
        node.claim_pending()
        wait_for(lambda: Execution.objects.filter(state="succeeded").count() == 3)
    finally:
        node.stop()
        node.shutdown()
    with pytest.raises(AssertionError):
        runs_never_overlap(hold_file)
    assert not Lock.objects.exists()


def test_a_forbid_run_past_its_timeout_is_timed_out_and_its_lock_released(transactional_db):
    job = make_job("stuck", "demo.sleep", kwargs={"seconds": 3}, timeout=1,
                   concurrency_policy="forbid")  # fmt: skip
    node = Node(node_id="timing-out", threads=2)
    node.start()
    try:
        execution = queue_manual_run(job)
        node.claim_pending()
        wait_for(lambda: Lock.objects.filter(name=job.lock_name).exclude(holder="").exists())
        lock = Lock.objects.get(name=job.lock_name)
        assert lock.holder == "timing-out" and lock.execution_id == execution.pk
        wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "timed_out")
        wait_for(lambda: Lock.objects.get(name=job.lock_name).holder == "", timeout=5)
        # The lock is free for the next run while the old thread still sleeps.
        assert Lock.objects.get(name=job.lock_name).locked_until <= database_now()
        second = queue_manual_run(job, kwargs={"seconds": 0})
        node.claim_pending()
        wait_for(lambda: Execution.objects.get(pk=second.pk).state == "succeeded")
    finally:
        node.stop()
        node.shutdown()
    assert database_now() - execution.created_at < timedelta(minutes=1)
