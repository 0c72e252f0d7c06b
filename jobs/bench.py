"""Benchmarks of the scheduler node, run by ``manage.py bench``.

Everything happens in a throwaway database, ``<main database>_bench`` on the same server,
created and migrated for the run and dropped at the end: the main database is never
connected to. Scheduler nodes are real ``manage.py run_scheduler`` processes, and every
figure is computed from database time (``now()``/``clock_timestamp()`` and the
timestamps the nodes record), never from this process's clock, which only paces the
waiting. The Celery section adds real ``celery -A controlplane worker`` processes, on a
queue of the bench's own on a broker database of the bench's own (see bench_broker_url).
The first lines say what server it ran on (server_settings): figures worth quoting come
from a durable one. The raw section also builds (and drops) bench_min_* tables, the
minimal schema; the scale section (--scale) runs prune_history in a process of its own.
"""

from __future__ import annotations

import json
import operator
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
from celery import Celery
from django.conf import settings
from kombu import Exchange, Queue
from kombu.utils.url import maybe_sanitize_url
from psycopg import sql

from jobs import claims, history

MAINTENANCE_DB = "postgres"
# The advisory lock (in MAINTENANCE_DB) of a running bench: this and its database's name.
CLAIM_KEY = "jobs.bench:"
TARGETS = {
    "ratio": 0.7,
    "schema_ratio": 0.6,
    "e2e_per_s": 7000.0,
    "celery_bare_ratio_2w": 0.5,
    "scale_idle_qps": 1.0,
    "scale_drain_s": 20.0,
    "prune_lag_ratio": 2.0,
    "lag_p99_ms": 20.0,
    "idle_qps": 1.0,
    "mixed_start_lag_p99_ms": 50.0,
    "mixed_max_share": 2.0,
}
SECTIONS = ("claim", "raw", "e2e", "lag", "idle", "mixed", "celery")
# Run only when asked for (--scale or --only scale): it inserts millions of rows.
ALL_SECTIONS = (*SECTIONS, "scale")
# Nodes of the scale section keep executions this many days, so that the bench's old
# history is pruned only by the bench itself (at the default retention).
SCALE_NODE_RETENTION_DAYS = 36500
# Seconds an idle node is left alone before its queries are counted. It settles within
# a second or two; the rest is for pg_stat_database: a backend flushes its counters at
# most once a second, and an idle one at the latest PGSTAT_IDLE_INTERVAL (10 s) later,
# so the transactions of the node's start could otherwise land in the window.
IDLE_SETTLE = 11.0
# The Redis database the bench's broker uses by default, away from the deployment's own
# (db 0 unless configured) and the tests' (db 14).
BENCH_REDIS_DB = 13


@dataclass(frozen=True)
class Sizes:
    #: 50,000: on a durable server the claim section's backlog drains in seconds at batch
    #: 100, and each combination's re-insert and vacuum stay short.
    triggers: int = 50_000
    nodes: tuple[int, ...] = (1, 2, 4)
    batches: tuple[int, ...] = (1, 10, 100)
    #: Seconds a claim-throughput combination (or the raw loop) may run; the rate is
    #: then taken over what was claimed.
    claim_cap: float = 20.0
    #: Seconds the end-to-end run may take before it is cut short.
    e2e_cap: float = 60.0
    lag_triggers: int = 1000
    lag_spread: float = 10.0
    #: The lag triggers' first fire time is this far after their insert, so the insert's
    #: own commit is not counted as lag.
    lag_lead: float = 0.5
    idle_window: float = 30.0
    #: Seconds an idle node is left alone before its queries are counted (IDLE_SETTLE).
    idle_settle: float = IDLE_SETTLE
    #: Backlog of the Celery section (and of its inline comparison, when e2e did not run).
    celery_triggers: int = 5000
    celery_workers: tuple[int, ...] = (1, 2)
    #: Prefork processes per worker (``celery worker -c``).
    celery_concurrency: int = 2
    #: Seconds a Celery combination may run; the rate is then taken over what finished.
    celery_cap: float = 30.0
    #: Rounds of the raw loop, the minimal schema's and one node at batch 100, one after
    #: the other: the schema and node ratios printed are the medians of the rounds'.
    raw_rounds: int = 3
    #: Rounds of ours then bare through the same workers, per worker count. This machine's
    #: speed drifts from one phase to the next (the same code's ratio has read 0.30 and
    #: 0.53 in one hour), so the ratio printed is the median round's.
    celery_rounds: int = 3
    #: The mixed section: nodes, seconds of firing, every-second triggers, how many of
    #: them run MIXED_SLOW_SECONDS (the others return at once).
    mixed_nodes: int = 4
    mixed_seconds: float = 60.0
    mixed_triggers: int = 40
    mixed_slow: int = 4
    #: The scale section: triggers not due (the idle node's load is measured beside them),
    #: triggers due in the same second (drained by 2 nodes), finished executions older
    #: than the retention (pruned while 2 nodes fire), and the drain's cap in seconds.
    scale_triggers: int = 1_000_000
    scale_due: int = 100_000
    scale_prune: int = 1_000_000
    scale_cap: float = 180.0


QUICK = Sizes(
    triggers=2000,
    nodes=(1, 2),
    batches=(10, 100),
    claim_cap=10.0,
    e2e_cap=20.0,
    lag_triggers=200,
    lag_spread=2.0,
    idle_window=10.0,
    celery_triggers=300,
    celery_cap=15.0,
    celery_rounds=1,
    raw_rounds=1,
    mixed_nodes=2,
    mixed_seconds=5.0,
    mixed_triggers=10,
    mixed_slow=1,
)


class BenchError(RuntimeError):
    pass


# --- the bench database ---------------------------------------------------------------


class BenchDatabase:
    """``<main name>_bench`` on the main database's server, reached without touching it."""

    def __init__(self, settings_dict: dict):
        main = settings_dict["NAME"]
        self.name = f"{main}_bench"
        options = {
            k: v
            for k, v in (settings_dict.get("OPTIONS") or {}).items()
            if k != "application_name" and isinstance(v, str | int)
        }
        self._params = {
            "host": settings_dict.get("HOST") or "",
            "port": str(settings_dict.get("PORT") or ""),
            "user": settings_dict.get("USER") or "",
            "password": settings_dict.get("PASSWORD") or "",
            **options,
        }
        self._options = options
        self._claim: psycopg.Connection | None = None

    def claim(self) -> None:
        """Make this run the only bench of this database name on its server, until release():
        another one would drop the database under this one's feet (and this one, its)."""
        conn = self.connect(MAINTENANCE_DB)
        # An advisory lock lives as long as the connection holding it, however this ends.
        held = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [CLAIM_KEY + self.name])
        if not held.fetchone()[0]:
            conn.close()
            raise BenchError(
                f"another bench is running on {self.name} on this server: wait for it to"
                " finish (its database is dropped at its end)"
            )
        self._claim = conn

    def release(self) -> None:
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    def connect(self, dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection:
        params = {k: v for k, v in self._params.items() if v != ""}
        return psycopg.connect(
            dbname=dbname or self.name,
            autocommit=autocommit,
            application_name="bench",
            **params,
        )

    def url(self) -> str:
        """A DATABASE_URL for the node and migrate subprocesses."""
        p = self._params
        auth = quote(p["user"], safe="")
        if p["password"]:
            auth += ":" + quote(p["password"], safe="")
        host = p["host"]
        if host.startswith("/"):
            host = quote(host, safe="")  # a Unix socket directory
        elif ":" in host:
            host = f"[{host}]"
        port = f":{p['port']}" if p["port"] else ""
        query = f"?{urlencode(self._options)}" if self._options else ""
        return f"postgres://{auth}@{host}{port}/{quote(self.name, safe='')}{query}"

    def recreate(self) -> None:
        self.drop()
        with self.connect(MAINTENANCE_DB) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        # The name always ends in _bench: this can never drop the main database.
        assert self.name.endswith("_bench")
        with self.connect(MAINTENANCE_DB) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def migrate(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")

    def manage(self, *args: str) -> str:
        """Run ``manage.py *args`` on the bench database; return its output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=settings.BASE_DIR,
            env=node_env(self.url(), "bench-setup"),
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise BenchError(
                f"manage.py {args[0]} on {self.name} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout.strip()


def bench_broker_url(url: str) -> str:
    """The broker the bench uses when none is given: the configured one, but on Redis
    database BENCH_REDIS_DB, so the bench's messages never share a database with anyone's
    queues. Other brokers (RabbitMQ) are used as configured: the bench queue's own name
    keeps it apart there."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url
    return urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))


def bench_queue(db_name: str) -> str:
    """The bench's Celery queue: named after its database, so benches of different
    databases on one broker never take each other's messages."""
    return "bench." + re.sub(r"[^A-Za-z0-9_.:-]", "-", db_name)


# Signs nothing the bench keeps (its processes serve no web requests); fresh per bench.
BENCH_SECRET_KEY = secrets.token_urlsafe(50)


def node_env(url: str, app_name: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "APP_NAME": app_name,
        "LOG_LEVEL": "WARNING",
        # A stopped benchmark node has only no-ops in flight.
        "SCHEDULER_SHUTDOWN_GRACE": "5",
        # The bench's jobs run demo targets, in the bench's own database and processes.
        "SCHEDULER_DEMO_TARGETS": "1",
        # As in production (the image sets DEBUG=0): with DEBUG on, Django times and keeps
        # every query a node or worker makes.
        "DEBUG": "0",
        "SECRET_KEY": BENCH_SECRET_KEY,
    }


def server_settings(conn: psycopg.Connection) -> dict:
    """The server's version and the settings that decide whether a commit is durable, as
    this role and database see them (the nodes connect the same way)."""
    found = {
        name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
        for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes")
    }
    found["version"] = found.pop("server_version")
    # synchronous_commit = local still waits for the local flush; only off gives it up.
    found["durable"] = (
        found["fsync"] == "on"
        and found["full_page_writes"] == "on"
        and found["synchronous_commit"] != "off"
    )
    return found


def describe_server(server: dict) -> list[str]:
    """The lines the table starts with: what it ran on, and a loud warning when that is not
    a durable server."""
    lines = [
        f"Server: PostgreSQL {server['version']}; fsync {server['fsync']}, synchronous_commit"
        f" {server['synchronous_commit']}, full_page_writes {server['full_page_writes']}"
    ]
    if not server["durable"]:
        off = [k for k in ("fsync", "synchronous_commit", "full_page_writes") if server[k] == "off"]
        lines.append(
            f"WARNING: NOT A DURABLE SERVER ({', '.join(k + ' off' for k in off)}): commits do"
            " not wait for the disk, so these figures overstate a production server's; quote"
            " only figures from a durable one."
        )
    return lines


