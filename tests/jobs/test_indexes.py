"""Every index on the hot tables is there for a named query, and that query uses it.

Each insert of the claim and each non-HOT update of the recorder pays for every index of
jobs_execution, so an index stays only while a query needs it. Adding one means naming
its query here (the second test then fails until it does).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection, transaction

from jobs import claims, history, queries, trends
from jobs.models import Execution, HourRollup, Job, MinuteRollup, database_now

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", autouse=True)
def analysed_history(django_db_setup, django_db_blocker):
    """A small, realistic, analysed history for the planner to judge by, committed for
    this module's tests and deleted (and the tables analysed again) after them.

    On near-empty tables the planner's choice between two indexes of equal estimated cost
    turned on their sizes, which depend on what earlier tests left behind (a test's
    rolled-back rows still take index pages until a vacuum): the same query read one index
    in one full run and another in the next. With real statistics, the index made for a
    query is the cheaper one by far.
    """
    with django_db_blocker.unblock():
        jobs = Job.objects.bulk_create(
            Job(name=f"planned {i}", target="demo.noop") for i in range(200)
        )
        now = database_now()
        states = ["succeeded"] * 16 + ["failed", "timed_out", "cancelled", "skipped"]
        Execution.objects.bulk_create(
            Execution(job=jobs[i % len(jobs)], scheduled_for=now - timedelta(minutes=i),
                      created_at=now - timedelta(minutes=i),
                      origin="schedule" if i % 25 else "manual", state=states[i % len(states)],
                      node=f"node-{i % 20}:{1000 + i % 20}:ab12", started_at=now, finished_at=now)
            for i in range(3000)
        )  # fmt: skip
        # The rollup's reads are judged on its empty tables, as before: with rows, its
        # upsert key and its bucket index tie for a window the planner cannot see (its
        # bounds come from a CTE), and either may be taken.
        MinuteRollup.objects.all().delete()
        HourRollup.objects.all().delete()
        _analyze()
    yield
    with django_db_blocker.unblock():
        Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
        _analyze()


def _analyze() -> None:
    with connection.cursor() as cursor:
        for table in ("jobs_execution", "jobs_minuterollup", "jobs_hourrollup", "jobs_job"):
            cursor.execute(f"ANALYZE {table}")


# index -> the query (by name or by what it serves) that needs it.
JUSTIFIED = {
    "jobs_execution": {
        "jobs_execution_pkey": "every lookup by id",
        "one_execution_per_fire": "INSERT_FIRES' ON CONFLICT: a fire time is recorded once",
        "execution_pending_idx": "SELECT_PENDING: runnable pending executions by run_after",
        "execution_unfinished_idx": "recovery and OWN_UNFINISHED: a node's unfinished runs",
        "execution_recent_idx": "the executions list and API, newest first",
        "execution_job_recent_idx": "a job's executions (page, filter) and the job FK",
        "execution_node_prefix_idx": "the executions list filtered by a node (id or prefix)",
        "execution_error_trgm_idx": "the executions list's text search q, in errors",
        "execution_args_trgm_idx": "the executions list's text search q, in arguments",
        "execution_state_recent_idx": "the executions list filtered by a state",
        "execution_origin_recent_idx": "the executions list filtered by origin",
        "execution_failed_recent_idx": "the overview's latest failures",
        "execution_retry_of_idx": "a chain's retries, and the FK's SET_NULL",
        "execution_rerun_of_idx": "a chain's reruns, and the FK's SET_NULL",
        "execution_requested_by_idx": "a user's delete (SET_NULL)",
        "jobs_execution_trigger_id_84043c4b": "a trigger's delete (SET_NULL)",
    },
    # Not on jobs_execution (which gains no index for the trends), but written by its
    # triggers on every result: each index here costs the recorder too.
    "jobs_minuterollup": {
        "jobs_minuterollup_pkey": "Django's id (deletes)",
        "one_minute_rollup_row": "the triggers' upsert key; a job's 24-hour series",
        "minute_rollup_bucket_idx": "the 24-hour counts' first hour; prune_rollup",
    },
    "jobs_hourrollup": {
        "jobs_hourrollup_pkey": "Django's id (deletes)",
        "one_hour_rollup_row": "the triggers' upsert key; a job's 7-day series",
        "hour_rollup_bucket_idx": "the overview's 24-hour counts and trends; prune_rollup",
    },
    "jobs_trigger": {
        "jobs_trigger_pkey": "every lookup by id",
        "trigger_due_idx": "SELECT_DUE_TRIGGERS and the node's sleep: due triggers by time",
        "jobs_trigger_job_id_75294936": "a job's triggers; SELECT_DUE_CELERY_TRIGGERS",
    },
}


def indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
        return {row[0] for row in cursor.fetchall()}


def plan(query: str, params=(), sorts: bool = False) -> str:
    """EXPLAIN of ``query`` with scans and sorts discouraged: on the (near empty) test
    tables the planner would otherwise scan and sort, or pick any index that is smallest."""
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in (
            "enable_seqscan",
            "enable_bitmapscan",
            *(() if sorts else ("enable_sort",)),
        ):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute("EXPLAIN " + query, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize("table", sorted(JUSTIFIED))
def test_every_index_of_the_hot_tables_is_justified(table):
    assert indexes(table) == set(JUSTIFIED[table])


def test_mostly_null_foreign_keys_are_indexed_only_where_set():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs_execution'"
        )
        defs = dict(cursor.fetchall())
    for column in ("retry_of_id", "rerun_of_id", "requested_by_id"):
        (name,) = [n for n, d in defs.items() if f"({column})" in d]
        assert f"WHERE ({column} IS NOT NULL)" in defs[name]
    assert not any(d.endswith("(job_id)") for d in defs.values()), "job_id indexed twice"


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        (claims.SELECT_PENDING, [True, 10], "execution_pending_idx"),
        (claims.SELECT_DUE_TRIGGERS, [10], "trigger_due_idx"),
        (
            "SELECT id FROM jobs_execution WHERE node = 'n' AND state IN ('dispatched', 'running')",
            [],
            "execution_unfinished_idx",
        ),
        ("SELECT id FROM jobs_execution WHERE retry_of_id = 1", [], "execution_retry_of_idx"),
        ("SELECT id FROM jobs_execution WHERE rerun_of_id = 1", [], "execution_rerun_of_idx"),
        (
            "SELECT id FROM jobs_execution WHERE requested_by_id IN (1, 2)",
            [],
            "execution_requested_by_idx",
        ),
        (
            "SELECT id FROM jobs_execution WHERE job_id IN (1, 2)",
            [],
            "execution_job_recent_idx",
        ),
        (
            "SELECT id FROM jobs_execution WHERE trigger_id IN (1, 2)",
            [],
            "jobs_execution_trigger_id_84043c4b",
        ),
        (
            "SELECT id FROM jobs_execution WHERE job_id = 1 ORDER BY created_at DESC LIMIT 50",
            [],
            "execution_job_recent_idx",
        ),
        (
            "SELECT id FROM jobs_execution ORDER BY created_at DESC, id DESC LIMIT 50",
            [],
            "execution_recent_idx",
        ),
        (
            "SELECT id FROM jobs_execution WHERE state IN ('failed', 'timed_out', 'abandoned')"
            " ORDER BY created_at DESC, id DESC LIMIT 10",
            [],
            "execution_failed_recent_idx",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and value.endswith("idx") else None,
)
def test_the_named_query_uses_its_index(query, params, index):
    assert index in plan(query, params)


def bitmap_plan(query: str, params=()) -> str:
    """EXPLAIN of ``query`` with only bitmap scans allowed: a GIN index answers only those."""
    with transaction.atomic(), connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_indexscan", "enable_indexonlyscan"):
            cursor.execute(f"SET LOCAL {setting} = off")
        cursor.execute("EXPLAIN " + query, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def list_query(**filters) -> tuple[str, tuple]:
    """The executions list's own SQL for these filters (jobs.queries.filter_executions)."""
    return queries.filter_executions(**filters).values("id").query.sql_with_params()


