"""Real faults at each step of a run, on a durable PostgreSQL of the test's own.

Nodes are real processes. Faults are real: every node connection terminated
(pg_terminate_backend), the server restarted, or the server killed outright. They are
injected at a chosen step by a database trigger on the statement of that step (see
tests/faults.py: claiming a fire, taking or releasing the job lock, recording the
result), or by the test while the job's body runs. What ran is counted from the job's
own side effects (demo.trace writes a line when a body starts and when it ends), not
only from the database.
"""

from __future__ import annotations

import json
import re
import time
from itertools import count
from pathlib import Path

import pytest

from tests import faults
from tests.conftest import NodeProcess, wait_for
from tests.durable_pg import DurableServer

pytestmark = pytest.mark.cluster

TEMPLATE = "faults_template"
_databases = count()

UNFINISHED = ("pending", "dispatched", "running")


@pytest.fixture(scope="module")
def durable():
    server = DurableServer()
    try:
        server.create_database(TEMPLATE)
        server.migrate(TEMPLATE)
        with server.connect(TEMPLATE) as conn:
            faults.install(conn.execute, server.root)
        yield server
    finally:
        server.destroy()


class Cluster:
    """A fresh database on the durable server, and node processes running against it."""

    def __init__(self, server: DurableServer, log_dir: Path):
        self.server = server
        self.log_dir = log_dir
        self.dbname = f"faults_{next(_databases)}"
        server.create_database(self.dbname, template=TEMPLATE)
        # The stall markers of this test alone: one left by an earlier test (they are
        # named after the step) would make a stall seem to have fired before it did.
        self.marker_dir = server.root / f"markers-{self.dbname}"
        self.marker_dir.mkdir()
        self.marker_dir.chmod(0o777)  # the database server writes the markers
        self.sql("UPDATE test_fault_config SET dir = %s", [str(self.marker_dir)])
        self.nodes: list[NodeProcess] = []
        self.trace_path = log_dir / "trace.jsonl"

    def sql(self, query: str, params=None) -> list[tuple]:
        """Run a statement on a new connection (the server may have restarted meanwhile)."""
        with self.server.connect(self.dbname) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def start_node(self, node_id: str, **env) -> NodeProcess:
        extra = {"DATABASE_URL": self.server.url(self.dbname), **env}
        node = NodeProcess(node_id, self.log_dir, extra_env=extra)
        self.nodes.append(node)
        return node

    def stop_nodes(self) -> None:
        for node in self.nodes:
            assert node.terminate() == 0, node.log()

    def logs(self) -> str:
        return "\n".join(f"--- {n.node_id} ---\n{n.log()[-6000:]}" for n in self.nodes)

    def add_job(self, name: str, policy: str, seconds: float, recover: bool = False) -> int:
        kwargs = json.dumps({"path": str(self.trace_path), "seconds": seconds})
        return self.sql(
            "INSERT INTO jobs_job (name, description, target, celery_task, queue, args, kwargs,"
            " executor, timeout, max_attempts, retry_backoff, recover, concurrency_policy,"
            " paused, managed_by) VALUES (%s, '', 'demo.trace', '', 'scheduler', '[]', %s,"
            " 'inline', NULL, 1, 10, %s, %s, false, '') RETURNING id",
            [name, kwargs, recover, policy],
        )[0][0]

    def add_interval_trigger(self, job_id: int, every: int, first_in: float) -> int:
        return self.sql(
            "INSERT INTO jobs_trigger (job_id, kind, cron, timezone, interval, misfire_policy,"
            " misfire_grace, paused, next_fire_at) VALUES (%s, 'interval', '', 'UTC', %s,"
            " 'fire_once', 60, false, now() + make_interval(secs => %s)) RETURNING id",
            [job_id, every, first_in],
        )[0][0]

    def add_one_offs(self, job_id: int, how_many: int, spread: float) -> None:
        self.sql(
            "INSERT INTO jobs_trigger (job_id, kind, cron, timezone, run_at, misfire_policy,"
            " misfire_grace, paused, next_fire_at)"
            " SELECT %s, 'once', '', 'UTC', t, 'fire_once', 600, false, t"
            " FROM (SELECT now() + make_interval(secs => %s * i / %s) AS t"
            "       FROM generate_series(1, %s) i) times",
            [job_id, spread, how_many, how_many],
        )

    def trace(self) -> list[dict]:
        if not self.trace_path.exists():
            return []
        return [json.loads(line) for line in self.trace_path.read_text().splitlines()]

    def succeeded(self, job_id: int) -> int:
        return self.sql(
            "SELECT count(*) FROM jobs_execution WHERE job_id = %s AND state = 'succeeded'",
            [job_id],
        )[0][0]

    def quiesce(self) -> None:
        """Stop new fires and wait until nothing is unfinished."""
        self.sql("UPDATE jobs_trigger SET paused = true")
        wait_for(
            lambda: (
                not self.sql(
                    "SELECT 1 FROM jobs_execution WHERE state = ANY(%s) LIMIT 1", [list(UNFINISHED)]
                )
            ),
            timeout=60,
            message="every execution to finish",
        )


