"""The rollup behind the dashboard's trends and 24-hour counts (jobs.models.MinuteRollup
and HourRollup), kept by triggers on jobs_execution, and filled from the history there is."""

import django.db.models.deletion
from django.db import migrations, models

# A copy, as migrations must not change with the code: jobs.models.LAG_BUCKET_BOUNDS_MS.
LAG_BUCKET_BOUNDS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
FINAL_STATES = "('succeeded', 'failed', 'timed_out', 'cancelled', 'abandoned', 'skipped')"
CHANGES = (
    "(job_id, created_at, state, started_at, finished_at, dispatched_at, scheduled_for, origin)"
)

# Slot 1 is under the first bound, slot k+1 from bound k up to the next, the last slot
# everything from the last bound up (width_bucket takes lower bounds; NULL stays NULL).
BOUNDS = ", ".join(str(b) for b in LAG_BUCKET_BOUNDS_MS)
LAG_BUCKET_FUNCTION = f"""
CREATE FUNCTION jobs_lag_bucket(lag_ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT width_bucket(lag_ms, ARRAY[{BOUNDS}]::double precision[]) + 1 $$
"""

SLOTS = range(len(LAG_BUCKET_BOUNDS_MS) + 1)
LAG_COLUMNS = ", ".join(f"lag_{i}" for i in SLOTS)
LAG_SUMS = ",\n        ".join(
    f"coalesce(sum(sign) FILTER (WHERE lag_slot = {i + 1}), 0)" for i in SLOTS
)
LAG_ADDS = ",\n        ".join(f"lag_{i} = r.lag_{i} + excluded.lag_{i}" for i in SLOTS)


def rollup_upsert(changes: str, table: str, grain: str) -> str:
    """Adds ``changes`` (rows of execution columns and a sign: +1 adds a row's
    contribution, -1 takes it back) to ``table``, the rows per ``grain`` of each job.

    Only rows in a final state count. The upsert takes the rollup rows' locks in key order
    (ORDER BY), so two statements touching the same rows wait for each other instead of
    deadlocking; two runs of different jobs never touch the same row.
    """
    return f"""
    WITH contribution AS (
        SELECT c.job_id, c.state, c.sign,
               date_trunc('{grain}', c.created_at, 'UTC') AS bucket,
               extract(epoch FROM c.finished_at - c.started_at) * 1000 AS duration_ms,
               lag.ms AS lag_ms,
               jobs_lag_bucket(lag.ms) AS lag_slot
        FROM ({changes}) c
        CROSS JOIN LATERAL (
            SELECT CASE WHEN c.origin = 'schedule' AND c.dispatched_at IS NOT NULL
                        THEN extract(epoch FROM c.dispatched_at - c.scheduled_for) * 1000
                   END::double precision AS ms
        ) lag
        WHERE c.state IN {FINAL_STATES}
    )
    INSERT INTO {table} AS r (
        job_id, bucket, state, runs, timed_runs, duration_ms_sum, duration_ms_max,
        lag_fires, lag_ms_sum, lag_ms_max, {LAG_COLUMNS}
    )
    SELECT job_id, bucket, state,
        sum(sign),
        coalesce(sum(sign) FILTER (WHERE duration_ms IS NOT NULL), 0),
        coalesce(sum(sign * duration_ms), 0),
        max(duration_ms) FILTER (WHERE sign > 0),
        coalesce(sum(sign) FILTER (WHERE lag_ms IS NOT NULL), 0),
        coalesce(sum(sign * lag_ms), 0),
        max(lag_ms) FILTER (WHERE sign > 0),
        {LAG_SUMS}
    FROM contribution
    GROUP BY job_id, bucket, state
    ORDER BY job_id, bucket, state
    ON CONFLICT (job_id, bucket, state) DO UPDATE SET
        runs = r.runs + excluded.runs,
        timed_runs = r.timed_runs + excluded.timed_runs,
        duration_ms_sum = r.duration_ms_sum + excluded.duration_ms_sum,
        duration_ms_max = greatest(r.duration_ms_max, excluded.duration_ms_max),
        lag_fires = r.lag_fires + excluded.lag_fires,
        lag_ms_sum = r.lag_ms_sum + excluded.lag_ms_sum,
        lag_ms_max = greatest(r.lag_ms_max, excluded.lag_ms_max),
        {LAG_ADDS}
    """