# --- scheduler node processes ---------------------------------------------------------


class Nodes:
    """``count`` real ``manage.py run_scheduler`` processes on the bench database."""

    def __init__(
        self,
        db: BenchDatabase,
        count: int,
        batch: int | None,
        log_dir: Path,
        tag: str,
        extra_env: dict[str, str] | None = None,
    ):
        self.db = db
        self.app_names = [f"bench-node-{tag}-{i}" for i in range(count)]
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        for name in self.app_names:
            log_path = log_dir / f"{name}.log"
            args = ["--node-id", name] + (["--batch", str(batch)] if batch else [])
            with log_path.open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "manage.py", "run_scheduler", *args],
                    cwd=settings.BASE_DIR,
                    env={**node_env(db.url(), name), **(extra_env or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((proc, log_path))

    def wait_listening(self, conn: psycopg.Connection, timeout: float = 60.0) -> None:
        """Wait until every node is registered and its listener is connected (so a NOTIFY
        reaches it)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            listening = conn.execute(
                "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = ANY(%s) AND query LIKE 'LISTEN%%'",
                [self.db.name, self.app_names],
            ).fetchone()[0]
            registered = conn.execute(
                "SELECT count(*) FROM locks_schedulernode WHERE id = ANY(%s) AND state = 'active'",
                [self.app_names],
            ).fetchone()[0]
            if listening == registered == len(self.app_names):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"nodes did not start within {timeout}s\n{self.logs()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"a node exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for _, p in self.procs)

    def stop(self) -> None:
        """SIGTERM (the node drains and exits), then SIGKILL whatever is still there."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- Celery worker processes ----------------------------------------------------------


class Workers:
    """``count`` real ``celery -A controlplane worker`` processes on the bench database.

    Each runs in a process group of its own, so that stopping it reaches its pool
    processes too, even when its main process is already gone.
    """

    def __init__(
        self,
        db: BenchDatabase,
        broker: str,
        queue: str,
        count: int,
        concurrency: int,
        log_dir: Path,
        tag: str,
    ):
        host = socket.gethostname()
        # The pid keeps the names of two benches' workers on one broker apart.
        self.names = [f"bench-{os.getpid()}-{tag}-{i}@{host}" for i in range(count)]
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        try:
            for i, name in enumerate(self.names):
                log_path = log_dir / f"worker-{tag}-{i}.log"
                env = {**node_env(db.url(), f"bench-worker-{tag}-{i}"),
                       "CELERY_BROKER_URL": broker}  # fmt: skip
                with log_path.open("w") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "controlplane", "worker",
                         "-Q", queue, "-c", str(concurrency), "-n", name, "--without-gossip",
                         "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                        process_group=0,
                    )  # fmt: skip
                self.procs.append((proc, log_path))
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        """Wait until every worker answers a ping: its consumer is then taking messages.

        (Asked over the broker: at WARNING, which keeps the per-task log lines out of the
        measurement, a worker does not log that it is ready.)
        """
        deadline = time.monotonic() + timeout
        waiting = set(self.names)
        while waiting:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"celery workers did not start within {timeout}s\n{self.logs()}")
            for reply in app.control.ping(destination=sorted(waiting), timeout=0.5):
                waiting -= set(reply)

    @property
    def pids(self) -> list[int]:
        """The workers' main processes (their pool processes are their children)."""
        return [proc.pid for proc, _ in self.procs]

    def check_alive(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"a celery worker exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for _, p in self.procs)

    def stop(self) -> None:
        """SIGTERM to each worker's group (a warm shutdown: running tasks finish, unacked
        messages go back to the queue), then SIGKILL to whatever is left of the group."""
        for proc, _ in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc, _ in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            # Also after a clean exit: a pool process could outlive its parent.
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    # The group id is the leader's pid (process_group=0); it stays valid while any member
    # lives, even after the leader has been reaped.
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def purge_queue(app: Celery, queue: str, delete: bool = False) -> int:
    """Delete the messages waiting in ``queue``, and with ``delete`` the queue itself (on
    Redis, its bindings would otherwise stay behind); returns how many messages there were.
    """
    with app.connection_for_write() as conn:
        try:
            # Without a bound, kombu retries an unreachable broker forever.
            conn.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5)
        except Exception as e:
            url = maybe_sanitize_url(app.conf.broker_url)
            raise BenchError(f"broker {url} unreachable: {e}") from None
        channel = conn.default_channel
        try:
            purged = channel.queue_purge(queue) or 0
        except conn.channel_errors:  # RabbitMQ: no such queue, so nothing to purge
            return 0
        if delete:
            # Declared as Celery declares a missing queue, so that the transport knows
            # its bindings (and RabbitMQ finds the same arguments).
            bound = Queue(queue, Exchange(queue), routing_key=queue)(channel)
            try:
                bound.declare()
                bound.delete()
            except conn.channel_errors:
                pass
        return purged


# --- data ----------------------------------------------------------------------------

# The job and a template trigger are made by the ORM (in a subprocess on the bench
# database), so they carry the models' defaults whatever columns are added later; the
# backlogs are then cloned from the template in SQL, which is fast.
INLINE_JOB = "bench: noop"
# How long the slow job of the mixed section sleeps (its kwargs in SETUP_SCRIPT).
MIXED_SLOW_SECONDS = 1.5
# Its queue is set by the Celery section (bench_queue).
CELERY_JOB = "bench: celery noop"
# The bare-Celery baseline: a task with no bookkeeping at all (jobs/celery_tasks.py).
BARE_TASK = "bench.noop"
SETUP_SCRIPT = """
from datetime import UTC, datetime
from jobs.models import Execution, Job, Trigger
job = Job.objects.create(name="bench: noop", target="demo.noop")
Trigger.objects.create(job=job, kind="once", run_at=datetime(2000, 1, 1, tzinfo=UTC))
Job.objects.create(name="bench: celery noop", target="demo.noop", executor="celery")
Job.objects.create(name="bench: slow", target="demo.sleep", kwargs={"seconds": 1.5})
Execution.objects.create(
    job=job, scheduled_for=datetime(2000, 1, 1, tzinfo=UTC), origin="schedule",
    state="succeeded", node="bench-history", dispatched_at=datetime(2000, 1, 1, tzinfo=UTC),
    started_at=datetime(2000, 1, 1, tzinfo=UTC), finished_at=datetime(2000, 1, 1, tzinfo=UTC),
)
"""

TEMPLATE = """
CREATE TABLE bench_trigger_template AS SELECT * FROM jobs_trigger;
CREATE TABLE bench_execution_template AS SELECT * FROM jobs_execution;
DELETE FROM jobs_execution;
DELETE FROM jobs_trigger;
"""

# Every-second triggers of the mixed section, made paused by the ORM (cron fields and all).
MIXED_SCRIPT = """
from jobs.models import Job, Trigger
for name, count in (("bench: noop", {fast}), ("bench: slow", {slow})):
    job = Job.objects.get(name=name)
    for _ in range(count):
        Trigger.objects.create(job=job, kind="cron", cron="* * * * * *", paused=True)
"""

# One-off triggers a minute overdue, a microsecond apart (so ORDER BY next_fire_at has
# an order to follow). The hour of grace keeps every fire on time for the whole run:
# the normal path, not the misfire path.
OVERDUE = """
SELECT now() - interval '1 minute' + i * interval '1 microsecond' AS t, 3600 AS grace
FROM generate_series(1, %(count)s) AS i
"""

# One-off triggers due lead, lead + spread/count, ... seconds after this transaction.
SPREAD = """
SELECT now() + make_interval(secs => %(lead)s + i * %(spread)s / %(count)s) AS t, 60 AS grace
FROM generate_series(0, %(count)s - 1) AS i
"""


# One-off triggers due from a day after this transaction on, 10 ms apart (a million
# of them span under three hours): scheduled, none due during the run.
FUTURE = """
SELECT now() + interval '1 day' + i * interval '10 milliseconds' AS t, 60 AS grace
FROM generate_series(1, %(count)s) AS i
"""

# One-off triggers all due at the same instant, a minute ago, within their grace.
SAME_SECOND = """
SELECT date_trunc('second', now()) - interval '1 minute' AS t, 3600 AS grace
FROM generate_series(1, %(count)s) AS i
"""


def clone_executions(conn: psycopg.Connection, count: int, age_days: int) -> None:
    """Insert ``count`` succeeded executions of the inline job, created (and run) from
    ``age_days`` days ago on, a millisecond apart: history old enough to be pruned."""
    timed = ("scheduled_for", "created_at", "run_after", "dispatched_at", "started_at",
             "finished_at")  # fmt: skip
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'jobs_execution' AND table_schema = current_schema()"
            "   AND NOT column_name = ANY(%s) ORDER BY ordinal_position",
            [["id", "fence", *timed]],
        )
    ]
    copied = sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL(
        "INSERT INTO jobs_execution ({copied}, {timed})"
        " SELECT {copied}, {times}"
        " FROM bench_execution_template,"
        "      (SELECT now() - make_interval(days => %(age)s) + i * interval '1 millisecond' AS t"
        "       FROM generate_series(1, %(count)s) AS i) AS old"
    ).format(
        copied=copied,
        timed=sql.SQL(", ").join(map(sql.Identifier, timed)),
        times=sql.SQL(", ").join([sql.SQL("old.t")] * len(timed)),
    )
    conn.execute(query, {"count": count, "age": age_days})


def clone_triggers(conn: psycopg.Connection, due: str, params: dict, job: str = INLINE_JOB) -> None:
    """Insert one one-off trigger of ``job`` (by name) per row of ``due`` (its fire time
    ``t`` and ``grace``)."""
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'jobs_trigger' AND table_schema = current_schema()"
            "   AND column_name NOT IN ('id', 'job_id', 'run_at', 'next_fire_at', 'misfire_grace')"
            " ORDER BY ordinal_position"
        )
    ]
    copied = sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL(
        "INSERT INTO jobs_trigger ({copied}, job_id, run_at, next_fire_at, misfire_grace)"
        " SELECT {copied}, (SELECT id FROM jobs_job WHERE name = %(job)s), due.t, due.t,"
        "        due.grace"
        " FROM bench_trigger_template, ({due}) AS due"
    ).format(copied=copied, due=sql.SQL(due))
    conn.execute(query, {**params, "job": job})