@pytest.fixture
def cluster(durable, tmp_path):
    made = Cluster(durable, tmp_path)
    yield made
    for node in made.nodes:
        node.terminate()


def arm(cluster: Cluster, step: str, kind: str) -> None:
    if kind == "stall":
        assert not fault_fired(cluster, step, kind), f"a stall marker of {step} is already there"
    faults.arm(cluster.sql, step, kind)


def fault_fired(cluster: Cluster, step: str, kind: str) -> bool:
    if kind == "stall":
        return faults.stalled(cluster.marker_dir, step)
    return faults.killed(cluster.sql, step)


def restart_when_stalled(cluster: Cluster, step: str) -> None:
    wait_for(lambda: fault_fired(cluster, step, "stall"), timeout=30, message=f"a stall at {step}")
    cluster.server.restart()


def kill_node_connections(cluster: Cluster) -> int:
    return len(
        cluster.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'node:%'"
        )
    )


def wait_for_new_success(cluster: Cluster, job_id: int, before: int, what: str) -> None:
    wait_for(
        lambda: cluster.succeeded(job_id) > before,
        timeout=45,
        message=f"a run to succeed after the fault {what}\n{cluster.logs()}",
    )


@pytest.mark.parametrize("policy", ["forbid", "allow"])
@pytest.mark.parametrize("fault", ["kill", "restart"])
def test_a_lost_connection_at_each_step_of_a_run_ends_recorded(cluster, policy, fault):
    job = cluster.add_job("victim", policy, seconds=1.0)
    nodes = [cluster.start_node("a"), cluster.start_node("b")]
    wait_for(lambda: all("started" in node.log() for node in nodes), timeout=30)
    cluster.add_interval_trigger(job, every=3, first_in=0.5)
    wait_for_new_success(cluster, job, 0, "(none yet)")
    before_start = "take_lock" if policy == "forbid" else "claim"
    at_release = ["release_lock", "record"] if policy == "forbid" else ["record"]
    steps = [before_start, "mid-run", *at_release]
    for step in steps:
        before = cluster.succeeded(job)
        if step == "mid-run":
            seen = {line["execution"] for line in cluster.trace()}
            wait_for(
                lambda seen=seen: {line["execution"] for line in cluster.trace()} - seen,
                timeout=30,
                message="a new run to start",
            )
            if fault == "kill":
                assert kill_node_connections(cluster) >= 2
            else:
                cluster.server.restart()
        elif fault == "kill":
            arm(cluster, step, "kill")
            wait_for(
                lambda step=step: fault_fired(cluster, step, "kill"),
                timeout=30,
                message=f"the fault at {step}",
            )
        else:
            arm(cluster, step, "stall")
            restart_when_stalled(cluster, step)
        wait_for_new_success(cluster, job, before, f"at {step}")

    cluster.quiesce()
    cluster.stop_nodes()
    rows = cluster.sql(
        "SELECT id, state, note, error FROM jobs_execution WHERE job_id = %s ORDER BY id", [job]
    )
    # Every execution ran to the end exactly once, and is recorded as such: no run lost,
    # none stuck, none run twice.
    ran = [row[0] for row in rows if row[1] != "skipped"]
    assert {state for _, state, _, _ in rows} <= {"succeeded", "skipped"}, rows
    starts = [line["execution"] for line in cluster.trace() if line["event"] == "start"]
    ends = {line["execution"]: line["time"] for line in cluster.trace() if line["event"] == "end"}
    assert sorted(starts) == sorted(ends) == ran
    # A fire skipped under `forbid` was skipped while the run holding the lock was still
    # going: never behind a lock whose run had already finished.
    for execution_id, state, note, _ in rows:
        if state == "skipped":
            holder = int(re.search(r"for execution #(\d+)", note).group(1))
            claimed = cluster.sql("SELECT created_at FROM jobs_execution WHERE id = %s",
                                  [execution_id])[0][0]  # fmt: skip
            assert claimed.timestamp() < ends[holder], (execution_id, note)
    assert len(rows) >= 1 + len(steps)
    # The job lock of a forbid job is free at the end: no run left it behind.
    assert not cluster.sql("SELECT name FROM locks_lock WHERE name LIKE 'job:%' AND holder <> ''")


