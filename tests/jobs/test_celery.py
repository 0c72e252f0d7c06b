"""The Celery executor with a real Redis broker and real worker processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.db import connection

from jobs.models import Execution, Trigger, database_now, queue_manual_run
from locks.models import Lock, SchedulerNode
from tests import faults
from tests.conftest import ROOT, test_database_url, wait_for
from tests.jobs.factories import make_job
from tests.jobs.test_concurrency import runs_never_overlap

pytestmark = [pytest.mark.cluster, pytest.mark.celery]

BROKER = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
# Workers heartbeat their executions often and are given up on quickly.
CELERY_ENV = {
    "CELERY_BROKER_URL": BROKER,
    "SCHEDULER_EXECUTION_HEARTBEAT": "0.5",
    "SCHEDULER_EXECUTION_TIMEOUT": "3",
}
_queues = itertools.count()


class WorkerProcess:
    """`celery -A controlplane worker` in its own process group, against the test database."""

    def __init__(
        self, name: str, queue: str, log_dir, concurrency: int = 2, extra_env: dict | None = None
    ):
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = self.log_path.open("w")
        env = {
            **os.environ,
            **CELERY_ENV,
            "DATABASE_URL": test_database_url(),
            "APP_NAME": f"worker:{name}",
            **(extra_env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "-Q", queue,
             "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
        )  # fmt: skip
        wait_for(lambda: "ready." in self.log() or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text()

    def kill9(self) -> None:
        # The whole worker: its main process and the pool process running the job.
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def queue():
    """A queue of this test's own on the shared broker, deleted afterwards with what the
    broker keeps of it (its bindings, messages left in it)."""
    name = f"test-{os.getpid()}-{next(_queues)}"
    yield name
    # kombu's Redis transport keeps a queue as a list per priority and its binding as
    # sets (a queue_delete from a new channel does not know the bindings), and a killed
    # worker's unacknowledged messages as [message, exchange, routing key] in "unacked",
    # which a later worker would put back into the queue.
    broker = redis.Redis.from_url(BROKER)
    lists = list(broker.scan_iter(match=f"{name}\x06\x16*")) + [name]
    broker.delete(*lists, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    for tag, entry in broker.hgetall("unacked").items():
        if json.loads(entry)[2] == name:
            broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)
    broker.close()


@pytest.fixture
def start_worker(transactional_db, tmp_path, queue):
    workers: list[WorkerProcess] = []

    def start(
        name: str = "w1", concurrency: int = 2, extra_env: dict | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(name, queue, tmp_path, concurrency, extra_env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_node(start_node):
    def start(node_id: str = "celery-node"):
        return start_node(node_id, extra_env=CELERY_ENV)

    return start


def celery_job(name, target="demo.record_run", queue="scheduler", **options):
    return make_job(name, target, executor="celery", queue=queue, **options)


def lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_celery_job_fires_on_schedule_and_succeeds_on_a_worker(
    celery_node, start_worker, tmp_path, queue
):
    run_file = tmp_path / "runs.txt"
    job = celery_job("remote", kwargs={"path": str(run_file)}, queue=queue)
    trigger = Trigger.objects.create(job=job, kind="interval", interval=1)
    start_worker()
    celery_node()
    wait_for(lambda: Execution.objects.filter(trigger=trigger, state="succeeded").count() >= 3,
             timeout=30)  # fmt: skip
    for execution in Execution.objects.filter(trigger=trigger, state="succeeded"):
        assert execution.node.startswith("worker:")
        assert execution.published_at is not None and execution.heartbeat_at is not None
        assert execution.started_at <= execution.finished_at
    ran = [int(x) for x in lines(run_file)]
    assert len(ran) == len(set(ran))


def test_a_named_celery_task_runs_on_a_worker(celery_node, start_worker, tmp_path, queue):
    out = tmp_path / "named.txt"
    job = make_job("beat-style", "", executor="celery", celery_task="demo.named_append",
                   kwargs={"path": str(out), "line": "hello"}, queue=queue)  # fmt: skip
    start_worker()
    celery_node()
    execution = queue_manual_run(job)
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "succeeded", timeout=30)
    assert lines(out) == ["hello"]
    assert Execution.objects.get(pk=execution.pk).node.startswith("worker:")


def test_failure_retries_with_backoff_then_fails_for_good(celery_node, start_worker, queue):
    job = celery_job("failing", "demo.fail", kwargs={"message": "boom"}, max_attempts=3,
                     retry_backoff=0.3, queue=queue)  # fmt: skip
    start_worker()
    celery_node()
    first = queue_manual_run(job)
    wait_for(lambda: Execution.objects.filter(job=job, state="failed").count() == 3, timeout=40)
    attempts = list(Execution.objects.filter(job=job).order_by("attempt"))
    assert [e.attempt for e in attempts] == [1, 2, 3]
    assert [e.origin for e in attempts] == ["manual", "retry", "retry"]
    assert all(e.retry_of_id == first.pk for e in attempts[1:])
    assert all(e.error == "RuntimeError: boom" and "Traceback" in e.traceback for e in attempts)
    # Each retry waited its backoff (0.3 s, then 0.6 s, plus jitter) in database time.
    assert (attempts[1].run_after - attempts[0].finished_at).total_seconds() >= 0.3
    assert (attempts[2].run_after - attempts[1].finished_at).total_seconds() >= 0.6


def test_a_time_limit_marks_the_run_timed_out_and_releases_the_job_lock(
    celery_node, start_worker, queue
):
    job = celery_job("stuck", "demo.sleep", kwargs={"seconds": 20}, timeout=1,
                     concurrency_policy="forbid", queue=queue)  # fmt: skip
    start_worker()
    celery_node()
    execution = queue_manual_run(job)
    wait_for(lambda: Lock.objects.filter(name=job.lock_name).exclude(holder="").exists(),
             timeout=30)  # fmt: skip
    assert Lock.objects.get(name=job.lock_name).holder.startswith("worker:")
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "timed_out", timeout=30)
    assert "timed out" in Execution.objects.get(pk=execution.pk).error
    wait_for(lambda: Lock.objects.get(name=job.lock_name).holder == "", timeout=10)


def test_the_same_message_delivered_twice_runs_the_job_once(start_worker, tmp_path, queue):
    run_file = tmp_path / "runs.txt"
    job = celery_job("once", kwargs={"path": str(run_file), "seconds": 1}, queue=queue)
    execution = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="dispatched",
        node="some-node", args=[], kwargs=job.kwargs, published_at=database_now(),
    )  # fmt: skip
    worker = start_worker(concurrency=2)
    sender = Celery(broker=BROKER)
    for _ in range(2):
        sender.send_task("jobs.run_execution", args=[execution.pk], task_id=str(execution.pk),
                         queue=queue)  # fmt: skip
    wait_for(lambda: Execution.objects.get(pk=execution.pk).state == "succeeded", timeout=30)
    wait_for(lambda: worker.log().count("jobs.run_execution") >= 4, timeout=20)  # 2 received
    assert lines(run_file) == [str(execution.pk)]
    assert "not waiting to run" in worker.log()


def test_a_node_killed_between_commit_and_publish_loses_nothing(
    celery_node, start_worker, tmp_path, queue
):
    # What a crash right after the claim's commit leaves: rows dispatched to a node that
    # never published them and never heartbeats again.
    run_file = tmp_path / "runs.txt"
    job = celery_job("orphan", kwargs={"path": str(run_file)}, queue=queue)
    SchedulerNode.objects.create(id="crashed", hostname="h", pid=1)
    SchedulerNode.objects.filter(pk="crashed").update(
        last_heartbeat=database_now() - timedelta(minutes=5)
    )
    orphans = [
        Execution.objects.create(
            job=job,
            scheduled_for=database_now(),
            origin="manual",
            state="dispatched",
            node="crashed",
            args=[],
            kwargs=job.kwargs,
            dispatched_at=database_now(),
        )  # fmt: skip
        for _ in range(3)
    ]
    start_worker()
    celery_node("survivor")
    ids = [e.pk for e in orphans]
    wait_for(lambda: Execution.objects.filter(pk__in=ids, state="succeeded").count() == 3,
             timeout=40)  # fmt: skip
    assert sorted(int(x) for x in lines(run_file)) == sorted(ids)
    assert SchedulerNode.objects.get(pk="crashed").state == "dead"
    assert not Execution.objects.filter(state="abandoned").exists()


def test_a_worker_killed_mid_run_is_abandoned_and_recovered(
    celery_node, start_worker, tmp_path, queue
):
    marker = tmp_path / "hung.txt"
    job = celery_job("fragile", "demo.hang_once", kwargs={"path": str(marker), "seconds": 120},
                     recover=True, concurrency_policy="forbid", queue=queue)  # fmt: skip
    victim = start_worker("victim")
    celery_node()
    first = queue_manual_run(job)
    wait_for(lambda: marker.exists(), timeout=30)
    assert Execution.objects.get(pk=first.pk).state == "running"
    victim.kill9()
    start_worker("rescuer")

    first = wait_for(lambda: Execution.objects.filter(pk=first.pk, state="abandoned").first(),
                     timeout=30)  # fmt: skip
    assert "stopped heartbeating" in first.error
    recovery = wait_for(
        lambda: Execution.objects.filter(rerun_of=first, state="succeeded").first(), timeout=30
    )
    assert recovery.origin == "recovery" and recovery.node.startswith("worker:rescuer@")
    # The dead worker's job lock was released, or the forbid recovery would have skipped.
    assert not Execution.objects.filter(job=job, state="skipped").exists()


def test_forbid_never_runs_two_at_once_across_two_workers(
    celery_node, start_worker, tmp_path, queue
):
    hold_file = tmp_path / "hold.txt"
    job = celery_job("exclusive", "demo.hold", kwargs={"path": str(hold_file), "seconds": 1.5},
                     concurrency_policy="forbid", queue=queue)  # fmt: skip
    trigger = Trigger.objects.create(job=job, kind="interval", interval=1)
    start_worker("a")
    start_worker("b")
    celery_node()
    holders = set()

    def enough():
        lock = Lock.objects.filter(name=job.lock_name).first()
        if lock and lock.holder:
            holders.add(lock.holder)
        done = Execution.objects.filter(trigger=trigger)
        return done.filter(state="skipped").count() >= 3 and done.filter(
            state="succeeded").count() >= 3  # fmt: skip

    wait_for(enough, timeout=40, interval=0.05)
    Trigger.objects.update(paused=True)
    wait_for(lambda: not Execution.objects.exclude(state__in=Execution.FINAL_STATES).exists(),
             timeout=20)  # fmt: skip
    runs_never_overlap(hold_file)
    assert holders and all(h.startswith("worker:") for h in holders)
    skipped = Execution.objects.filter(trigger=trigger, state="skipped")
    assert all("concurrency policy forbid" in e.note for e in skipped)


def test_a_message_the_broker_lost_is_published_again_and_runs_once(
    start_node, start_worker, tmp_path, queue
):
    # Published ten minutes ago, never claimed by any worker: the message is gone.
    run_file = tmp_path / "runs.txt"
    job = celery_job("lost", kwargs={"path": str(run_file)}, queue=queue)
    lost = Execution.objects.create(
        job=job, scheduled_for=database_now(), origin="manual", state="dispatched",
        node="some-node", args=[], kwargs=job.kwargs,
        published_at=database_now() - timedelta(minutes=10),
    )  # fmt: skip
    start_worker()
    start_node("republisher", extra_env={**CELERY_ENV, "SCHEDULER_REPUBLISH_AFTER": "5"})
    wait_for(lambda: Execution.objects.get(pk=lost.pk).state == "succeeded", timeout=30)
    assert lines(run_file) == [str(lost.pk)]


def traced(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_worker_paused_after_its_claim_never_runs_what_was_taken_from_it(
    celery_node, start_worker, tmp_path, queue, fault_triggers
):
    trace_path = tmp_path / "trace.jsonl"
    job = celery_job(
        "paused at claim", "demo.trace", kwargs={"path": str(trace_path)}, queue=queue, recover=True
    )
    celery_node()
    worker = start_worker("w1")
    # The worker's claim is held in the database for two seconds: the worker is paused
    # while it waits for the answer, and stays paused past the execution timeout.
    faults.arm(faults.on_test_database, "worker_claim", "hold")
    taken = queue_manual_run(job)
    wait_for(lambda: faults.stalled(fault_triggers, "worker_claim"), timeout=30)
    worker.pause()
    try:
        wait_for(
            lambda: Execution.objects.get(pk=taken.pk).state == "abandoned",
            timeout=30,
            message="the silent worker's run to be abandoned",
        )
    finally:
        worker.resume()
    recovery = wait_for(
        lambda: Execution.objects.filter(rerun_of=taken, state="succeeded").first(),
        timeout=30,
        message=f"the recovery to run\n{worker.log()}",
    )
    # Celery logs the task's end once the resumed worker has dealt with the held claim.
    wait_for(lambda: f"jobs.run_execution[{taken.pk}] succeeded" in worker.log(), timeout=20)
    starts = [line for line in traced(trace_path) if line["event"] == "start"]
    # The body ran once, for the recovery: never for the run taken from the paused worker.
    assert [line["execution"] for line in starts] == [recovery.pk]
    assert Execution.objects.get(pk=taken.pk).state == "abandoned"
    assert "was taken from this worker before it started" in worker.log()


def test_a_worker_paused_mid_run_records_nothing_it_no_longer_owns(
    celery_node, start_worker, tmp_path, queue
):
    trace_path = tmp_path / "trace.jsonl"
    job = celery_job(
        "paused mid-run",
        "demo.trace",
        queue=queue,
        recover=True,
        kwargs={"path": str(trace_path), "seconds": 2},
        max_attempts=3,
        concurrency_policy="forbid",
    )
    celery_node()
    first = start_worker("w1")
    run = queue_manual_run(job)
    wait_for(lambda: traced(trace_path), timeout=30, message="the run to start")
    first.pause()
    try:
        second = start_worker("w2")
        recovery = wait_for(
            lambda: Execution.objects.filter(rerun_of=run, state="succeeded").first(),
            timeout=30,
            message="the abandoned run to be recovered on the other worker",
        )
    finally:
        first.resume()
    # The paused body was really in progress: it runs to its end, and then finds out.
    wait_for(
        lambda: f"jobs.run_execution[{run.pk}] succeeded" in first.log(),
        timeout=20,
        message=first.log(),
    )
    run.refresh_from_db()
    assert run.state == "abandoned" and "stopped heartbeating" in run.error
    assert recovery.node.startswith("worker:w2@")
    # Nothing it wrote after losing the run took effect: no result, no retry, no lock.
    assert Execution.objects.filter(job=job).count() == 2
    assert not Lock.objects.filter(name=job.lock_name).exclude(holder="").exists()
    starts = [line for line in traced(trace_path) if line["event"] == "start"]
    assert [line["execution"] for line in starts] == [run.pk, recovery.pk]
    assert starts[0]["fence"] < starts[1]["fence"]
    second.stop()


def test_a_lost_connection_at_each_step_on_a_worker_ends_recorded(
    celery_node, start_worker, tmp_path, queue, fault_triggers
):
    trace_path = tmp_path / "trace.jsonl"
    job = celery_job(
        "faulted",
        "demo.trace",
        queue=queue,
        concurrency_policy="forbid",
        kwargs={"path": str(trace_path), "seconds": 1},
    )
    celery_node()
    worker = start_worker("w1")
    for step in ["worker_claim", "take_lock", "mid-run", "release_lock", "record"]:
        if step != "mid-run":
            faults.arm(faults.on_test_database, step, "kill")
        run = queue_manual_run(job)
        if step == "mid-run":
            wait_for(
                lambda run=run: any(line["execution"] == run.pk for line in traced(trace_path)),
                timeout=30,
            )
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'worker:%%'"
                )
        else:
            wait_for(
                lambda step=step: faults.killed(faults.on_test_database, step),
                timeout=30,
                message=f"the fault at {step}",
            )
        wait_for(
            lambda run=run: Execution.objects.get(pk=run.pk).state == "succeeded",
            timeout=30,
            message=f"the run faulted at {step} to succeed\n{worker.log()}",
        )
    runs = Execution.objects.filter(job=job)
    assert {e.state for e in runs} == {"succeeded"}
    starts = [line["execution"] for line in traced(trace_path) if line["event"] == "start"]
    ends = [line["execution"] for line in traced(trace_path) if line["event"] == "end"]
    assert sorted(starts) == sorted(ends) == sorted(e.pk for e in runs)
    assert not Lock.objects.filter(name=job.lock_name).exclude(holder="").exists()


def test_a_celery_run_is_captured_reports_progress_and_can_be_cancelled(
    start_node, start_worker, tmp_path, queue, role_users
):
    from jobs.actions import cancel_execution
    from jobs.models import ExecutionLogLine

    start_node("celery-leader", extra_env={**CELERY_ENV, "SCHEDULER_CANCEL_GRACE": "2"})
    worker = start_worker("w1")
    operator = role_users["operator"]

    chatty = queue_manual_run(celery_job("chatty", "demo.chatty", queue=queue,
                                         kwargs={"lines": 5}))  # fmt: skip
    wait_for(lambda: Execution.objects.get(pk=chatty.pk).state == "succeeded", timeout=30)
    lines = list(ExecutionLogLine.objects.filter(execution=chatty).order_by("seq"))
    assert len(lines) == 10, worker.log()
    assert all(f"execution {chatty.pk}" in line.message for line in lines)

    # A cooperative job on a worker stops when asked, recorded cancelled with who and why.
    polite = queue_manual_run(celery_job("polite", "demo.progress", queue=queue,
                                         kwargs={"steps": 100, "seconds": 30}))  # fmt: skip
    wait_for(lambda: Execution.objects.filter(pk=polite.pk, progress_done__gt=0).exists(),
             timeout=30, message=worker.log())  # fmt: skip
    cancel_execution(polite, operator, "not today")
    wait_for(lambda: Execution.objects.get(pk=polite.pk).state == "cancelled", timeout=20)
    polite.refresh_from_db()
    assert polite.error == "cancelled by otto: not today" and polite.progress_done < 50

    # One that ignores the request: past the grace it is recorded cancelled and the worker
    # process running it is terminated, so its body never reaches its end.
    trace_path = tmp_path / "trace.jsonl"
    slow = {"path": str(trace_path), "seconds": 12}
    stubborn = queue_manual_run(celery_job("stubborn", "demo.trace", queue=queue, kwargs=slow))
    wait_for(lambda: traced(trace_path), timeout=30)
    cancel_execution(stubborn, operator, "stop it")
    wait_for(lambda: Execution.objects.get(pk=stubborn.pk).state == "cancelled", timeout=20)
    stubborn.refresh_from_db()
    assert "did not stop within 2" in stubborn.error
    wait_for(lambda: "Terminating" in worker.log() or "terminated" in worker.log().lower(),
             timeout=20, message=worker.log())  # fmt: skip
    assert [line["event"] for line in traced(trace_path)] == ["start"]


def test_nodes_and_workers_run_with_sequential_scans_off_and_the_web_does_not(
    start_node, start_worker, queue
):
    from jobs.models import ExecutionLogLine

    probes = {"SCHEDULER_TARGET_MODULES": "tests.jobs.connection_targets"}
    start_node("probe-node", extra_env={**CELERY_ENV, **probes})
    worker = start_worker("w1", extra_env=probes)
    inline = make_job("inline probe", "test.connection_settings")
    remote = celery_job("celery probe", "test.connection_settings", queue=queue)
    runs = [queue_manual_run(inline)] + [queue_manual_run(remote) for _ in range(4)]
    wait_for(lambda: Execution.objects.filter(pk__in=[r.pk for r in runs], state="succeeded")
             .count() == len(runs), timeout=30, message=worker.log())  # fmt: skip
    ran_on = set()
    for run in Execution.objects.filter(pk__in=[r.pk for r in runs]):
        printed = [line.message for line in ExecutionLogLine.objects.filter(execution=run)]
        assert printed == ["enable_seqscan=off"], (run.node, printed)
        ran_on.add(run.node.split(":")[0])
    assert ran_on == {"probe-node", "worker"}
    # The web's connection (this test process's) plans as the server is set.
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_seqscan")
        assert cursor.fetchone()[0] == "on"