@dataclass(frozen=True)
class ClaimTables:
    """The tables a claim loop runs on: jobs/claims.py's statements are run as they are,
    with only the table names swapped."""

    execution: str = "jobs_execution"
    trigger: str = "jobs_trigger"
    job: str = "jobs_job"

    def sql(self, statement: str) -> str:
        # \b on both sides: jobs_execution_fence_seq (a sequence) keeps its name.
        for real, name in (
            ("jobs_execution", self.execution),
            ("jobs_trigger", self.trigger),
            ("jobs_job", self.job),
        ):
            statement = re.sub(rf"\b{real}\b", name, statement)
        return statement


REAL_TABLES = ClaimTables()
MINIMAL_TABLES = ClaimTables("bench_min_execution", "bench_min_trigger", "bench_min_job")

# The minimal schema: the same columns (LIKE, with their defaults) and rows as the real
# tables, with only the indexes the claim cannot do without: the primary keys, the
# uniqueness index its ON CONFLICT names, and the due index its SELECT walks (without
# it every batch would sort the whole backlog). No foreign keys, no NOTIFY triggers, no
# fillfactor. Ordinary tables, not TEMPORARY ones: temporary tables write no WAL, so
# their commits would not wait for a flush to disk and the comparison would be unfair
# on a durable server.
MINIMAL_SCHEMA = """
DROP TABLE IF EXISTS bench_min_execution, bench_min_trigger, bench_min_job;
CREATE TABLE bench_min_job (LIKE jobs_job INCLUDING DEFAULTS);
ALTER TABLE bench_min_job ADD PRIMARY KEY (id);
INSERT INTO bench_min_job SELECT * FROM jobs_job;
CREATE TABLE bench_min_trigger (LIKE jobs_trigger INCLUDING DEFAULTS);
ALTER TABLE bench_min_trigger ADD PRIMARY KEY (id);
INSERT INTO bench_min_trigger SELECT * FROM jobs_trigger;
CREATE INDEX bench_min_trigger_due ON bench_min_trigger (next_fire_at)
    WHERE NOT paused AND next_fire_at IS NOT NULL;
CREATE TABLE bench_min_execution (LIKE jobs_execution INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE bench_min_execution ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX bench_min_execution_fire ON bench_min_execution (trigger_id, scheduled_for)
    WHERE origin = 'schedule';
"""
DROP_MINIMAL_SCHEMA = "DROP TABLE IF EXISTS bench_min_execution, bench_min_trigger, bench_min_job"


# --- this machine's CPU ---------------------------------------------------------------


def busy_cpu_seconds(proc_stat: str) -> float:
    """Core-seconds this machine's CPUs spent busy since boot, from the text of /proc/stat:
    the first line's user, nice, system, irq, softirq and steal (idle and iowait are not
    busy; guest time is inside user already)."""
    fields = proc_stat.split("\n", 1)[0].split()
    if fields[0] != "cpu":
        raise ValueError(f"not a /proc/stat cpu line: {fields[:1]}")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessCpu:
    """A process's parent pid, the CPU seconds it used (user and system, every thread),
    and those of its children that ended and that it waited for."""

    parent: int
    used: float
    reaped: float


def process_cpu(stat: str) -> ProcessCpu:
    """ProcessCpu from the text of a /proc/<pid>/stat."""
    # The command name, in parentheses, may hold spaces and parentheses: count from after it.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcessCpu(int(fields[1]), (utime + stime) / ticks, (cutime + cstime) / ticks)