COLUMNS = "job_id, created_at, state, started_at, finished_at, dispatched_at, scheduled_for, origin"

INSERTED = f"SELECT {COLUMNS}, 1 AS sign FROM new_rows"

# An update moves a row's contribution only when a column it depends on changed: the
# frequent updates that change none (progress, heartbeats, a Celery publish) add nothing.
UPDATED = f"""
    SELECT moved.*
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    CROSS JOIN LATERAL (VALUES
        (n.job_id, n.created_at, n.state, n.started_at, n.finished_at, n.dispatched_at,
         n.scheduled_for, n.origin, 1),
        (o.job_id, o.created_at, o.state, o.started_at, o.finished_at, o.dispatched_at,
         o.scheduled_for, o.origin, -1)
    ) AS moved ({COLUMNS}, sign)
    WHERE (o.job_id, o.created_at, o.state, o.started_at, o.finished_at, o.dispatched_at,
           o.scheduled_for, o.origin)
          IS DISTINCT FROM
          (n.job_id, n.created_at, n.state, n.started_at, n.finished_at, n.dispatched_at,
           n.scheduled_for, n.origin)
"""


def both(changes: str) -> str:
    """Both tables, minutes first: every writer takes their row locks in one order."""
    return (
        rollup_upsert(changes, "jobs_minuterollup", "minute")
        + ";\n"
        + rollup_upsert(changes, "jobs_hourrollup", "hour")
        + ";\n"
    )


# Statement-level triggers with transition tables: one rollup statement per statement
# on jobs_execution however many rows it wrote, and every writer is caught (the claim's
# insert, the recorder, the Celery worker, recovery, cancel, misfire skips, the admin).
# Deleting executions (pruning, a job's delete) is not undone: the rollup keeps its own
# retention, and a job's delete removes its rollup rows with it.
TRIGGERS = f"""
CREATE FUNCTION jobs_execution_rollup_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Most inserts are pending or dispatched runs: nothing to add, and no upsert to plan.
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state IN {FINAL_STATES}) THEN
        RETURN NULL;
    END IF;
{both(INSERTED)}
    RETURN NULL;
END
$fn$;

CREATE FUNCTION jobs_execution_rollup_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Most updates move a run between unfinished states (claimed, started) or report
    -- progress: unless a final state is left or reached, nothing moves.
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state IN {FINAL_STATES})
       AND NOT EXISTS (SELECT 1 FROM old_rows WHERE state IN {FINAL_STATES}) THEN
        RETURN NULL;
    END IF;
{both(UPDATED)}
    RETURN NULL;
END
$fn$;

CREATE TRIGGER execution_rollup_insert AFTER INSERT ON jobs_execution
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_execution_rollup_insert();

CREATE TRIGGER execution_rollup_update AFTER UPDATE ON jobs_execution
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_execution_rollup_update();
"""

# The history so far. The lock (the one CREATE TRIGGER takes anyway) keeps writers out
# from before the backfill reads until this migration commits, so no row is counted
# twice or missed; writers wait for the backfill (about 40 s per million rows on 2 cores).
BACKFILL = (
    "LOCK TABLE jobs_execution IN SHARE ROW EXCLUSIVE MODE;\n"
    + TRIGGERS
    + both(f"SELECT {COLUMNS}, 1 AS sign FROM jobs_execution")
)