def test_a_text_search_reads_both_trigram_indexes():
    found = bitmap_plan(*list_query(q="connection refused"))
    assert "execution_error_trgm_idx" in found
    assert "execution_args_trgm_idx" in found
    assert "BitmapOr" in found


def test_a_node_prefix_is_a_range_of_the_node_index():
    sql, params = list_query(node="worker-1")
    found = plan(sql, params)
    assert "execution_node_prefix_idx" in found
    assert "~>=~" in found  # the prefix became an index range, not a filter


def test_the_node_filter_still_reads_its_index_newest_first():
    query = (
        "SELECT id FROM jobs_execution WHERE node = 'n' ORDER BY created_at DESC, id DESC LIMIT 50"
    )
    assert "execution_node_prefix_idx" in plan(query)


def test_the_trend_reads_use_their_indexes():
    counts = plan(trends.STATE_COUNTS, {"hours": 24})
    assert "minute_rollup_bucket_idx" in counts and "hour_rollup_bucket_idx" in counts
    # The unfinished runs and the first minute: any index of jobs_execution (on these
    # near-empty tables the planner takes the smallest), never a scan of it.
    assert "Seq Scan" not in counts
    series = trends.SERIES.format(table="jobs_hourrollup", job_filter="AND r.job_id = 1")
    params = {"bin": "1 hour", "origin": trends.BIN_ORIGIN, "start": "2026-01-01"}
    # A job's series: on these near-empty tables the planner may take either index; both
    # bound the read to the window (with real statistics the job's own key wins).
    assert re.search(r"Index Scan using (one_hour_rollup_row|hour_rollup_bucket_idx)",
                     plan(series, params))  # fmt: skip
    every_job = trends.SERIES.format(table="jobs_hourrollup", job_filter="")
    assert "hour_rollup_bucket_idx" in plan(every_job, params)
    # Newest first by (created_at, id): the job's index gives created_at, an incremental
    # sort of equal times the id.
    recent = plan(trends.RECENT_RUNS, {"ids": [1, 2], "n": 50}, sorts=True)
    assert "execution_job_recent_idx" in recent
    assert "minute_rollup_bucket_idx" in plan(history.PRUNE_MINUTE_ROLLUP, {"hours": 48})
    assert "hour_rollup_bucket_idx" in plan(history.PRUNE_HOUR_ROLLUP, {"days": 90})
