"""`manage.py bench` runs end to end in its own database (figures are not asserted)."""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import threading
from datetime import timedelta
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import dj_database_url
import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from jobs import bench
from jobs.bench import BenchDatabase, BenchError, bench_broker_url, bench_queue, describe_server
from jobs.history import prune_history
from jobs.models import Execution, ExecutionLogLine, Trigger, database_now
from tests.conftest import wait_for
from tests.jobs.factories import due_triggers, make_execution, make_job

JSON_NUMBERS = [
    "triggers",
    "raw_fires",
    "raw_seconds",
    "raw_fires_per_s",
    "node_1x100_fires_per_s",
    "node_raw_ratio",
    "e2e_succeeded",
    "e2e_seconds",
    "e2e_per_s",
    "lag_triggers",
    "lag_p50_ms",
    "lag_p99_ms",
    "mixed_runs",
    "mixed_start_lag_p50_ms",
    "mixed_start_lag_p99_ms",
    "mixed_max_share",
    "lag_max_ms",
    "idle_window_s",
    "celery_triggers",
    "celery_worker_concurrency",
    "celery_1w_succeeded",
    "celery_1w_seconds",
    "celery_1w_per_s",
    "celery_inline_triggers",
    "celery_inline_per_s",
    "minimal_fires",
    "minimal_seconds",
    "minimal_fires_per_s",
    "schema_ratio",
    "celery_1w_bare_tasks",
    "celery_1w_bare_seconds",
    "celery_1w_bare_per_s",
    "celery_1w_bare_ratio",
    "scale_triggers",
    "scale_idle_window_s",
    "scale_due",
    "scale_drain_claimed_s",
    "scale_drain_finished_s",
    "scale_prune_executions",
    "scale_lag_triggers",
    "scale_lag_p99_ms",
    "scale_prune_lag_p99_ms",
    "scale_prune_lag_ratio",
    "scale_pruned",
    "scale_prune_seconds",
    "scale_prune_batches",
]
# Tiny sizes: every section (the scale one too) in well under a minute. Large enough that
# no figure rounds to nothing: /proc counts CPU in ticks of 10 ms, and the database's CPU
# over an e2e run of 300 triggers once read 0 ticks; 200 triggers due at once were all
# claimed within half a millisecond of their release in 2 of 8 runs (scale_drain_claimed_s
# is rounded to the millisecond), 2,000 in 124 ms or more.
TINY = [
    "--quick", "--scale", "--triggers", "3000", "--nodes", "1", "--batches", "100",
    "--idle-seconds", "1", "--idle-settle", "1", "--mixed-seconds", "1",
    "--celery-triggers", "50", "--celery-workers", "1", "--celery-rounds", "2", "--raw-rounds", "2",
    "--scale-triggers", "300", "--scale-due", "2000", "--scale-prune", "12000",
]  # fmt: skip


def database_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)", [name])
        return cursor.fetchone()[0]


def bench_workers_left() -> list[str]:
    """Command lines of live processes of this process's bench workers (and their pools)."""
    # The bench names its workers bench-<its pid>-...; the pool processes keep the command
    # line of their worker.
    mark = f"bench-{os.getpid()}-".encode()
    left = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in cmdline:
            left.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return left


def bench_queue_length() -> int:
    client = redis.Redis.from_url(bench_broker_url(settings.CELERY_BROKER_URL))
    try:
        return client.llen(bench_queue(BenchDatabase(connection.settings_dict).name))
    finally:
        client.close()