DROP = """
DROP TRIGGER IF EXISTS execution_rollup_update ON jobs_execution;
DROP TRIGGER IF EXISTS execution_rollup_insert ON jobs_execution;
DROP FUNCTION IF EXISTS jobs_execution_rollup_update();
DROP FUNCTION IF EXISTS jobs_execution_rollup_insert();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0012_dashboard_search"),
    ]

    operations = [
        migrations.CreateModel(
            name="HourRollup",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("bucket", models.DateTimeField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("dispatched", "Dispatched"),
                            ("running", "Running"),
                            ("succeeded", "Succeeded"),
                            ("failed", "Failed"),
                            ("timed_out", "Timed Out"),
                            ("cancelled", "Cancelled"),
                            ("abandoned", "Abandoned"),
                            ("skipped", "Skipped"),
                        ],
                        max_length=12,
                    ),
                ),
                ("runs", models.IntegerField(default=0)),
                ("timed_runs", models.IntegerField(default=0)),
                ("duration_ms_sum", models.FloatField(default=0)),
                ("duration_ms_max", models.FloatField(null=True)),
                ("lag_fires", models.IntegerField(default=0)),
                ("lag_ms_sum", models.FloatField(default=0)),
                ("lag_ms_max", models.FloatField(null=True)),
                ("lag_0", models.IntegerField(default=0)),
                ("lag_1", models.IntegerField(default=0)),
                ("lag_2", models.IntegerField(default=0)),
                ("lag_3", models.IntegerField(default=0)),
                ("lag_4", models.IntegerField(default=0)),
                ("lag_5", models.IntegerField(default=0)),
                ("lag_6", models.IntegerField(default=0)),
                ("lag_7", models.IntegerField(default=0)),
                ("lag_8", models.IntegerField(default=0)),
                ("lag_9", models.IntegerField(default=0)),
                ("lag_10", models.IntegerField(default=0)),
                ("lag_11", models.IntegerField(default=0)),
                ("lag_12", models.IntegerField(default=0)),
                (
                    "job",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="jobs.job",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["bucket"], name="hour_rollup_bucket_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("job", "bucket", "state"), name="one_hour_rollup_row"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="MinuteRollup",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("bucket", models.DateTimeField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("dispatched", "Dispatched"),
                            ("running", "Running"),
                            ("succeeded", "Succeeded"),
                            ("failed", "Failed"),
                            ("timed_out", "Timed Out"),
                            ("cancelled", "Cancelled"),
                            ("abandoned", "Abandoned"),
                            ("skipped", "Skipped"),
                        ],
                        max_length=12,
                    ),
                ),
                ("runs", models.IntegerField(default=0)),
                ("timed_runs", models.IntegerField(default=0)),
                ("duration_ms_sum", models.FloatField(default=0)),
                ("duration_ms_max", models.FloatField(null=True)),
                ("lag_fires", models.IntegerField(default=0)),
                ("lag_ms_sum", models.FloatField(default=0)),
                ("lag_ms_max", models.FloatField(null=True)),
                ("lag_0", models.IntegerField(default=0)),
                ("lag_1", models.IntegerField(default=0)),
                ("lag_2", models.IntegerField(default=0)),
                ("lag_3", models.IntegerField(default=0)),
                ("lag_4", models.IntegerField(default=0)),
                ("lag_5", models.IntegerField(default=0)),
                ("lag_6", models.IntegerField(default=0)),
                ("lag_7", models.IntegerField(default=0)),
                ("lag_8", models.IntegerField(default=0)),
                ("lag_9", models.IntegerField(default=0)),
                ("lag_10", models.IntegerField(default=0)),
                ("lag_11", models.IntegerField(default=0)),
                ("lag_12", models.IntegerField(default=0)),
                (
                    "job",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="jobs.job",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["bucket"], name="minute_rollup_bucket_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("job", "bucket", "state"), name="one_minute_rollup_row"
                    )
                ],
            },
        ),
        migrations.RunSQL(LAG_BUCKET_FUNCTION, "DROP FUNCTION jobs_lag_bucket(double precision)"),
        migrations.RunSQL(BACKFILL, DROP),
    ]
