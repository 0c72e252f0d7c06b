"""The scheduler's hot statements are prepared on their connection, not planned per run."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction

from jobs import claims, worker
from jobs.claims import Result
from jobs.models import Execution, database_now
from jobs.reconnect import forget_connection, use_scheduler_connection_options
from tests.jobs.factories import make_job

pytestmark = pytest.mark.django_db

WORKER = "worker:celery@test:1"


def prepared(fragment: str) -> list[tuple[int, int]]:
    """(generic plans, custom plans) of this connection's prepared statements containing
    ``fragment``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE NOT from_sql AND statement LIKE %s",
            [f"%{fragment}%"],
        )
        return cursor.fetchall()


def test_a_worker_s_claim_and_result_are_prepared_and_planned_a_few_times_only(
    transactional_db, scheduler_connection
):
    job = make_job("celery job", executor="celery")
    runs = 20
    for _ in range(runs):
        execution = Execution.objects.create(
            job=job, scheduled_for=database_now(), origin="manual", state="dispatched"
        )
        run = claims.claim_on_worker(execution.id, WORKER)
        assert run is not None and run.id == execution.id
        claims.record_results(WORKER, [Result(execution.id, "succeeded", 0.01, 0.0)])
    assert Execution.objects.filter(job=job, state="succeeded").count() == runs

    claim = prepared("jobs_execution_fence_seq")
    result = prepared("AS v(id, state, started_ago, finished_ago")
    assert len(claim) == 1, claim
    assert len(result) == 1, result
    # psycopg prepares a statement on its fifth run; PostgreSQL plans the first five runs
    # of a prepared statement for their values, then settles on one plan for all.
    for generic, custom in claim + result:
        assert custom <= 5 and generic >= runs - 10, (generic, custom)


def test_a_worker_whose_connection_dropped_after_its_statements_were_prepared_goes_on(
    transactional_db,
):
    job = make_job("celery job", executor="celery")
    executions = [
        Execution.objects.create(
            job=job, scheduled_for=database_now(), origin="manual", state="dispatched"
        )
        for _ in range(8)
    ]
    for execution in executions[:6]:
        assert claims.claim_on_worker(execution.id, WORKER) is not None
        claims.record_results(WORKER, [Result(execution.id, "succeeded", 0.01, 0.0)])
    assert prepared("jobs_execution_fence_seq")
    backend = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [backend])

    # The worker's claim retries on a new connection, where nothing is prepared yet.
    run = worker._claim(executions[6].id, WORKER)
    assert run is not None and run.id == executions[6].id
    assert connection.connection.info.backend_pid != backend
    worker._record(WORKER, Result(run.id, "succeeded", 0.01, 0.0))
    assert Execution.objects.get(id=run.id).state == "succeeded"