@pytest.mark.cluster
@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_it_prints_a_table_and_a_json_line_of_positive_figures_in_its_own_database():
    # Data in the test database, which the bench must leave alone.
    job = make_job("mine", "demo.noop")
    mine = due_triggers(job, 3, spread_seconds=3600)
    bench_db = BenchDatabase(connection.settings_dict).name
    assert bench_db == f"{connection.settings_dict['NAME']}_bench"

    out, err = StringIO(), StringIO()
    call_command("bench", *TINY, stdout=out, stderr=err)

    text = out.getvalue()
    for heading in (
        "Claim throughput",
        "Raw-SQL claim limit",
        "End to end",
        "Fire lag",
        "Mixed load",
        "Celery end to end",
        "Scale:",
    ):
        assert heading in text
    assert "Idle node" in text
    assert "nodes  batch" in text
    figures = json.loads(text.strip().splitlines()[-1])
    for key in JSON_NUMBERS:
        assert isinstance(figures[key], int | float) and figures[key] > 0, (key, figures[key])
    combos = {(c["nodes"], c["batch"]) for c in figures["claim"]}
    assert combos == {(1, 100)}
    for combo in figures["claim"]:
        assert combo["fires"] > 0 and combo["seconds"] > 0 and combo["fires_per_s"] > 0
    assert set(figures["targets"]) == {
        "ratio",
        "schema_ratio",
        "e2e_per_s",
        "celery_bare_ratio_2w",
        "scale_idle_qps",
        "scale_drain_s",
        "prune_lag_ratio",
        "lag_p99_ms",
        "idle_qps",
        "mixed_start_lag_p99_ms",
        "mixed_max_share",
    }
    # What it ran on, as the server itself says; the fast test server (fsync off) is
    # called out loudly.
    server = figures["server"]
    with connection.cursor() as cursor:
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            cursor.execute(f"SHOW {name}")
            assert server[name] == cursor.fetchone()[0]
        cursor.execute("SHOW server_version")
        assert server["version"] == cursor.fetchone()[0]
    assert text.startswith(f"Server: PostgreSQL {server['version']}; fsync {server['fsync']},")
    durable = (
        server["fsync"] == server["full_page_writes"] == "on"
        and server["synchronous_commit"] != "off"
    )
    assert server["durable"] is durable
    assert ("WARNING: NOT A DURABLE SERVER (" in text) is not durable
    # The raw loop and the minimal schema drained the whole backlog, twice; each round's
    # ratios are its own rates', and the ratios printed are the lower of the two rounds'.
    assert figures["raw_fires"] == figures["minimal_fires"] == 3000
    rounds = figures["raw_rounds"]
    assert len(rounds) == 2
    for r in rounds:
        assert r["schema_ratio"] == pytest.approx(
            r["raw_fires_per_s"] / r["minimal_fires_per_s"], abs=0.01
        )
        assert r["node_raw_ratio"] == pytest.approx(
            r["node_fires_per_s"] / r["raw_fires_per_s"], abs=0.01
        )
    assert figures["schema_ratio"] == min(r["schema_ratio"] for r in rounds)
    assert figures["node_raw_ratio"] == min(r["node_raw_ratio"] for r in rounds)
    assert figures["raw_fires_per_s"] == min(r["raw_fires_per_s"] for r in rounds)
    assert figures["node_1x100_fires_per_s"] == min(r["node_fires_per_s"] for r in rounds)
    # Bare Celery ran every task through the same worker; 2 workers were not asked for.
    assert figures["celery_1w_bare_tasks"] == 50
    assert figures["celery_1w_bare_complete"] is True
    # Two rounds of ours then bare, both complete; the figures are the lower ratio's round.
    ratios = figures["celery_1w_bare_ratios"]
    assert figures["celery_rounds"] == 2 and len(ratios) == 2 and all(ratios)
    assert figures["celery_1w_bare_ratio"] == min(ratios)
    assert figures["celery_1w_succeeded"] == 50 and figures["celery_1w_complete"] is True
    assert figures["celery_1w_bare_ratio"] == pytest.approx(
        figures["celery_1w_per_s"] / figures["celery_1w_bare_per_s"], abs=0.01
    )
    assert f"ours/bare {ratios[0]:.2f}, {ratios[1]:.2f}" in text
    assert figures["celery_2w_bare_ratios"] is None
    assert figures["celery_2w_per_s"] is None and figures["celery_2w_bare_per_s"] is None
    # Scale: the idle node was measured (it may well have made no query at all), the due
    # triggers all ran, and the batched prune took all the old history, 5000 at a time.
    assert figures["scale_idle_qps"] >= 0 and figures["scale_idle_transactions"] >= 0
    assert figures["idle_qps"] >= 0 and figures["idle_transactions"] >= 0
    assert figures["scale_drain_complete"] is True
    assert figures["scale_pruned"] == 12000 and figures["scale_prune_batches"] == 3
    # Each side's fire lag pools two windows' fires: its p99 lies within theirs.
    assert figures["scale_lag_windows"] == 2
    for pooled, windows in (
        (figures["scale_lag_p99_ms"], figures["scale_lag_window_p99_ms"]),
        (figures["scale_prune_lag_p99_ms"], figures["scale_prune_lag_window_p99_ms"]),
    ):
        assert len(windows) == 2
        assert min(windows) - 0.01 <= pooled <= max(windows) + 0.01, (pooled, windows)
        assert f"({windows[0]:.2f}, {windows[1]:.2f})" in text
    # Every node of the mixed section ran a share of its runs.
    assert len(figures["mixed_node_shares"]) == figures["mixed_nodes"] == 2
    assert abs(sum(figures["mixed_node_shares"].values()) - 1) < 0.01
    # The e2e section ran, so the Celery figures are printed beside its figure.
    assert figures["celery_inline_per_s"] == figures["e2e_per_s"]
    assert figures["celery_triggers"] == 50 and figures["celery_worker_concurrency"] == 2
    # This machine's CPU over both Celery measurements, per run and per bare task.
    assert figures["machine_cores"] == os.cpu_count()
    for key in ("celery_1w_cpu_ms", "celery_1w_cores_busy", "celery_1w_bare_cpu_ms",
                "celery_1w_bare_cores_busy"):  # fmt: skip
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures[key])
    assert figures["celery_2w_cpu_ms"] is None and figures["celery_2w_bare_cpu_ms"] is None
    # Of ours: the node's and the test server's shares (the bare tasks use no database:
    # its share may round to nothing).
    for key in ("celery_1w_node_cpu_ms", "celery_1w_db_cpu_ms"):
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures[key])
    assert figures["celery_1w_bare_db_cpu_ms"] >= 0
    # The workers' main and pool processes, for both (50 tasks may take under a tick of
    # either: metered is what is checked here).
    for kind in ("", "bare_"):
        for part in ("main", "pool"):
            key = f"celery_1w_{kind}workers_{part}_cpu_ms"
            assert isinstance(figures[key], float) and figures[key] >= 0, (key, figures[key])
    assert re.search(r"^ +1 worker ours +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ ", text, re.M)
    assert re.search(r"^ +1 worker bare +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ ", text, re.M)
    # The e2e run's CPU: the node's and the test server's (it runs on this machine).
    for key in ("e2e_node_cpu_us", "e2e_db_cpu_us", "e2e_cores_busy"):
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures[key])
    assert "node us per run" in text and "database us per run" in text

    assert not database_exists(bench_db)
    assert not bench_workers_left()
    assert bench_queue_length() == 0
    assert [t.pk for t in Trigger.objects.order_by("pk")] == [t.pk for t in mine]
    assert not Execution.objects.exists()


