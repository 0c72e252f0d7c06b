"""A scheduler node's Prometheus endpoint, scraped over HTTP from a real node process,
and the counters the node's steps feed, called in this process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from prometheus_client.parser import text_string_to_metric_families

from jobs import metrics
from jobs.models import Execution, Job, Trigger, database_now
from jobs.node import Node
from locks import leases
from locks.maintenance import force_release
from locks.models import SchedulerNode
from tests.conftest import free_port, wait_for
from tests.jobs.factories import make_job

UNFINISHED = ("pending", "dispatched", "running")


def scrape_node(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def executions(job: Job, **filters) -> int:
    return Execution.objects.filter(job=job, **filters).count()


def wait_showing_log(node, predicate, timeout: float, message: str) -> None:
    """wait_for, failing at once if the node process exits, with the node's log."""

    def done():
        if node.proc.poll() is not None:
            raise AssertionError(f"node exited with {node.proc.returncode}")
        return predicate()

    try:
        wait_for(done, timeout=timeout, message=message)
    except AssertionError as e:
        pytest.fail(f"{e}\n--- {node.node_id} log ---\n{node.log()[-4000:]}")


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_node_exports_its_fires_lag_results_and_retries_and_the_web_sees_a_forced_release(
    start_node, client
):
    tick = make_job("metrics: tick", "demo.noop")
    flaky = make_job("metrics: flaky", "demo.fail", max_attempts=2, retry_backoff=0.1)
    guarded = make_job(
        "metrics: guarded", "demo.sleep", kwargs={"seconds": 2.5}, concurrency_policy="forbid"
    )
    for job in (tick, flaky, guarded):
        Trigger.objects.create(job=job, kind="interval", interval=1)
    port = free_port()
    node = start_node("metrics-node", args=["--metrics-port", str(port)])

    wait_showing_log(
        node,
        lambda: (
            executions(tick, state="succeeded") >= 3
            and executions(flaky, origin="retry", state="failed") >= 1
            and executions(guarded, state="skipped") >= 1
        ),
        timeout=30,
        message="a few fires of each job, a retry, and a fire skipped under forbid",
    )
    # Stop the schedules and let the last runs (and retries) finish, so the counts hold.
    Job.objects.update(paused=True)
    wait_showing_log(
        node,
        lambda: not Execution.objects.filter(state__in=UNFINISHED).exists(),
        timeout=15,
        message="no unfinished executions",
    )

    def expected() -> dict[tuple[str, frozenset], float]:
        want = {}
        for job in (tick, flaky, guarded):
            fires = executions(job, origin="schedule")  # no misfires: all were fired
            want["scheduler_fires_total", frozenset({"job_name": job.name}.items())] = fires
            for state in ("succeeded", "failed", "skipped"):
                labels = frozenset({"job_name": job.name, "state": state}.items())
                want["scheduler_executions_finished_total", labels] = executions(job, state=state)
        want["scheduler_retries_total", frozenset({"job_name": flaky.name}.items())] = executions(
            flaky, origin="retry"
        )
        want["scheduler_fire_lag_seconds_count", frozenset()] = Execution.objects.filter(
            origin="schedule"
        ).count()
        want["scheduler_inflight_runs", frozenset()] = 0
        want["scheduler_is_leader", frozenset()] = 1
        return want

    def mismatches() -> dict:
        scraped = samples(scrape_node(port))
        return {
            k: (scraped.get(k, 0.0), v) for k, v in expected().items() if scraped.get(k, 0.0) != v
        }

    # The recorder counts a result just after writing it: allow it a moment.
    try:
        wait_for(lambda: not mismatches(), timeout=10)
    except AssertionError:
        pytest.fail(f"scraped (left) differs from the database (right): {mismatches()}")
    text = scrape_node(port)

    def finished(job: Job, state: str) -> float:
        return value(text, "scheduler_executions_finished_total", job_name=job.name, state=state)

    assert finished(tick, "succeeded") >= 3
    assert finished(flaky, "failed") >= 2
    assert value(text, "scheduler_retries_total", job_name=flaky.name) >= 1
    assert finished(guarded, "skipped") >= 1
    assert value(text, "scheduler_fire_lag_seconds_sum") >= 0
    assert value(text, "scheduler_claim_batch_size_count", kind="due") >= 1
    assert value(text, "scheduler_claim_batch_size_sum", kind="due") >= 3
    assert value(text, "scheduler_claim_duration_seconds_count", kind="pending") >= 1
    assert value(text, "scheduler_node_info", node_id="metrics-node", version="0.1.0") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr

    # The web process's view of the cluster: a forced release takes a held lock away.
    lease = leases.acquire("metrics-test:report", holder="worker-7", at_most=600)
    assert lease is not None
    web = client.get("/metrics").content.decode()
    assert value(web, "scheduler_cluster_nodes", state="live") == 1
    assert value(web, "scheduler_cluster_locks_held", kind="leader") == 1
    assert value(web, "scheduler_cluster_locks_held", kind="app") == 1
    assert value(web, "scheduler_cluster_locks_oldest_held_age_seconds", kind="app") >= 0
    force_release("metrics-test:report", "test", "worker-7 is wedged")
    web = client.get("/metrics").content.decode()
    assert value(web, "scheduler_cluster_locks_held", kind="app") == 0
    assert value(web, "scheduler_cluster_locks_oldest_held_age_seconds", kind="app") == 0
    assert value(web, "scheduler_cluster_locks_stale", reason="expired") == 0