@pytest.mark.parametrize("crash", ["immediate stop", "kill -9"])
def test_a_postgresql_crash_loses_nothing_committed_and_every_claimed_run_ends_recorded(
    cluster, crash
):
    job = cluster.add_job("steady", "allow", seconds=0.2)
    every_second = [cluster.add_interval_trigger(job, every=1, first_in=0.5) for _ in range(10)]
    cluster.add_one_offs(job, 300, spread=6)
    cluster.start_node("a")
    cluster.start_node("b")
    wait_for(lambda: cluster.succeeded(job) >= 60, timeout=30, message=cluster.logs())
    assert cluster.server.setting("fsync") == "on"
    if crash == "immediate stop":
        cluster.server.stop("immediate")
        cluster.server.start()
    else:
        cluster.server.crash()
    one_offs_done = (
        "SELECT count(*) FROM jobs_execution e JOIN jobs_trigger t ON t.id = e.trigger_id"
        " WHERE t.kind = 'once' AND e.state = 'succeeded'"
    )
    wait_for(
        lambda: cluster.sql(one_offs_done)[0][0] == 300,
        timeout=60,
        message=f"every one-off fire to run after the crash\n{cluster.logs()}",
    )
    after = cluster.succeeded(job)
    wait_for(lambda: cluster.succeeded(job) >= after + 20, timeout=30)  # still firing
    cluster.quiesce()
    cluster.stop_nodes()

    rows = {
        r[0]: r
        for r in cluster.sql(
            "SELECT id, state, trigger_id, scheduled_for FROM jobs_execution WHERE job_id = %s",
            [job],
        )
    }
    assert {row[1] for row in rows.values()} == {"succeeded"}
    starts = [line["execution"] for line in cluster.trace() if line["event"] == "start"]
    ends = [line["execution"] for line in cluster.trace() if line["event"] == "end"]
    # A body starts only after its start committed: every run the jobs saw is still in the
    # database after the crash, and each ran once, to the end.
    assert sorted(starts) == sorted(ends) == sorted(rows)
    # Every fire time recorded once, none lost: one run per one-off trigger, and the
    # every-second triggers fired at each second across the crash.
    per_trigger: dict[int, list] = {}
    for _, _, trigger_id, scheduled_for in rows.values():
        per_trigger.setdefault(trigger_id, []).append(scheduled_for)
    one_offs = [t for t in per_trigger if t not in every_second]
    assert len(one_offs) == 300 and all(len(per_trigger[t]) == 1 for t in one_offs)
    for trigger_id in every_second:
        times = sorted(per_trigger[trigger_id])
        gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)}
        assert gaps == {1.0}, (trigger_id, gaps)


def test_connections_killed_while_two_nodes_drain_a_backlog_lose_no_fire_and_run_none_twice(
    cluster,
):
    # Quick runs: each node claims full batches, so its second claimer claims beside its
    # loop, and a kill can land on either claim, on the recorder or between them.
    job = cluster.add_job("backlog", "allow", seconds=0)
    nodes = [cluster.start_node("a"), cluster.start_node("b")]
    wait_for(lambda: all("started" in node.log() for node in nodes), timeout=30)
    cluster.add_one_offs(job, 20000, spread=0)
    wait_for(lambda: cluster.succeeded(job) > 0, timeout=30, message=cluster.logs())
    lost = "database connection lost while claiming"

    def second_claimers_lost_theirs() -> bool:
        return all(lost in node.log() for node in nodes)

    # Killed until each node's second claimer has lost its connection (twice at least): a
    # kill between its claims shows only at its next claim, which may not come before the
    # drain ends (four kills were once not enough for both nodes).
    kills, deadline = 0, time.monotonic() + 30
    while (
        (kills < 2 or not second_claimers_lost_theirs())
        and cluster.succeeded(job) < 20000
        and time.monotonic() < deadline
    ):
        kills += kill_node_connections(cluster) > 0
        time.sleep(0.15)
    assert kills >= 2, "the backlog drained before the connections could be killed twice"
    wait_for(
        lambda: cluster.succeeded(job) == 20000,
        timeout=90,
        message=f"every fire of the backlog to run\n{cluster.logs()}",
    )
    cluster.quiesce()
    cluster.stop_nodes()
    rows = cluster.sql("SELECT id, state, trigger_id FROM jobs_execution WHERE job_id = %s", [job])
    assert {row[1] for row in rows} == {"succeeded"}
    assert len({row[2] for row in rows}) == len(rows) == 20000  # one run per fire
    starts = [line["execution"] for line in cluster.trace() if line["event"] == "start"]
    assert sorted(starts) == sorted(row[0] for row in rows)  # each ran once
    # Each node's second claimer lost its connection mid-drain, and the node went on.
    assert second_claimers_lost_theirs(), f"kills: {kills}\n{cluster.logs()}"