@pytest.mark.cluster
@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_it_stops_its_celery_workers_and_drops_its_database_when_the_bench_fails(monkeypatch):
    started = []
    wait_ready = bench.Workers.wait_ready

    def ready_then_fail(workers, app, timeout=60.0):
        wait_ready(workers, app, timeout)
        started.extend(workers.procs)
        raise BenchError("simulated failure")

    monkeypatch.setattr(bench.Workers, "wait_ready", ready_then_fail)
    with pytest.raises(CommandError, match="simulated failure"):
        call_command(
            "bench", "--only", "celery", "--celery-triggers", "20", stdout=StringIO(),
            stderr=StringIO(),
        )  # fmt: skip

    assert started and all(proc.poll() is not None for proc, _ in started)
    assert not bench_workers_left()
    assert not database_exists(BenchDatabase(connection.settings_dict).name)
    assert bench_queue_length() == 0


@pytest.mark.django_db(transaction=True)
def test_a_second_bench_of_the_same_database_stops_before_touching_the_first_ones():
    first = BenchDatabase(connection.settings_dict)
    first.recreate()  # as the first bench has it, while it runs
    first.claim()
    log_dirs = set(Path(tempfile.gettempdir()).glob("bench-*"))
    try:
        with pytest.raises(CommandError, match="another bench is running"):
            call_command("bench", "--only", "claim", stdout=StringIO(), stderr=StringIO())
        assert set(Path(tempfile.gettempdir()).glob("bench-*")) == log_dirs  # no log directory
        # Neither dropped nor created again: the first bench's connection is still there.
        with first.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.drop()
        first.release()
    # Once the first has ended, the next may run.
    second = BenchDatabase(connection.settings_dict)
    second.claim()
    second.release()


@pytest.mark.django_db
def test_it_rejects_an_unknown_section_before_creating_anything():
    with pytest.raises(CommandError, match="choose from"):
        call_command("bench", "--only", "claim,speed")
    assert not database_exists(BenchDatabase(connection.settings_dict).name)