# --- the node's steps, in this process ------------------------------------------------


@pytest.fixture
def node(transactional_db, settings):
    settings.SCHEDULER_SHUTDOWN_GRACE = 5
    node = Node(node_id="metrics-test-node", batch=50, threads=4)
    node.start()
    yield node
    node.stop()
    node.shutdown()


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def overdue_trigger(job: Job, seconds_ago: float, **options) -> Trigger:
    trigger = Trigger.objects.create(job=job, kind="interval", interval=60, **options)
    Trigger.objects.filter(pk=trigger.pk).update(
        next_fire_at=database_now() - timedelta(seconds=seconds_ago)
    )
    return trigger


def test_misfires_are_counted_by_policy_and_their_fires_by_job(node):
    # 10.5 minutes late on a one-minute interval: 11 fire times, all missed by > 5 s.
    for policy in ("skip", "fire_once", "fire_all"):
        overdue_trigger(make_job(f"misfire {policy}"), 630, misfire_policy=policy, misfire_grace=5)
    policies = ("skip", "fire_once", "fire_all")
    before = {p: sample("scheduler_misfires_total", policy=p) for p in policies}
    lag_before = sample("scheduler_fire_lag_seconds_count")
    late_before = lag_before - sample("scheduler_fire_lag_seconds_bucket", le="300.0")

    assert node.claim_due() == 3

    def fire_all_caught_up():
        # A node claims what its threads can start: the catch-up takes a few claims.
        node.claim_due()
        return Execution.objects.filter(job__name="misfire fire_all").count() == 11

    wait_for(fire_all_caught_up)
    assert sample("scheduler_misfires_total", policy="skip") - before["skip"] == 11
    assert sample("scheduler_misfires_total", policy="fire_once") - before["fire_once"] == 10
    assert sample("scheduler_misfires_total", policy="fire_all") - before["fire_all"] == 11
    assert sample("scheduler_fires_total", job_name="misfire fire_once") == 1
    assert sample("scheduler_fires_total", job_name="misfire fire_all") == 11
    assert sample("scheduler_fires_total", job_name="misfire skip") == 0
    # 12 fires (1 + 11), each measured against the claim's database time.
    assert sample("scheduler_fire_lag_seconds_count") - lag_before == 12
    late = sample("scheduler_fire_lag_seconds_count") - sample(
        "scheduler_fire_lag_seconds_bucket", le="300.0"
    )
    assert late - late_before >= 6  # the catch-up fires 6 to 10.5 minutes late


def test_executions_recovered_from_a_dead_node_are_counted(node):
    job = make_job("recoverable", "demo.noop", recover=True)
    SchedulerNode.objects.create(id="ghost", hostname="h", pid=1)
    SchedulerNode.objects.filter(id="ghost").update(
        last_heartbeat=database_now() - timedelta(hours=1)
    )
    for _ in range(2):
        Execution.objects.create(
            job=job, scheduled_for=database_now(), origin="manual", state="running", node="ghost"
        )
    before = sample("scheduler_recoveries_total")

    assert node.recover_dead() == 1

    assert sample("scheduler_recoveries_total") - before == 2


def test_a_busy_metrics_port_stops_the_node_with_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            call_command("run_scheduler", "--metrics-port", str(port))


def test_a_metrics_port_out_of_range_is_refused():
    with pytest.raises(CommandError, match="--metrics-port must be between 0 and 65535"):
        call_command("run_scheduler", "--metrics-port", "70000")