def threshold_setting(value: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
    env.pop("DATABASE_PREPARE_THRESHOLD", None)
    if value is not None:
        env["DATABASE_PREPARE_THRESHOLD"] = value
    code = (
        "import django; django.setup(); from django.conf import settings;"
        " print(settings.DATABASES['default']['OPTIONS']['prepare_threshold'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("value", "threshold"), [(None, "5"), ("3", "3"), ("0", "None")])
def test_the_prepare_threshold_comes_from_the_environment_and_0_turns_it_off(value, threshold):
    done = threshold_setting(value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == threshold


def test_a_negative_prepare_threshold_is_refused_with_a_clear_error():
    done = threshold_setting("-1")
    assert done.returncode != 0
    assert "DATABASE_PREPARE_THRESHOLD=-1 must be at least 0" in done.stderr


def rows_read() -> int:
    """Rows of jobs_execution this transaction has read so far, by any scan."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
            " WHERE relname = 'jobs_execution'"
        )
        return cursor.fetchone()[0]


def executions(job, count: int, state: str, node: str, **fields) -> list[Execution]:
    now = database_now()
    return Execution.objects.bulk_create(
        Execution(job=job, scheduled_for=now, origin="manual", state=state, node=node, **fields)
        for _ in range(count)
    )


@pytest.fixture
def scheduler_connection():
    """This test's connections opened as a node's or worker's are (run_scheduler, Celery)."""
    saved = settings.DATABASES["default"]["OPTIONS"].get("options")
    use_scheduler_connection_options()
    forget_connection()
    yield
    settings.DATABASES["default"]["OPTIONS"]["options"] = saved
    forget_connection()


NODE = "node-a"


def test_a_node_s_writes_read_only_their_own_rows_however_many_celery_runs_it_has_queued(
    transactional_db, scheduler_connection
):
    inline = make_job("inline job")
    remote = make_job("celery job", executor="celery")
    executions(inline, 300, "succeeded", "node-b")
    executions(inline, 5, "running", NODE)
    # Statistics from a quiet moment: the node had a handful of unfinished runs.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_execution")
    # Then a burst of celery fires: published, waiting for workers, in the node's name.
    executions(remote, 2000, "dispatched", NODE, published_at=database_now())

    # Enough rounds for the statements to be prepared and their generic plan chosen.
    for _ in range(12):
        starting = [e.id for e in executions(inline, 5, "dispatched", NODE)]
        results = [Result(i, "succeeded", 0.02, 0.01) for i in starting]
        with transaction.atomic():
            before = rows_read()
            assert set(claims.confirm_start(NODE, starting)) == set(starting)
            confirm_read = rows_read() - before
            before = rows_read()
            assert claims.record_results(NODE, results) == set(starting)
            record_read = rows_read() - before
        assert confirm_read <= 10 and record_read <= 10, (confirm_read, record_read)


def test_a_worker_s_statements_planned_on_a_small_table_do_not_scan_it_once_it_grew(
    transactional_db, scheduler_connection
):
    job = make_job("celery job", executor="celery")
    first = executions(job, 12, "dispatched", "node-a")
    # A new install, with statistics to say so (not those another test left behind): the
    # worker's first runs, its statements prepared and planned.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_execution")
    for execution in first:
        assert claims.claim_on_worker(execution.id, WORKER) is not None
        claims.record_results(WORKER, [Result(execution.id, "succeeded", 0.01, 0.0)])
    assert prepared("jobs_execution_fence_seq") and prepared("AS v(id, state, started_ago")
    # Months later: the history has grown (statistics not gathered since).
    executions(job, 5000, "succeeded", "worker:old")

    (execution,) = executions(job, 1, "dispatched", "node-a")
    with transaction.atomic():
        before = rows_read()
        assert claims.claim_on_worker(execution.id, WORKER) is not None
        claim_read = rows_read() - before
        before = rows_read()
        assert claims.record_results(WORKER, [Result(execution.id, "succeeded", 0.01, 0.0)])
        record_read = rows_read() - before
    assert claim_read <= 2 and record_read <= 2, (claim_read, record_read)


def test_a_worker_s_claim_reads_one_row_however_many_celery_runs_wait_for_workers(
    transactional_db, scheduler_connection
):
    job = make_job("celery job", executor="celery")
    executions(job, 300, "succeeded", "worker:old")
    # Statistics from a quiet moment: no run waiting for a worker.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_execution")
    # Then a burst of celery fires, published and waiting for the workers.
    waiting = executions(job, 2000, "dispatched", "node-a", published_at=database_now())

    # Enough claims for the statement to be prepared and its generic plan chosen.
    for execution in waiting[:12]:
        with transaction.atomic():
            before = rows_read()
            assert claims.claim_on_worker(execution.id, WORKER) is not None
            claim_read = rows_read() - before
        assert claim_read <= 2, claim_read


@pytest.fixture
def quiet_statistics_then_a_burst(transactional_db):
    """A job's executions: statistics gathered at a quiet moment, then thousands of runs
    going on (running, on NODE), which the statistics do not know of."""
    job = make_job("busy job")
    executions(job, 300, "succeeded", NODE)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_execution")
    return executions(job, 2000, "running", NODE)


def test_cancelling_a_run_reads_its_row_only_however_many_runs_are_unfinished(
    quiet_statistics_then_a_burst,
):
    from jobs.actions import request_cancel

    running = quiet_statistics_then_a_burst
    with transaction.atomic():
        before = rows_read()
        request_cancel(running[1000], "operator", "stuck")
        cancel_read = rows_read() - before
    assert cancel_read <= 3, cancel_read
    running[1000].refresh_from_db()
    assert running[1000].cancel_requested_at is not None


def test_a_forced_release_tells_the_run_reading_its_row_only(quiet_statistics_then_a_burst):
    from locks.leases import acquire
    from locks.maintenance import force_release

    holder = quiet_statistics_then_a_burst[1000]
    assert acquire("busy-lock", NODE, execution_id=holder.id) is not None
    with transaction.atomic():
        before = rows_read()
        force_release("busy-lock", "operator", "stuck")
        release_read = rows_read() - before
    assert release_read <= 3, release_read
    holder.refresh_from_db()
    assert holder.lock_lost_at is not None


def test_a_node_s_progress_write_reads_only_the_rows_it_writes(quiet_statistics_then_a_burst):
    running = quiet_statistics_then_a_burst
    reports = claims.Reports(progress=[(running[7].id, 3.0, 10.0, "a third", 0.0)])
    with transaction.atomic():
        before = rows_read()
        claims.record_reports(NODE, reports)
        progress_read = rows_read() - before
    assert progress_read <= 3, progress_read
    running[7].refresh_from_db()
    assert running[7].progress_done == 3.0


def test_publishing_runs_again_reads_only_their_rows(transactional_db):
    job = make_job("celery job", executor="celery")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_execution")
    waiting = executions(job, 2000, "dispatched", NODE, published_at=database_now())
    with transaction.atomic():
        before = rows_read()
        claims.mark_republished([waiting[5].id, waiting[6].id])
        republish_read = rows_read() - before
    assert republish_read <= 4, republish_read