def test_the_bench_database_url_reaches_the_same_server_under_the_bench_name():
    main = {
        "NAME": "sched",
        "HOST": "/run/postgresql",
        "PORT": "5433",
        "USER": "ops",
        "PASSWORD": "p@ss:w/rd",
        "OPTIONS": {"sslmode": "prefer", "application_name": "web"},
    }
    parsed = dj_database_url.parse(BenchDatabase(main).url())
    assert parsed["NAME"] == "sched_bench"
    assert (parsed["HOST"], str(parsed["PORT"])) == ("/run/postgresql", "5433")
    assert (parsed["USER"], parsed["PASSWORD"]) == ("ops", "p@ss:w/rd")
    assert parsed["OPTIONS"] == {"sslmode": "prefer"}


def test_the_bench_broker_is_the_configured_redis_on_a_database_of_its_own():
    assert bench_broker_url("redis://:pw@cache:6380/0") == "redis://:pw@cache:6380/13"
    assert bench_broker_url("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379/13"
    assert bench_broker_url("amqp://u:p@mq:5672//") == "amqp://u:p@mq:5672//"
    assert bench_queue("sched_bench") == "bench.sched_bench"


def test_a_durable_server_is_described_without_a_warning():
    durable = {"version": "15.20", "fsync": "on", "synchronous_commit": "on",
               "full_page_writes": "on", "durable": True}  # fmt: skip
    assert describe_server(durable) == [
        "Server: PostgreSQL 15.20; fsync on, synchronous_commit on, full_page_writes on"
    ]
    lines = describe_server({**durable, "synchronous_commit": "off", "durable": False})
    assert len(lines) == 2 and lines[1].startswith(
        "WARNING: NOT A DURABLE SERVER (synchronous_commit off)"
    )


@pytest.mark.django_db
def test_prune_history_deletes_old_finished_executions_in_batches_and_nothing_else():
    job = make_job("pruned", "demo.noop")
    old = database_now() - timedelta(days=40)
    finished = ["succeeded", "failed", "timed_out", "cancelled", "abandoned", "skipped"] * 2
    old_ids = [make_execution(job, state=state, created_at=old).pk for state in finished]
    ExecutionLogLine.objects.create(
        execution_id=old_ids[0], seq=1, at=old, level="INFO", message="old"
    )
    still_running = make_execution(job, state="running", created_at=old, finished_at=None)
    recent = make_execution(job)
    retry_of_old = make_execution(job, state="pending", retry_of_id=old_ids[1])

    # Two batches of 5 at most, then the rest (2) on the next call.
    assert prune_history(30, batch=5, max_batches=2) == 10
    assert prune_history(30, batch=5, max_batches=None) == 2

    assert set(Execution.objects.values_list("pk", flat=True)) == {
        still_running.pk, recent.pk, retry_of_old.pk
    }  # fmt: skip
    assert not ExecutionLogLine.objects.exists()
    retry_of_old.refresh_from_db()
    assert retry_of_old.retry_of_id is None


@pytest.mark.django_db(transaction=True)
def test_a_prune_rests_between_batches_and_a_stop_ends_the_rest_at_once():
    job = make_job("pruned", "demo.noop")
    old = database_now() - timedelta(days=40)
    old_ids = [make_execution(job, created_at=old).pk for _ in range(3)]
    stop = threading.Event()
    pruned = []

    def prune():
        try:
            # Deleting a tenth of a millionth of the time, it rests for ages after a batch.
            pruned.append(prune_history(30, batch=1, duty=1e-7, stop=stop))
        finally:
            connection.close()  # this thread's own

    pruner = threading.Thread(target=prune, daemon=True)
    pruner.start()
    wait_for(lambda: Execution.objects.filter(pk__in=old_ids).count() == 2)
    stop.set()
    pruner.join(10)
    assert not pruner.is_alive(), "the stop did not end the prune's rest"
    assert pruned == [1]
    assert Execution.objects.filter(pk__in=old_ids).count() == 2


def proc_stat(user: int, nice: int, system: int, idle: int, iowait: int, irq: int,
              softirq: int, steal: int) -> str:  # fmt: skip
    return (
        f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 7 9\n"
        "cpu0 1 2 3 4 5 6 7 8 0 0\nintr 12345\n"
    )


def test_the_celery_figures_come_from_the_round_of_the_median_ratio():
    def rounds(*ours_per_s: float | None) -> list[tuple[bench.EndToEnd, bench.Bare]]:
        # 100 bare tasks a second; ours as given (None: a round whose bare tasks took no
        # time, so it has no ratio).
        return [
            (bench.EndToEnd(100, 100, 100 / per_s if per_s else 1.0, 0, True),
             bench.Bare(100, 100, 1.0 if per_s else 0.0, True))
            for per_s in ours_per_s
        ]  # fmt: skip

    assert bench.median_round(rounds(50)) == 0
    assert bench.median_round(rounds(50, 30, 40)) == 2
    assert bench.median_round(rounds(30, 50, 40, 20)) == 0  # the lower middle one
    assert bench.median_round(rounds(None, 60, 40)) == 2  # no ratio counts as the lowest
    assert bench.median_round(rounds(60, None)) == 1


def test_busy_cpu_time_counts_all_but_idle_and_iowait_from_the_first_line():
    text = proc_stat(100, 20, 30, 5000, 400, 6, 7, 8)
    ticks = os.sysconf("SC_CLK_TCK")
    assert bench.busy_cpu_seconds(text) == pytest.approx((100 + 20 + 30 + 6 + 7 + 8) / ticks)
    with pytest.raises(ValueError):
        bench.busy_cpu_seconds("intr 12345\n")


def test_the_cpu_meter_measures_busy_time_between_start_and_stop(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(proc_stat(100, 0, 50, 1000, 0, 0, 0, 0))
    meter = bench.CpuMeter(stat)
    meter.start()
    ticks = os.sysconf("SC_CLK_TCK")
    stat.write_text(proc_stat(100 + 3 * ticks, 0, 50 + ticks, 1000 + 5 * ticks, 0, 0, 0, 0))
    meter.stop()
    assert meter.span.busy == pytest.approx(4.0)
    assert meter.span.seconds > 0
    assert meter.span.per_run(2000) == pytest.approx(0.002)
    assert meter.span.per_run(2000, "nodes") is None  # no node was given

    unreadable = bench.CpuMeter(tmp_path / "missing")
    unreadable.start()
    unreadable.stop()
    assert unreadable.span is None


def pid_stat(pid: int, command: str, parent: int, used: float, reaped: float = 0.0) -> str:
    """A /proc/<pid>/stat line: ``used`` and ``reaped`` (its waited-for children's) CPU
    seconds, each split between user and system time."""

    def user_and_system(seconds: float) -> str:
        ticks = round(seconds * os.sysconf("SC_CLK_TCK"))
        return f"{ticks - ticks // 3} {ticks // 3}"

    return (
        f"{pid} ({command}) S {parent} {pid} {pid} 0 -1 4194560 10 0 0 0"
        f" {user_and_system(used)} {user_and_system(reaped)} 20 0 3 0"
    )


def fake_process(proc: Path, pid: int, command: str, parent: int, used: float,
                 reaped: float = 0.0) -> None:  # fmt: skip
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(pid_stat(pid, command, parent, used, reaped))


def test_a_process_cpu_time_and_parent_come_from_after_its_command_name():
    # A command name may hold spaces and parentheses: the fields are counted after it.
    cpu = bench.process_cpu(pid_stat(42, "a (b) c", 7, 3.0, 1.5))
    assert cpu.parent == 7
    assert cpu.used == pytest.approx(3.0) and cpu.reaped == pytest.approx(1.5)


def test_the_cpu_meter_splits_out_the_nodes_and_the_database_servers_processes(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(proc_stat(100, 0, 50, 1000, 0, 0, 0, 0))
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_process(proc, 100, "postgres", 1, 1.0, reaped=10.0)  # the server
    fake_process(proc, 101, "postgres", 100, 2.0)  # a backend
    fake_process(proc, 103, "postgres", 100, 4.0)  # a backend that ends meanwhile
    fake_process(proc, 200, "python", 1, 5.0)  # the node
    fake_process(proc, 300, "python", 1, 9.0)  # another process
    meter = bench.CpuMeter(stat, server_pid=100, proc=proc)
    meter.start(node_pids=[200])
    # 103 ends after 1.5 s more, an autovacuum worker comes and goes after 2 s: the
    # server reaps both, and their whole time is added to its children's.
    (proc / "103" / "stat").unlink()
    (proc / "103").rmdir()
    fake_process(proc, 100, "postgres", 1, 1.5, reaped=10.0 + 5.5 + 2.0)
    fake_process(proc, 101, "postgres", 100, 3.0)
    fake_process(proc, 102, "postgres", 100, 0.25)  # a new backend counts whole
    fake_process(proc, 200, "python", 1, 7.0)
    fake_process(proc, 300, "python", 1, 20.0)
    meter.stop()
    assert meter.span.nodes == pytest.approx(2.0)
    # The server 0.5, 101 1.0, 102 0.25, 103 1.5 of its 5.5, the autovacuum worker 2.0.
    assert meter.span.database == pytest.approx(5.25)

    # A node gone before the end, and no server on this machine: neither is metered.
    meter = bench.CpuMeter(stat, proc=proc)
    meter.start(node_pids=[200])
    (proc / "200" / "stat").unlink()
    meter.stop()
    assert meter.span is not None
    assert meter.span.nodes is None and meter.span.database is None


def test_the_cpu_meter_splits_celery_workers_into_main_and_pool_processes(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(proc_stat(100, 0, 50, 1000, 0, 0, 0, 0))
    proc = tmp_path / "proc"
    proc.mkdir()
    fake_process(proc, 400, "celery", 1, 1.0)  # a worker's main process
    fake_process(proc, 401, "celery", 400, 2.0)  # its pool process
    fake_process(proc, 402, "celery", 400, 3.0)  # a pool process that ends meanwhile
    fake_process(proc, 500, "celery", 1, 4.0)  # a second worker, with no pool process
    fake_process(proc, 600, "python", 1, 9.0)  # another process
    meter = bench.CpuMeter(stat, proc=proc)
    meter.start(worker_pids=[400, 500])
    # 402 ends after 0.5 s more and is reaped; a new pool process takes its place.
    (proc / "402" / "stat").unlink()
    (proc / "402").rmdir()
    fake_process(proc, 400, "celery", 1, 1.75, reaped=3.5)
    fake_process(proc, 401, "celery", 400, 3.0)
    fake_process(proc, 403, "celery", 400, 0.25)
    fake_process(proc, 500, "celery", 1, 4.5)
    fake_process(proc, 600, "python", 1, 20.0)
    meter.stop()
    assert meter.span.workers_main == pytest.approx(0.75 + 0.5)
    # 401 1.0, 402 0.5 of its 3.5, 403 0.25.
    assert meter.span.workers_pool == pytest.approx(1.75)
    assert meter.span.per_run(1000, "workers_pool") == pytest.approx(0.00175)
    assert meter.span.nodes is None and meter.span.database is None

    # A worker gone before the end: the workers are not metered.
    meter = bench.CpuMeter(stat, proc=proc)
    meter.start(worker_pids=[400, 500])
    (proc / "500" / "stat").unlink()
    meter.stop()
    assert meter.span.workers_main is None and meter.span.workers_pool is None


@pytest.mark.django_db
def test_the_local_server_is_the_parent_of_the_backend_serving_the_connection():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('data_directory')")
        backend, data_directory = cursor.fetchone()
    # The server's own record of its pid (this suite's server runs on this machine).
    server = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
    name = connection.settings_dict["NAME"]
    assert bench.local_server_pid(backend, name) == server
    # Not that database's backend, or not a backend at all: not the server's.
    assert bench.local_server_pid(backend, name + "_other") is None
    assert bench.local_server_pid(os.getpid(), name) is None


@pytest.mark.django_db
def test_the_scale_fire_lag_pools_the_fires_of_its_windows():
    job = make_job("lagging")
    now = database_now()

    def window(slow: int) -> bench.LagWindow:
        """100 fires 1 ms late, ``slow`` of them 100 ms late instead."""
        triggers = due_triggers(job, 100)
        for i, trigger in enumerate(triggers):
            late = 100 if i < slow else 1
            make_execution(job, trigger=trigger, origin="schedule", scheduled_for=now,
                           dispatched_at=now + timedelta(milliseconds=late))  # fmt: skip
        return bench.LagWindow(triggers[0].id - 1, triggers[-1].id, now)

    quiet, stalled = window(0), window(2)
    measuring = SimpleNamespace(conn=connection.connection)
    p99 = functools.partial(bench.Bench.fire_lag_p99, measuring)
    assert p99([quiet]) == pytest.approx(1.0)
    # Two slow fires of 100 are 2%: above that window's p99; of 200, they are 1%: the
    # pooled p99 falls between the fast fires and them.
    assert p99([stalled]) == pytest.approx(100.0)
    assert p99([quiet, stalled]) == pytest.approx(1.99, abs=0.01)