def local_server_pid(backend_pid: int, dbname: str, proc: Path = Path("/proc")) -> int | None:
    """The pid of the PostgreSQL server whose backend ``backend_pid`` serves a connection
    to ``dbname``, when that server runs on this machine; None when it does not (no such
    local process, or one that is not that database's backend)."""
    here = proc / str(backend_pid)
    try:
        name = (here / "comm").read_text().strip()
        # A backend shows "postgres: <user> <database> <client> <activity>" as its command.
        command = (here / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        parent = process_cpu((here / "stat").read_text()).parent
    except (OSError, ValueError, IndexError):
        return None
    if name != "postgres" or f" {dbname} " not in command:
        return None
    return parent


@dataclass(frozen=True)
class CpuSpan:
    """What this machine's CPUs did over a span: ``busy`` core-seconds in ``seconds``; of
    them, the CPU seconds of the nodes' processes, of the database server's and of the
    Celery workers' (None when not metered: the server on another machine, a node or a
    worker gone before the end, no worker)."""

    busy: float
    seconds: float
    nodes: float | None = None
    database: float | None = None
    #: Celery workers' main processes (each takes messages from the broker, hands them to
    #: its pool and acknowledges them) and their pool processes (which run the tasks).
    workers_main: float | None = None
    workers_pool: float | None = None

    @property
    def cores(self) -> float:
        """Cores busy on average."""
        return self.busy / self.seconds if self.seconds > 0 else 0.0

    def per_run(self, count: int, part: str = "busy") -> float | None:
        """CPU seconds per run of ``part``: the machine's ``busy`` time or one of the parts
        metered (``nodes``, ``database``, ``workers_main``, ``workers_pool``); None when
        that part was not metered (or nothing ran)."""
        used = getattr(self, part)
        return used / count if used is not None and count else None


class CpuMeter:
    """This machine's busy CPU time between start() and stop(), from /proc/stat: every
    process on it, the database server's too when it runs here. ``span`` stays None
    where /proc/stat cannot be read.

    Out of it, from /proc/<pid>/stat: the CPU time of the node processes given to start(),
    and, with ``server_pid`` (local_server_pid), of the database server's processes: it,
    its children, and the children it reaped meanwhile (autovacuum workers, closed
    connections), which leave their time with it. A child that starts meanwhile counts
    whole. The Celery workers given to start() are metered the same way, their main
    processes apart from their pool processes (their children).
    """

    def __init__(
        self, path: Path = Path("/proc/stat"), server_pid: int | None = None,
        proc: Path = Path("/proc"),
    ):  # fmt: skip
        self.path = path
        self.proc = proc
        self.server_pid = server_pid
        self.node_pids: list[int] = []
        self.worker_pids: list[int] = []
        self.started: tuple[float, float] | None = None
        self.started_processes: dict[int, ProcessCpu] = {}
        self.span: CpuSpan | None = None

    def _sample(self) -> tuple[float, float] | None:
        try:
            return busy_cpu_seconds(self.path.read_text()), time.monotonic()
        except (OSError, ValueError):
            return None

    def _processes(self) -> dict[int, ProcessCpu]:
        """Every process by pid (none when not asked for)."""
        if not self.node_pids and not self.worker_pids and self.server_pid is None:
            return {}
        processes = {}
        for entry in self.proc.glob("[0-9]*"):
            try:
                processes[int(entry.name)] = process_cpu((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return processes

    def _nodes_used(self, ended: dict[int, ProcessCpu]) -> float | None:
        """CPU seconds the nodes used since start(); None when one is gone."""
        metered = [pid in ended and pid in self.started_processes for pid in self.node_pids]
        if not metered or not all(metered):
            return None
        return sum(ended[pid].used - self.started_processes[pid].used for pid in self.node_pids)

    def _tree_used(
        self, root: int | None, ended: dict[int, ProcessCpu]
    ) -> tuple[float, float] | None:
        """CPU seconds ``root`` used since start(), and those of its children; None when it
        is not metered."""
        now, before = ended.get(root), self.started_processes.get(root)
        if now is None or before is None:
            return None
        children = now.reaped - before.reaped
        for pid, process in ended.items():
            if process.parent == root:
                started = self.started_processes.get(pid)
                children += process.used - (started.used if started else 0.0)
        # A child reaped meanwhile left all its time with its parent, its time before
        # start() too: that part is not this span's.
        for pid, started in self.started_processes.items():
            if started.parent == root and pid not in ended:
                children -= started.used
        return now.used - before.used, children

    def _server_used(self, ended: dict[int, ProcessCpu]) -> float | None:
        """CPU seconds the server's processes used since start(); None when not metered."""
        used = self._tree_used(self.server_pid, ended)
        return sum(used) if used is not None else None

    def _workers_used(self, ended: dict[int, ProcessCpu]) -> tuple[float | None, float | None]:
        """CPU seconds the workers' main processes and their pool processes used since
        start(); None when none was given or one is gone."""
        trees = [self._tree_used(pid, ended) for pid in self.worker_pids]
        if not trees or None in trees:
            return None, None
        return sum(main for main, _ in trees), sum(pool for _, pool in trees)

    def start(self, node_pids: Sequence[int] = (), worker_pids: Sequence[int] = ()) -> None:
        self.node_pids = list(node_pids)
        self.worker_pids = list(worker_pids)
        self.started = self._sample()
        self.started_processes = self._processes()

    def stop(self) -> None:
        ended = self._sample()
        processes = self._processes()
        if self.started is None or ended is None:
            return
        self.span = CpuSpan(
            ended[0] - self.started[0],
            ended[1] - self.started[1],
            self._nodes_used(processes),
            self._server_used(processes),
            *self._workers_used(processes),
        )


@dataclass
class Claim:
    """One claim-throughput measurement: ``fires`` recorded in ``seconds`` of database time."""

    nodes: int
    batch: int
    fires: int
    seconds: float
    complete: bool

    @property
    def per_s(self) -> float:
        return self.fires / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RawRound:
    """One round of the raw section: the raw loop, the same on the minimal schema, and one
    node at batch 100, measured one after the other."""

    raw: Claim
    minimal: Claim
    node: Claim

    @property
    def schema_ratio(self) -> float | None:
        return _ratio(self.raw, self.minimal)

    @property
    def node_raw_ratio(self) -> float | None:
        return _ratio(self.node, self.raw)

    def as_json(self) -> dict:
        return {
            "raw_fires_per_s": round(self.raw.per_s, 1),
            "minimal_fires_per_s": round(self.minimal.per_s, 1),
            "node_fires_per_s": round(self.node.per_s, 1),
            "schema_ratio": self.schema_ratio,
            "node_raw_ratio": self.node_raw_ratio,
        }


@dataclass
class EndToEnd:
    """One end-to-end measurement: ``succeeded`` executions of a backlog of ``triggers``,
    over ``seconds`` = last finished_at - first dispatched_at (database time)."""

    triggers: int
    succeeded: int
    seconds: float
    #: Executions that did not succeed (failed, or still waiting when capped).
    other: int
    complete: bool
    #: This machine's CPU from the release to the drain (the e2e and Celery sections).
    cpu: CpuSpan | None = None

    @property
    def per_s(self) -> float:
        return self.succeeded / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Bare:
    """Bare no-op Celery tasks: ``ran`` of ``tasks`` in ``seconds`` (database time from the
    first publish until the workers had run them)."""

    tasks: int
    ran: int
    seconds: float
    complete: bool
    #: This machine's CPU from the first publish until all had run.
    cpu: CpuSpan | None = None

    @property
    def per_s(self) -> float:
        return self.ran / self.seconds if self.seconds > 0 else 0.0


def _tasks_accepted(inspect, name: str) -> int:
    """How many ``name`` tasks the inspected workers have started since they started."""
    stats = inspect.stats() or {}
    return sum(worker.get("total", {}).get(name, 0) for worker in stats.values())


@dataclass
class Results:
    sizes: Sizes
    claim: list[Claim] = field(default_factory=list)
    raw: Claim | None = None
    #: The raw loop on the minimal schema.
    minimal: Claim | None = None
    #: The server's version and durability settings (server_settings).
    server: dict = field(default_factory=dict)
    node_1x100: Claim | None = None
    #: The raw section's rounds; raw, minimal and node_1x100 are then the rounds' median
    #: measurements of each, and the ratios the medians of the rounds' ratios.
    raw_rounds: list[RawRound] = field(default_factory=list)
    e2e: EndToEnd | None = None
    lag: dict | None = None
    idle: dict | None = None
    #: Celery workers -> the measurement with that many workers.
    celery: dict[int, EndToEnd] = field(default_factory=dict)
    #: Celery workers -> bare no-op tasks through the same workers.
    celery_bare: dict[int, Bare] = field(default_factory=dict)
    #: Celery workers -> ours / bare of every round, in the order run; ``celery`` and
    #: ``celery_bare`` hold the median round (median_round).
    celery_ratios: dict[int, list[float | None]] = field(default_factory=dict)
    #: The inline figure the Celery figures are printed beside.
    celery_inline: EndToEnd | None = None
    mixed: dict | None = None
    scale: dict | None = None

    @property
    def schema_ratio(self) -> float | None:
        return _median([r.schema_ratio for r in self.raw_rounds])

    @property
    def node_raw_ratio(self) -> float | None:
        return _median([r.node_raw_ratio for r in self.raw_rounds])

    def as_json(self) -> dict:
        return {
            "server": self.server,
            "triggers": self.sizes.triggers,
            "claim": [
                {
                    "nodes": c.nodes,
                    "batch": c.batch,
                    "fires": c.fires,
                    "seconds": round(c.seconds, 3),
                    "fires_per_s": round(c.per_s, 1),
                    "complete": c.complete,
                }
                for c in self.claim
            ],
            "raw_fires": self.raw.fires if self.raw else None,
            "raw_seconds": round(self.raw.seconds, 3) if self.raw else None,
            "raw_fires_per_s": round(self.raw.per_s, 1) if self.raw else None,
            "node_1x100_fires_per_s": round(self.node_1x100.per_s, 1) if self.node_1x100 else None,
            "node_raw_ratio": self.node_raw_ratio,
            "minimal_fires": self.minimal.fires if self.minimal else None,
            "minimal_seconds": round(self.minimal.seconds, 3) if self.minimal else None,
            "minimal_fires_per_s": round(self.minimal.per_s, 1) if self.minimal else None,
            "schema_ratio": self.schema_ratio,
            "raw_rounds": [r.as_json() for r in self.raw_rounds] or None,
            **_end_to_end("e2e", self.e2e),
            **_e2e_cpu(self.e2e),
            **_prefixed("lag", self.lag, ("triggers", "p50_ms", "p99_ms", "max_ms")),
            **_prefixed("idle", self.idle, ("window_s", "transactions", "qps")),
            **_prefixed("mixed", self.mixed, MIXED_KEYS),
            **_prefixed("scale", self.scale, SCALE_KEYS),
            **self._celery_json(),
            "targets": TARGETS,
        }

    def _celery_json(self) -> dict:
        ran = bool(self.celery)
        figures = {
            "machine_cores": os.cpu_count(),
            "celery_triggers": self.sizes.celery_triggers if ran else None,
            "celery_worker_concurrency": self.sizes.celery_concurrency if ran else None,
            "celery_rounds": self.sizes.celery_rounds if ran else None,
        }
        # The keys of 1 and 2 workers are always there (null when not run).
        for workers in sorted({1, 2, *self.sizes.celery_workers}):
            run = self.celery.get(workers)
            prefix = f"celery_{workers}w"
            figures.update(_end_to_end(prefix, run))
            figures[f"{prefix}_complete"] = run.complete if run else None
            bare = self.celery_bare.get(workers)
            figures[f"{prefix}_bare_tasks"] = bare.ran if bare else None
            figures[f"{prefix}_bare_seconds"] = round(bare.seconds, 3) if bare else None
            figures[f"{prefix}_bare_per_s"] = round(bare.per_s, 1) if bare else None
            figures[f"{prefix}_bare_complete"] = bare.complete if bare else None
            figures[f"{prefix}_bare_ratio"] = _ratio(run, bare)
            figures[f"{prefix}_bare_ratios"] = self.celery_ratios.get(workers)
            span, count = (run.cpu, run.succeeded) if run else (None, 0)
            figures[f"{prefix}_cpu_ms"] = _cpu_ms(span, count)
            figures[f"{prefix}_node_cpu_ms"] = _cpu_ms(span, count, "nodes")
            figures[f"{prefix}_db_cpu_ms"] = _cpu_ms(span, count, "database")
            figures[f"{prefix}_workers_main_cpu_ms"] = _cpu_ms(span, count, "workers_main")
            figures[f"{prefix}_workers_pool_cpu_ms"] = _cpu_ms(span, count, "workers_pool")
            figures[f"{prefix}_cores_busy"] = _cores_busy(span)
            span, count = (bare.cpu, bare.ran) if bare else (None, 0)
            figures[f"{prefix}_bare_cpu_ms"] = _cpu_ms(span, count)
            figures[f"{prefix}_bare_db_cpu_ms"] = _cpu_ms(span, count, "database")
            figures[f"{prefix}_bare_workers_main_cpu_ms"] = _cpu_ms(span, count, "workers_main")
            figures[f"{prefix}_bare_workers_pool_cpu_ms"] = _cpu_ms(span, count, "workers_pool")
            figures[f"{prefix}_bare_cores_busy"] = _cores_busy(span)
        inline = self.celery_inline
        figures["celery_inline_triggers"] = inline.triggers if inline else None
        figures["celery_inline_per_s"] = round(inline.per_s, 1) if inline else None
        return figures


MIXED_KEYS = (
    "nodes", "seconds", "runs", "start_lag_p50_ms", "start_lag_p99_ms", "start_lag_max_ms",
    "node_shares", "max_share",
)  # fmt: skip


# Fire lag windows on each side of the scale section's pruning comparison.
LAG_WINDOWS = 2


@dataclass(frozen=True)
class LagWindow:
    """One window of the scale section's fire lag: the triggers with ids in (after_id,
    last_id], and the last one's fire time."""

    after_id: int
    last_id: int
    last_due: datetime


SCALE_KEYS = (
    "triggers", "idle_window_s", "idle_transactions", "idle_qps",
    "due", "drain_claimed_s", "drain_finished_s", "drain_complete",
    "prune_executions", "lag_triggers", "lag_windows", "lag_p99_ms", "lag_window_p99_ms",
    "prune_lag_p99_ms", "prune_lag_window_p99_ms", "prune_lag_ratio",
    "pruned", "prune_seconds", "prune_batches", "prune_covered",
)  # fmt: skip


def _lower_middle(items: Sequence, key: Callable) -> object:
    """The item of the median ``key``: the lower middle one of an even count."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def median_round(rounds: list[tuple[EndToEnd, Bare]]) -> int:
    """The index of the round whose ours / bare is the median; a round without a ratio
    counts as the lowest."""
    ratios = [_ratio(ours, bare) for ours, bare in rounds]
    return _lower_middle(range(len(rounds)), lambda i: (ratios[i] is not None, ratios[i] or 0))


def _median(figures: list[float | None]) -> float | None:
    """The median of the figures there are (the lower middle one of an even count)."""
    there = [figure for figure in figures if figure is not None]
    return _lower_middle(there, float) if there else None


def _ratio(a: Claim | EndToEnd | None, b: Claim | Bare | None) -> float | None:
    """a's rate / b's rate, None when either is missing or b is 0."""
    if a is None or b is None or not b.per_s:
        return None
    return round(a.per_s / b.per_s, 3)


def _cpu_ms(span: CpuSpan | None, count: int, part: str = "busy") -> float | None:
    """CPU ms per run of ``part`` (CpuSpan.per_run), rounded; None when not metered."""
    per = span.per_run(count, part) if span else None
    return round(per * 1e3, 2) if per is not None else None


def _cpu_us(span: CpuSpan | None, count: int, part: str) -> float | None:
    """The same in us."""
    per = span.per_run(count, part) if span else None
    return round(per * 1e6, 1) if per is not None else None


def _e2e_cpu(run: EndToEnd | None) -> dict:
    span, count = (run.cpu, run.succeeded) if run else (None, 0)
    return {
        "e2e_node_cpu_us": _cpu_us(span, count, "nodes"),
        "e2e_db_cpu_us": _cpu_us(span, count, "database"),
        "e2e_cores_busy": _cores_busy(span),
    }


def _cores_busy(span: CpuSpan | None) -> float | None:
    return round(span.cores, 2) if span else None


def _workers_label(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def _shown(figure: float | None) -> str:
    return "n/a" if figure is None else f"{figure:.2f}"


def _end_to_end(prefix: str, run: EndToEnd | None) -> dict:
    values = None
    if run is not None:
        values = {
            "succeeded": run.succeeded,
            "seconds": round(run.seconds, 3),
            "per_s": round(run.per_s, 1),
        }
    return _prefixed(prefix, values, ("succeeded", "seconds", "per_s"))


def _prefixed(prefix: str, values: dict | None, keys: tuple[str, ...]) -> dict:
    return {f"{prefix}_{k}": (values or {}).get(k) for k in keys}


# jobs/history.py's prune_history itself, to the end, in a process of its own (as the
# leader node's pruner thread runs it: autocommit, each batch its own transaction, with
# its rests). It says when it starts, and at the end what it deleted and when, in
# database time.
PRUNE_SCRIPT = """
import json
from django.db import connection
from jobs.history import prune_history

def clock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0].isoformat()

print(json.dumps({{"started_at": clock()}}), flush=True)
deleted = prune_history({days}, max_batches=None)
print(json.dumps({{"deleted": deleted, "finished_at": clock()}}), flush=True)
"""


class Pruner:
    """A ``manage.py shell`` process running PRUNE_SCRIPT on the bench database."""

    def __init__(self, db: BenchDatabase, retention_days: int):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-v",
                "0",
                "-c",
                PRUNE_SCRIPT.format(days=retention_days),
            ],  # fmt: skip
            cwd=settings.BASE_DIR,
            env=node_env(db.url(), "bench-prune"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_started(self) -> datetime:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return datetime.fromisoformat(json.loads(line)["started_at"])
        self.proc.wait()
        raise BenchError(f"the prune process did not start:\n{self.proc.stderr.read()}")

    def wait_finished(self) -> tuple[int, datetime]:
        """How many executions it deleted, and when it finished."""
        out, err = self.proc.communicate()
        if self.proc.returncode or not out.strip():
            raise BenchError(f"pruning failed ({self.proc.returncode}):\n{err}")
        done = json.loads(out.strip().splitlines()[-1])
        return done["deleted"], datetime.fromisoformat(done["finished_at"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the benchmark -------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        db: BenchDatabase,
        sizes: Sizes,
        out: Callable[[str], None],
        progress: Callable[[str], None],
        broker: str | None = None,
    ):
        self.db = db
        self.sizes = sizes
        #: The Celery section's broker (default: bench_broker_url of the configured one).
        self.broker = broker or bench_broker_url(settings.CELERY_BROKER_URL)
        self.out = out
        self.progress = progress
        self.results = Results(sizes)
        self.conn: psycopg.Connection | None = None
        #: The database server's pid when it runs on this machine (local_server_pid).
        self.server_pid: int | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-"))

    def run(self, sections: tuple[str, ...]) -> Results:
        self.progress(f"creating and migrating database {self.db.name}")
        self.db.recreate()
        try:
            self.db.migrate()
            self.db.manage("shell", "-c", SETUP_SCRIPT)
            self.conn = self.db.connect()
            self.results.server = server_settings(self.conn)
            self.server_pid = local_server_pid(self.conn.info.backend_pid, self.db.name)
            for line in describe_server(self.results.server):
                self.out(line)
            self.conn.execute(TEMPLATE)
            if "claim" in sections:
                self.section_claim()
            if "raw" in sections:
                self.section_raw()
            if "e2e" in sections:
                self.section_e2e()
            if "idle" in sections or "lag" in sections:
                self.section_idle_and_lag(sections)
            if "mixed" in sections:
                self.section_mixed()
            if "scale" in sections:
                self.section_scale()
            # Last: its worker processes are gone before anything else is measured.
            if "celery" in sections:
                self.section_celery()
        finally:
            if self.conn is not None:
                self.conn.close()
        # The node logs are kept only when something failed.
        shutil.rmtree(self.log_dir, ignore_errors=True)
        return self.results

    # --- helpers ---

    def reset(self, backlog: int = 0, job: str = INLINE_JOB) -> None:
        """Empty the tables, insert ``backlog`` due triggers of ``job``, and leave the tables
        vacuumed and analysed, the same for every measurement."""
        assert self.conn is not None
        self.conn.execute(
            # CASCADE: other tables (locks, audit) may point at executions.
            "TRUNCATE jobs_execution, jobs_trigger, locks_schedulernode RESTART IDENTITY CASCADE"
        )
        self.conn.execute("UPDATE jobs_job SET paused = false")
        if backlog:
            clone_triggers(self.conn, OVERDUE, {"count": backlog}, job)
        # With the job unpaused, so the planner's statistics match the measured state.
        self.conn.execute("VACUUM ANALYZE")

    def run_nodes(
        self,
        nodes: int,
        batch: int | None,
        cap: float,
        until_finished: bool,
        extra_env: dict[str, str] | None = None,
        watch: Sequence[Workers] = (),
        cpu: CpuMeter | None = None,
    ):
        """Start nodes on a paused backlog, release it, and wait until it is claimed (and,
        with ``until_finished``, run) or ``cap`` seconds pass. Returns the database time
        the backlog was released and whether it was drained. ``watch``: other processes
        the run depends on, checked alive while waiting; ``cpu``, metering this machine
        (and the nodes' and those workers' processes) from the release to the drain."""
        conn = self.conn
        tag = f"{nodes}x{batch or 'default'}"
        conn.execute("UPDATE jobs_job SET paused = true")
        with Nodes(self.db, nodes, batch, self.log_dir, tag, extra_env) as procs:
            procs.wait_listening(conn)
            # Unpausing NOTIFYs every node; this commit's time is the start.
            released = conn.execute(
                "UPDATE jobs_job SET paused = false RETURNING clock_timestamp()"
            ).fetchone()[0]
            if cpu:
                workers = [pid for other in watch for pid in other.pids]
                cpu.start(node_pids=[proc.pid for proc, _ in procs.procs], worker_pids=workers)
            drained = self.wait_drained(procs, cap, until_finished, watch)
            if cpu:
                cpu.stop()
        return released, drained

    def wait_drained(
        self, procs: Nodes, cap: float, until_finished: bool, watch: Sequence[Workers] = ()
    ) -> bool:
        """Wait until no trigger is due (and, with ``until_finished``, no run is waiting or
        running) or ``cap`` seconds pass; return whether it drained."""
        conn = self.conn
        deadline = time.monotonic() + cap
        drained = False
        while time.monotonic() < deadline:
            time.sleep(0.2)
            procs.check_alive()
            for other in watch:
                other.check_alive()
            drained = not conn.execute(
                # Due now, not merely scheduled: the scale section keeps triggers due
                # later beside its backlog.
                "SELECT EXISTS (SELECT 1 FROM jobs_trigger"
                " WHERE next_fire_at <= now() AND NOT paused)"
            ).fetchone()[0]
            if drained and until_finished:
                drained = not conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM jobs_execution"
                    " WHERE state IN ('dispatched', 'running'))"
                ).fetchone()[0]
            if drained:
                break
        return drained

    def measure_claim(self, nodes: int, batch: int) -> Claim:
        self.progress(f"claim: {nodes} node(s), batch {batch}")
        self.reset(self.sizes.triggers)
        released, drained = self.run_nodes(nodes, batch, self.sizes.claim_cap, False)
        fires, last = self.conn.execute(
            "SELECT count(*), max(created_at) FROM jobs_execution"
        ).fetchone()
        seconds = (last - released).total_seconds() if last else 0.0
        return Claim(nodes, batch, fires, seconds, drained)

    # --- sections ---

    def section_claim(self) -> None:
        s = self.sizes
        self.out(f"\nClaim throughput: {s.triggers} due one-off triggers (demo.noop, inline)")
        self.out("   fires/s = executions recorded / (last created_at - release), database time;")
        self.out(f"   each combination capped at {s.claim_cap:g} s")
        self.out(f"   {'nodes':>5} {'batch':>6} {'fires':>8} {'seconds':>8} {'fires/s':>9}")
        for nodes in s.nodes:
            for batch in s.batches:
                c = self.measure_claim(nodes, batch)
                self.results.claim.append(c)
                if (nodes, batch) == (1, 100):
                    self.results.node_1x100 = c
                note = "" if c.complete else "  (capped: backlog not drained)"
                self.out(
                    f"   {nodes:>5} {batch:>6} {c.fires:>8} {c.seconds:>8.2f} {c.per_s:>9.0f}{note}"
                )

    def section_raw(self) -> None:
        """Rounds of the raw loop, the minimal schema's and one node at batch 100, so that
        each ratio compares measurements minutes apart at most, not a whole bench."""
        s = self.sizes
        rounds = self.results.raw_rounds
        for number in range(1, s.raw_rounds + 1):
            of = f" (round {number} of {s.raw_rounds})" if s.raw_rounds > 1 else ""
            self.progress(f"raw: the claim transaction from plain psycopg{of}")
            self.reset(s.triggers)
            raw = self.raw_claim_loop(batch=100, cap=s.claim_cap)
            self.progress(f"raw: the same on the minimal schema{of}")
            self.reset(s.triggers)
            minimal = self.minimal_claim_loop(batch=100, cap=s.claim_cap)
            rounds.append(RawRound(raw, minimal, self.measure_claim(1, 100)))
        by_rate = operator.attrgetter("per_s")
        raw = self.results.raw = _lower_middle([r.raw for r in rounds], by_rate)
        minimal = self.results.minimal = _lower_middle([r.minimal for r in rounds], by_rate)
        node = self.results.node_1x100 = _lower_middle([r.node for r in rounds], by_rate)
        median = "" if s.raw_rounds == 1 else f"; the median of {s.raw_rounds} rounds of each"
        self.out("\nRaw-SQL claim limit: jobs/claims.py's SELECT_DUE_TRIGGERS (SKIP LOCKED) and")
        self.out("   INSERT_FIRES_AND_ADVANCE, COMMIT, in a tight loop (plain psycopg, one")
        self.out("   connection, batch 100); the same on the minimal schema (copies of the tables")
        self.out("   with only primary keys, the uniqueness and the due index: no FKs, triggers);")
        self.out(f"   one node at batch 100 right after them{median}")
        for label, run in (("raw", raw), ("minimal schema", minimal), ("node 1 x batch 100", node)):
            note = "" if run.complete else "  (capped)"
            self.out(f"   {label + ' fires/s':<26} {run.per_s:>9.0f}"
                     f"   ({run.fires} fires in {run.seconds:.2f} s){note}")  # fmt: skip
        self.out(f"   schema_ratio               {_shown(self.results.schema_ratio):>9}"
                 f"   raw / minimal, target >= {TARGETS['schema_ratio']}")  # fmt: skip
        self.out(f"   node_raw_ratio             {_shown(self.results.node_raw_ratio):>9}"
                 f"   node / raw, target >= {TARGETS['ratio']}")  # fmt: skip
        if s.raw_rounds > 1:
            self.out(f"   {'round':>5} {'raw/s':>9} {'minimal/s':>10} {'node/s':>9}"
                     f" {'schema_ratio':>12} {'node_raw_ratio':>14}")  # fmt: skip
            for number, r in enumerate(rounds, 1):
                self.out(f"   {number:>5} {r.raw.per_s:>9.0f} {r.minimal.per_s:>10.0f}"
                         f" {r.node.per_s:>9.0f} {_shown(r.schema_ratio):>12}"
                         f" {_shown(r.node_raw_ratio):>14}")  # fmt: skip

    def raw_claim_loop(self, batch: int, cap: float, tables: ClaimTables | None = None) -> Claim:
        """The claim transaction of jobs/claims.py in a tight loop: SELECT_DUE_TRIGGERS, then
        INSERT_FIRES_AND_ADVANCE (fires and trigger advance in one statement), COMMIT; on
        the real tables, or on ``tables`` (the minimal schema)."""
        tables = tables or REAL_TABLES
        select = tables.sql(claims.SELECT_DUE_TRIGGERS)
        insert = tables.sql(claims.INSERT_FIRES_AND_ADVANCE)
        node_id = "bench-raw"
        with self.db.connect(autocommit=False) as conn, conn.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            start = cur.fetchone()[0]
            conn.commit()
            deadline = time.monotonic() + cap
            drained = False
            while time.monotonic() < deadline:
                with conn.transaction():
                    rows = cur.execute(select, [batch]).fetchall()
                    if not rows:
                        drained = True
                        break
                    ids = [r[0] for r in rows]
                    times = [r[11] for r in rows]
                    n = len(rows)
                    # One-off triggers: finished (next_fire_at NULL) once fired.
                    advance = [ids, [None] * n, times]
                    fires = [node_id, [r[1] for r in rows], ids, times, ["dispatched"] * n,
                             [""] * n]  # fmt: skip
                    cur.execute(insert, advance + fires)
                    cur.fetchall()
            fires, last = cur.execute(
                tables.sql("SELECT count(*), max(created_at) FROM jobs_execution")
            ).fetchone()
            conn.commit()
        seconds = (last - start).total_seconds() if last else 0.0
        return Claim(1, batch, fires, seconds, drained)

    def minimal_claim_loop(self, batch: int, cap: float) -> Claim:
        """The raw loop on the minimal schema: copies of the backlog's tables with only
        their primary keys, the uniqueness index and the due index (MINIMAL_SCHEMA),
        created from the current jobs_* rows and dropped afterwards."""
        self.conn.execute(MINIMAL_SCHEMA)
        try:
            self.conn.execute("VACUUM ANALYZE bench_min_trigger")
            self.conn.execute("VACUUM ANALYZE bench_min_job")
            self.conn.execute("VACUUM ANALYZE bench_min_execution")
            return self.raw_claim_loop(batch, cap, MINIMAL_TABLES)
        finally:
            self.conn.execute(DROP_MINIMAL_SCHEMA)

    def measure_e2e(self, triggers: int) -> EndToEnd:
        """One node, batch 100, default threads, on ``triggers`` due inline triggers; with
        the CPU the node and the database server (when it runs here) used meanwhile."""
        self.reset(triggers)
        cpu = CpuMeter(server_pid=self.server_pid)
        _, drained = self.run_nodes(1, 100, self.sizes.e2e_cap, until_finished=True, cpu=cpu)
        return replace(self.succeeded_rate(triggers, drained), cpu=cpu.span)

    def succeeded_rate(self, triggers: int, complete: bool) -> EndToEnd:
        succeeded, first, last, other = self.conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
            "       min(dispatched_at) FILTER (WHERE state = 'succeeded'),"
            "       max(finished_at) FILTER (WHERE state = 'succeeded'),"
            "       count(*) FILTER (WHERE state <> 'succeeded')"
            " FROM jobs_execution"
        ).fetchone()
        seconds = (last - first).total_seconds() if last else 0.0
        return EndToEnd(triggers, succeeded, seconds, other, complete)

    def section_e2e(self) -> None:
        s = self.sizes
        self.progress("e2e: one node, batch 100, default threads")
        e2e = self.results.e2e = self.measure_e2e(s.triggers)
        self.out("\nEnd to end: one node, batch 100, default threads: claim, run demo.noop")
        self.out("   inline, record success; succeeded / (last finished_at - first dispatched_at)")
        note = "" if e2e.complete else f"  (capped at {s.e2e_cap:g} s)"
        self.out(f"   succeeded/s            {e2e.per_s:>9.0f}"
                 f"   target >= {TARGETS['e2e_per_s']:.0f}")  # fmt: skip
        self.out(f"   ({e2e.succeeded} succeeded in {e2e.seconds:.2f} s,"
                 f" {e2e.other} not succeeded){note}")  # fmt: skip
        self.out("   CPU from the release to the drain (/proc), per run: the node's process, the")
        self.out("   database server's processes (n/a when it runs on another machine), and the")
        self.out("   cores this machine kept busy")
        cpu = _e2e_cpu(e2e)
        self.out(f"   node us per run        {_shown(cpu['e2e_node_cpu_us']):>9}")
        self.out(f"   database us per run    {_shown(cpu['e2e_db_cpu_us']):>9}")
        self.out(f"   cores busy             {_shown(cpu['e2e_cores_busy']):>9}"
                 f"   of {os.cpu_count()}")  # fmt: skip

    def section_celery(self) -> None:
        """End to end through Celery: one node publishes a backlog of celery runs, real
        workers run them; beside the inline executor's figure of the same run."""
        s = self.sizes
        queue = bench_queue(self.db.name)
        self.conn.execute("UPDATE jobs_job SET queue = %s WHERE name = %s", [queue, CELERY_JOB])
        app = Celery("bench", broker=self.broker, set_as_current=False)
        try:
            # First: it also tells an unreachable broker before anything is measured.
            purge_queue(app, queue)
            try:
                inline = self.results.e2e
                if inline is None:
                    self.progress(f"celery: inline comparison, {s.celery_triggers} triggers")
                    inline = self.measure_e2e(s.celery_triggers)
                self.results.celery_inline = inline
                for workers in s.celery_workers:
                    rounds = self.measure_celery(app, queue, workers)
                    ours, bare = rounds[median_round(rounds)]
                    self.results.celery[workers] = ours
                    self.results.celery_bare[workers] = bare
                    self.results.celery_ratios[workers] = [_ratio(o, b) for o, b in rounds]
            finally:
                purge_queue(app, queue, delete=True)
        finally:
            app.close()
        self.print_celery(queue)

    def measure_celery(self, app: Celery, queue: str, workers: int) -> list[tuple[EndToEnd, Bare]]:
        """Rounds of our runs through ``workers`` Celery workers, each followed by bare no-op
        tasks through the same workers on the same queue."""
        s = self.sizes
        rounds: list[tuple[EndToEnd, Bare]] = []
        with Workers(self.db, self.broker, queue, workers, s.celery_concurrency,
                     self.log_dir, f"{workers}w") as procs:  # fmt: skip
            procs.wait_ready(app)
            for number in range(1, s.celery_rounds + 1):
                of = f", round {number} of {s.celery_rounds}" if s.celery_rounds > 1 else ""
                self.progress(f"celery: {workers} worker(s) x {s.celery_concurrency} processes,"
                              f" {s.celery_triggers} triggers{of}")  # fmt: skip
                self.reset(s.celery_triggers, CELERY_JOB)
                # Execution ids restart at 1 with every reset: a message left over from the
                # last measurement would run one of this one's executions.
                purge_queue(app, queue)
                cpu = CpuMeter(server_pid=self.server_pid)
                _, drained = self.run_nodes(
                    1, 100, s.celery_cap, until_finished=True,
                    extra_env={"CELERY_BROKER_URL": self.broker}, watch=[procs], cpu=cpu,
                )  # fmt: skip
                ours = replace(self.succeeded_rate(s.celery_triggers, drained), cpu=cpu.span)
                self.progress(f"celery: bare {BARE_TASK} x {s.celery_triggers},"
                              f" {workers} worker(s){of}")  # fmt: skip
                bare = self.measure_bare_celery(app, queue, procs, s.celery_triggers)
                rounds.append((ours, bare))
                if not (ours.complete and bare.complete):
                    # Messages of a capped round may still be reserved by the workers: they
                    # would meet the next round's executions, whose ids start at 1 again.
                    break
        return rounds

    def measure_bare_celery(self, app: Celery, queue: str, procs: Workers, count: int) -> Bare:
        """Publish ``count`` BARE_TASK messages from this one process (as one node publishes
        ours) and wait until the workers have run them all. The end is seen by asking the
        workers (every task accepted, none active), so it is late by at most one poll."""
        purge_queue(app, queue)
        inspect = app.control.inspect(destination=procs.names, timeout=1.0, limit=len(procs.names))
        before = _tasks_accepted(inspect, BARE_TASK)
        cpu = CpuMeter(server_pid=self.server_pid)
        cpu.start(worker_pids=procs.pids)
        start = self.conn.execute("SELECT clock_timestamp()").fetchone()[0]
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(BARE_TASK, queue=queue, producer=producer)
        deadline = time.monotonic() + self.sizes.celery_cap
        done = complete = False
        while not done:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            procs.check_alive()
            accepted = _tasks_accepted(inspect, BARE_TASK) - before
            done = complete = accepted >= count and not any((inspect.active() or {}).values())
        end = self.conn.execute("SELECT clock_timestamp()").fetchone()[0]
        cpu.stop()
        ran = count if complete else _tasks_accepted(inspect, BARE_TASK) - before
        return Bare(count, ran, (end - start).total_seconds(), complete, cpu.span)

    def print_celery(self, queue: str) -> None:
        s = self.sizes
        self.out(f"\nCelery end to end: {s.celery_triggers} due one-off triggers of a celery job"
                 " (demo.noop), published by")  # fmt: skip
        self.out(f"   one node (batch 100), run by workers of {s.celery_concurrency} prefork"
                 " processes")  # fmt: skip
        self.out(f"   queue {queue} on {maybe_sanitize_url(self.broker)}")
        self.out("   succeeded/s = succeeded / (last finished_at - first dispatched_at),"
                 " database time;")  # fmt: skip
        self.out(f"   each combination capped at {s.celery_cap:g} s")
        self.out(f"   bare: {s.celery_triggers} {BARE_TASK} tasks (no database, no bookkeeping)"
                 " published by one process to")  # fmt: skip
        self.out("   the same queue and workers; tasks / (all run - first publish), database"
                 " time, late by <= 1 poll")  # fmt: skip
        self.out(f"   {'':<10} {'succeeded':>9} {'seconds':>8} {'ours/s':>8}"
                 f" {'bare':>6} {'seconds':>8} {'bare/s':>8} {'ours/bare':>9}")  # fmt: skip
        for workers, run in self.results.celery.items():
            bare = self.results.celery_bare[workers]
            notes = []
            if run.succeeded < run.triggers:
                capped = "" if run.complete else ", capped"
                notes.append(f"{run.triggers - run.succeeded} not succeeded{capped}")
            if not bare.complete:
                notes.append("bare capped")
            note = f"  ({'; '.join(notes)})" if notes else ""
            ratio = _ratio(run, bare)
            label = _workers_label(workers)
            self.out(f"   {label:<10} {run.succeeded:>9} {run.seconds:>8.2f} {run.per_s:>8.0f}"
                     f" {bare.ran:>6} {bare.seconds:>8.2f} {bare.per_s:>8.0f}"
                     f" {ratio if ratio is not None else 0:>9.2f}{note}")  # fmt: skip
        if s.celery_rounds > 1:
            self.out(f"   above and below: the median of {s.celery_rounds} rounds (ours, then bare,"
                     " on the same workers); ours/bare by round:")  # fmt: skip
            for workers, ratios in self.results.celery_ratios.items():
                shown = ", ".join(_shown(ratio) for ratio in ratios)
                ended = "" if len(ratios) == s.celery_rounds else "  (a capped round ended them)"
                self.out(f"   {_workers_label(workers):<10} ours/bare {shown}{ended}")
        self.out(f"   target ours/bare with 2 workers >= {TARGETS['celery_bare_ratio_2w']}")
        self.out(f"   this machine's CPU ({os.cpu_count()} cores, /proc/stat; the database's"
                 " counts when it runs here),")  # fmt: skip
        self.out("   ours from the release to the drain, bare from the first publish to the end;")
        self.out(
            "   of it (/proc/<pid>): the node's process, the database server's processes, and the"
        )
        self.out(
            "   workers' main processes (each takes messages from the broker, hands them to its"
        )
        self.out("   pool and acknowledges them) and pool processes (which run the tasks):")
        self.out(f"   {'':<15} {'ms/run':>6} {'node':>6} {'database':>8} {'main':>6} {'pool':>6}"
                 f" {'cores busy':>10}")  # fmt: skip
        for workers, run in self.results.celery.items():
            bare = self.results.celery_bare[workers]
            label = _workers_label(workers)
            for kind, span, count in (
                ("ours", run.cpu, run.succeeded),
                ("bare", bare.cpu, bare.ran),
            ):
                self.out(f"   {label + ' ' + kind:<15}"
                         f" {_shown(_cpu_ms(span, count)):>6}"
                         f" {_shown(_cpu_ms(span, count, 'nodes')) if kind == 'ours' else '':>6}"
                         f" {_shown(_cpu_ms(span, count, 'database')):>8}"
                         f" {_shown(_cpu_ms(span, count, 'workers_main')):>6}"
                         f" {_shown(_cpu_ms(span, count, 'workers_pool')):>6}"
                         f" {_shown(_cores_busy(span)):>10}")  # fmt: skip
        inline = self.results.celery_inline
        source = "the e2e section's run" if inline is self.results.e2e else "the same backlog"
        note = ", capped" if not inline.complete else ""
        self.out(
            f"   {'inline':<10} {inline.succeeded:>9} {inline.seconds:>8.2f}"
            f" {inline.per_s:>8.0f}  (inline executor, one node: {source}{note})"
        )

    def section_mixed(self) -> None:
        """Fast and slow every-second triggers on several nodes: how soon runs start, and
        how the runs spread over the nodes (each node claims only what it can start)."""
        s = self.sizes
        self.progress(f"mixed: {s.mixed_nodes} nodes, {s.mixed_triggers} every-second triggers "
                      f"({s.mixed_slow} slow), {s.mixed_seconds:g} s")  # fmt: skip
        self.reset(0)
        self.db.manage(
            "shell",
            "-c",
            MIXED_SCRIPT.format(fast=s.mixed_triggers - s.mixed_slow, slow=s.mixed_slow),
        )
        conn = self.conn
        with Nodes(self.db, s.mixed_nodes, None, self.log_dir, "mixed") as procs:
            procs.wait_listening(conn)
            start = conn.execute(
                "UPDATE jobs_trigger SET paused = false,"
                "  next_fire_at = date_trunc('second', now()) + interval '2 seconds'"
                " RETURNING next_fire_at"
            ).fetchone()[0]
            deadline = time.monotonic() + 2 + s.mixed_seconds
            while time.monotonic() < deadline:
                time.sleep(0.5)
                procs.check_alive()
            conn.execute("UPDATE jobs_trigger SET paused = true")
            drain_until = time.monotonic() + MIXED_SLOW_SECONDS + 30
            while conn.execute(
                "SELECT EXISTS (SELECT 1 FROM jobs_execution"
                " WHERE state IN ('pending', 'dispatched', 'running'))"
            ).fetchone()[0]:
                if time.monotonic() > drain_until:
                    raise BenchError(f"mixed: runs did not finish\n{procs.logs()}")
                time.sleep(0.2)
        runs, p50, p99, worst = conn.execute(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),"
            "       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag)"
            " FROM (SELECT extract(epoch FROM started_at - scheduled_for) * 1000 AS lag"
            "       FROM jobs_execution WHERE scheduled_for >= %s AND started_at IS NOT NULL) l",
            [start],
        ).fetchone()
        per_node = dict(conn.execute(
            "SELECT node, count(*) FROM jobs_execution WHERE scheduled_for >= %s"
            " AND started_at IS NOT NULL GROUP BY node ORDER BY node", [start],
        ).fetchall())  # fmt: skip
        shares = {node: round(count / runs, 4) for node, count in per_node.items()}
        max_share = max(shares.values()) * s.mixed_nodes if shares else 0.0
        self.results.mixed = {
            "nodes": s.mixed_nodes,
            "seconds": s.mixed_seconds,
            "runs": runs,
            "start_lag_p50_ms": round(float(p50), 2),
            "start_lag_p99_ms": round(float(p99), 2),
            "start_lag_max_ms": round(float(worst), 2),
            "node_shares": shares,
            "max_share": round(max_share, 2),
        }
        self.out(f"\nMixed load: {s.mixed_nodes} nodes, {s.mixed_triggers} every-second triggers"
                 f" for {s.mixed_seconds:g} s, {s.mixed_slow} of them sleeping"
                 f" {MIXED_SLOW_SECONDS:g} s")  # fmt: skip
        self.out("   start lag = started_at (the run's confirmed start) - scheduled_for")
        self.out(f"   runs                   {runs:>9}")
        self.out(f"   start lag p50 ms       {float(p50):>9.2f}")
        self.out(f"   start lag p99 ms       {float(p99):>9.2f}"
                 f"   target <= {TARGETS['mixed_start_lag_p99_ms']:g}")  # fmt: skip
        self.out(f"   start lag max ms       {float(worst):>9.2f}")
        self.out(f"   largest node share     {max_share:>9.2f}x fair"
                 f"   target <= {TARGETS['mixed_max_share']:g}x")  # fmt: skip
        for node, share in shares.items():
            self.out(f"     {node:<28} {share:>7.1%}")

    def section_scale(self) -> None:
        """At scale: the idle node's load beside ``scale_triggers`` triggers not yet due
        and ``scale_prune`` old executions; fire lag with 2 nodes, without and then with
        the history being pruned; ``scale_due`` triggers due at once drained by 2 nodes."""
        s = self.sizes
        conn = self.conn
        scale = self.results.scale = {
            "triggers": s.scale_triggers, "due": s.scale_due, "prune_executions": s.scale_prune,
            "lag_triggers": s.lag_triggers,
        }  # fmt: skip
        self.progress(
            f"scale: inserting {s.scale_triggers} triggers, {s.scale_prune} old executions"
        )
        self.reset(0)
        clone_triggers(conn, FUTURE, {"count": s.scale_triggers})
        retention = settings.SCHEDULER_HISTORY_RETENTION_DAYS
        clone_executions(conn, s.scale_prune, retention + 365)
        conn.execute("VACUUM ANALYZE")
        # The nodes never prune: the bench does, when it chooses to.
        env = {"SCHEDULER_HISTORY_RETENTION_DAYS": str(SCALE_NODE_RETENTION_DAYS)}

        with Nodes(self.db, 1, None, self.log_dir, "scale-idle", env) as node:
            node.wait_listening(conn)
            self.progress(f"scale: idle node, settling {s.idle_settle:g} s,"
                          f" measuring {s.idle_window:g} s")  # fmt: skip
            idle, others = self.count_idle(node)
            conn = self.conn  # count_idle reconnects
        scale.update({f"idle_{k}": v for k, v in idle.items()})

        with Nodes(self.db, 2, None, self.log_dir, "scale-lag", env) as nodes:
            nodes.wait_listening(conn)
            # Each side pools the fires of LAG_WINDOWS windows, one after the other: a single
            # stall of this machine (a 100 ms one was seen) then weighs on one side's p99
            # only if it delays more than 1% of that side's fires.
            quiet, pruning = [], []
            for number in range(1, LAG_WINDOWS + 1):
                self.progress(f"scale: fire lag, 2 nodes, {s.lag_triggers} triggers, no pruning"
                              f" (window {number} of {LAG_WINDOWS})")  # fmt: skip
                quiet.append(self.fire_lag_window(nodes))
            pruner = Pruner(self.db, retention)
            try:
                prune_started = pruner.wait_started()
                for number in range(1, LAG_WINDOWS + 1):
                    self.progress(f"scale: fire lag, 2 nodes, pruning {s.scale_prune} executions"
                                  f" (window {number} of {LAG_WINDOWS})")  # fmt: skip
                    pruning.append(self.fire_lag_window(nodes))
                pruned, prune_finished = pruner.wait_finished()
            finally:
                pruner.stop()
            scale["lag_windows"] = LAG_WINDOWS
            scale["lag_p99_ms"] = self.fire_lag_p99(quiet)
            scale["lag_window_p99_ms"] = [self.fire_lag_p99([window]) for window in quiet]
            scale["prune_lag_p99_ms"] = self.fire_lag_p99(pruning)
            scale["prune_lag_window_p99_ms"] = [self.fire_lag_p99([window]) for window in pruning]
            last_due = pruning[-1].last_due

            self.progress(f"scale: {s.scale_due} triggers due at once, the same 2 nodes")
            conn.execute("UPDATE jobs_job SET paused = true")
            clone_triggers(conn, SAME_SECOND, {"count": s.scale_due})
            conn.execute("VACUUM ANALYZE jobs_trigger")
            # Unpausing NOTIFYs both nodes; this commit's time is the start.
            released = conn.execute(
                "UPDATE jobs_job SET paused = false RETURNING clock_timestamp()"
            ).fetchone()[0]
            drained = self.wait_drained(nodes, s.scale_cap, until_finished=True)
        scale["prune_lag_ratio"] = (
            round(scale["prune_lag_p99_ms"] / scale["lag_p99_ms"], 3)
            if scale["lag_p99_ms"] else None
        )  # fmt: skip
        scale["pruned"] = pruned
        # Batches of PRUNE_BATCH_SIZE: full ones, then the short one that ends it.
        scale["prune_batches"] = pruned // history.PRUNE_BATCH_SIZE + 1
        scale["prune_seconds"] = round((prune_finished - prune_started).total_seconds(), 3)
        # Whether the lag measured "with pruning" was all measured while it ran.
        scale["prune_covered"] = prune_finished >= last_due

        claimed, finished = conn.execute(
            "SELECT max(created_at), max(finished_at) FROM jobs_execution WHERE created_at >= %s",
            [released],
        ).fetchone()
        scale["drain_claimed_s"] = (
            round((claimed - released).total_seconds(), 3) if claimed else None
        )
        scale["drain_finished_s"] = (
            round((finished - released).total_seconds(), 3) if finished else None
        )
        scale["drain_complete"] = drained
        self.print_scale(others)

    def fire_lag_window(self, nodes: Nodes) -> LagWindow:
        """``lag_triggers`` one-off triggers due evenly over ``lag_spread`` seconds, fired by
        the running ``nodes``: returns them once all fired."""
        s = self.sizes
        conn = self.conn
        first = conn.execute("SELECT coalesce(max(id), 0) FROM jobs_trigger").fetchone()[0]
        clone_triggers(
            conn, SPREAD, {"count": s.lag_triggers, "lead": s.lag_lead, "spread": s.lag_spread}
        )
        last = conn.execute("SELECT max(id) FROM jobs_trigger").fetchone()[0]
        deadline = time.monotonic() + s.lag_lead + s.lag_spread + 60
        while True:
            time.sleep(0.2)
            nodes.check_alive()
            fired = conn.execute(
                "SELECT count(*) FROM jobs_execution WHERE trigger_id > %s AND trigger_id <= %s",
                [first, last],
            ).fetchone()[0]
            if fired >= s.lag_triggers:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"scale: only {fired} of {s.lag_triggers} triggers fired\n"
                                 f"{nodes.logs()}")  # fmt: skip
        last_due = conn.execute(
            "SELECT max(scheduled_for) FROM jobs_execution"
            " WHERE trigger_id > %s AND trigger_id <= %s",
            [first, last],
        ).fetchone()[0]
        return LagWindow(first, last, last_due)

    def fire_lag_p99(self, windows: list[LagWindow]) -> float:
        """Fire lag p99 (ms) of the fires of ``windows`` together."""
        ranges = [[w.after_id for w in windows], [w.last_id for w in windows]]
        p99 = self.conn.execute(
            "SELECT percentile_cont(0.99) WITHIN GROUP"
            "       (ORDER BY extract(epoch FROM e.dispatched_at - e.scheduled_for) * 1000)"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS w(after_id, last_id)"
            " JOIN jobs_execution e ON e.trigger_id > w.after_id AND e.trigger_id <= w.last_id",
            ranges,
        ).fetchone()[0]
        return round(float(p99), 2)

    def print_scale(self, others: list[str]) -> None:
        s, r = self.sizes, self.results.scale
        self.out(f"\nScale: {s.scale_triggers} one-off triggers due from tomorrow on, and"
                 f" {s.scale_prune} succeeded executions")  # fmt: skip
        self.out("   older than the retention; the nodes' own pruning off")
        self.out("   idle node: transactions per second in the bench database"
                 " (pg_stat_database), one node connected")  # fmt: skip
        self.out(f"   idle queries/s         {r['idle_qps']:>9.2f}"
                 f"   target < {TARGETS['scale_idle_qps']:g}"
                 f"   ({r['idle_transactions']} in {r['idle_window_s']:.1f} s)")  # fmt: skip
        if others:
            self.out(f"   warning: other clients on the bench database: {', '.join(others)}")
        self.out(f"   fire lag (dispatched_at - scheduled_for) of {s.lag_triggers} triggers due"
                 f" over {s.lag_spread:g} s, 2 nodes; each p99 of {r['lag_windows']} such"
                 " windows' fires together (each window's own in brackets):")  # fmt: skip
        windows = ", ".join(f"{p:.2f}" for p in r["lag_window_p99_ms"])
        self.out(f"   p99 ms, no pruning     {r['lag_p99_ms']:>9.2f}   ({windows})")
        windows = ", ".join(f"{p:.2f}" for p in r["prune_lag_window_p99_ms"])
        self.out(f"   p99 ms, pruning        {r['prune_lag_p99_ms']:>9.2f}   ({windows})")
        ratio = r["prune_lag_ratio"]
        self.out(f"   ratio                  {ratio if ratio is not None else 0:>9.2f}"
                 f"   target <= {TARGETS['prune_lag_ratio']:g}")  # fmt: skip
        covered = "" if r["prune_covered"] else "  (pruning ended before the last fire)"
        batch = history.PRUNE_BATCH_SIZE
        self.out(f"   pruned {r['pruned']} executions in {r['prune_seconds']:.2f} s,"
                 f" {r['prune_batches']} batches of {batch}{covered}")  # fmt: skip
        self.out(f"   {s.scale_due} triggers due in the same second, 2 nodes (default batch),"
                 " from their release:")  # fmt: skip
        note = "" if r["drain_complete"] else f"  (capped at {s.scale_cap:g} s)"
        claimed, finished = r["drain_claimed_s"], r["drain_finished_s"]
        self.out(f"   all claimed, s         {claimed if claimed is not None else 0:>9.2f}")
        self.out(f"   all finished, s        {finished if finished is not None else 0:>9.2f}"
                 f"   target <= {TARGETS['scale_drain_s']:g}{note}")  # fmt: skip

    def section_idle_and_lag(self, sections: tuple[str, ...]) -> None:
        """One node, started on an empty database: measured idle, then (already running
        and idle) given triggers spread over time."""
        s = self.sizes
        self.reset(0)
        with Nodes(self.db, 1, None, self.log_dir, "idle") as node:
            node.wait_listening(self.conn)
            if "idle" in sections:
                self.progress(f"idle: settling {s.idle_settle:g} s, measuring {s.idle_window:g} s")
                self.measure_idle(node)
            if "lag" in sections:
                self.progress(f"lag: {s.lag_triggers} triggers over {s.lag_spread:g} s")
                self.measure_lag(node)

    def measure_idle(self, node: Nodes) -> None:
        idle, others = self.count_idle(node)
        self.results.idle = idle
        self.out("\nIdle node: one node, no triggers; transactions committed or rolled back")
        self.out("   in the bench database (pg_stat_database), only the node connected")
        self.out(f"   queries/s              {idle['qps']:>9.2f}"
                 f"   target < {TARGETS['idle_qps']:g}")  # fmt: skip
        self.out(f"   ({idle['transactions']} transactions in {idle['window_s']:.1f} s)")
        if others:
            self.out(f"   warning: other clients on the bench database: {', '.join(others)}")

    def count_idle(self, node: Nodes) -> tuple[dict, list[str]]:
        """The transactions per second of the bench database while only ``node`` (idle) is
        connected: {window_s, transactions, qps}, and any other clients seen."""
        s = self.sizes
        # Read the counters from the maintenance database, with our own connection to the
        # bench database closed (before settling, so its last counters are flushed by
        # then): the bench database's transactions are then the node's.
        self.conn.close()
        time.sleep(s.idle_settle)
        with self.db.connect(MAINTENANCE_DB) as stats:
            before, t0, others_before = self._xacts(stats)
            time.sleep(s.idle_window)
            after, t1, others_after = self._xacts(stats)
        node.check_alive()
        self.conn = self.db.connect()
        seconds = (t1 - t0).total_seconds()
        transactions = after - before
        idle = {
            "window_s": round(seconds, 3),
            "transactions": transactions,
            "qps": round(transactions / seconds, 3),
        }
        return idle, sorted(set(others_before + others_after))

    def _xacts(self, stats: psycopg.Connection):
        total, at = stats.execute(
            "SELECT xact_commit + xact_rollback, clock_timestamp() FROM pg_stat_database"
            " WHERE datname = %s",
            [self.db.name],
        ).fetchone()
        others = stats.execute(
            "SELECT coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name NOT LIKE 'bench-node-%%'",
            [self.db.name],
        ).fetchall()
        return total, at, [r[0] for r in others]

    def measure_lag(self, node: Nodes) -> None:
        s = self.sizes
        conn = self.conn
        clone_triggers(
            conn, SPREAD, {"count": s.lag_triggers, "lead": s.lag_lead, "spread": s.lag_spread}
        )
        deadline = time.monotonic() + s.lag_lead + s.lag_spread + 30
        while True:
            time.sleep(0.2)
            node.check_alive()
            done = conn.execute("SELECT count(*) FROM jobs_execution").fetchone()[0]
            if done >= s.lag_triggers:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {done} of {s.lag_triggers} lag triggers fired\n{node.logs()}"
                )
        p50, p99, worst = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),"
            "       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag)"
            " FROM (SELECT extract(epoch FROM dispatched_at - scheduled_for) * 1000 AS lag"
            "       FROM jobs_execution) AS l"
        ).fetchone()
        p50, p99, worst = float(p50), float(p99), float(worst)
        self.results.lag = {
            "triggers": s.lag_triggers,
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(worst, 2),
        }
        self.out(f"\nFire lag: {s.lag_triggers} one-off triggers due evenly over"
                 f" {s.lag_spread:g} s, one idle node;")  # fmt: skip
        self.out("   lag = dispatched_at (the claim transaction's now()) - scheduled_for")
        self.out(f"   p50 ms                 {p50:>9.2f}")
        self.out(f"   p99 ms                 {p99:>9.2f}   target < {TARGETS['lag_p99_ms']:g}")
        self.out(f"   max ms                 {worst:>9.2f}")


def sizes_from_options(
    quick: bool,
    triggers: int | None,
    nodes: tuple[int, ...] | None,
    batches: tuple[int, ...] | None,
    cap: float | None,
    idle_seconds: float | None,
    celery_triggers: int | None = None,
    worker_concurrency: int | None = None,
    mixed_seconds: float | None = None,
    mixed_nodes: int | None = None,
    celery_workers: tuple[int, ...] | None = None,
    **more: float | int | None,
) -> Sizes:
    """The sizes of --quick or the defaults, with what the options give; ``more``: other
    Sizes fields by name (idle_settle, scale_triggers, ...)."""
    sizes = QUICK if quick else Sizes()
    overrides = {
        "triggers": triggers,
        "nodes": nodes,
        "batches": batches,
        "claim_cap": cap,
        "idle_window": idle_seconds,
        "celery_triggers": celery_triggers,
        "celery_concurrency": worker_concurrency,
        "mixed_seconds": mixed_seconds,
        "mixed_nodes": mixed_nodes,
        "celery_workers": celery_workers,
        **more,
    }
    return replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
