"""The rollup's insert trigger fires only for rows inserted finished.

Migration 0013's statement-level insert trigger copied every inserted row into its
transition table, although the inserts of the hot path (a claim's fires: pending,
dispatched or running) add nothing to the rollup: a tenth of a claim's time on a durable
server. A row-level trigger with a WHEN clause costs nothing for those rows (the clause
is checked as the row is inserted; no event is queued). Rows inserted finished (a
misfire's skipped fire, an admin's or a seed's history) are added one by one; bulk
loads turn the trigger off and add their rows in one statement per table
(jobs.history.rollup_added_in_bulk).

Updates keep 0013's statement-level trigger: the recorder finishes a batch of runs in one
statement, which one rollup statement per table follows.
"""

import importlib

from django.db import migrations

rollup = importlib.import_module("jobs.migrations.0013_dashboard_rollup")

# The new row as the one row of changes rollup_upsert expects.
NEW_ROW = (
    "SELECT "
    + ", ".join(f"NEW.{column} AS {column}" for column in rollup.COLUMNS.split(", "))
    + ", 1 AS sign"
)

PER_ROW = f"""
DROP TRIGGER execution_rollup_insert ON jobs_execution;
DROP FUNCTION jobs_execution_rollup_insert();

CREATE FUNCTION jobs_execution_rollup_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
{rollup.both(NEW_ROW)}
    RETURN NULL;
END
$fn$;

CREATE TRIGGER execution_rollup_insert AFTER INSERT ON jobs_execution
    FOR EACH ROW WHEN (NEW.state IN {rollup.FINAL_STATES})
    EXECUTE FUNCTION jobs_execution_rollup_insert();
"""

PER_STATEMENT = f"""
DROP TRIGGER execution_rollup_insert ON jobs_execution;
DROP FUNCTION jobs_execution_rollup_insert();

CREATE FUNCTION jobs_execution_rollup_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE state IN {rollup.FINAL_STATES}) THEN
        RETURN NULL;
    END IF;
{rollup.both(rollup.INSERTED)}
    RETURN NULL;
END
$fn$;

CREATE TRIGGER execution_rollup_insert AFTER INSERT ON jobs_execution
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_execution_rollup_insert();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0013_dashboard_rollup"),
    ]

    operations = [
        migrations.RunSQL(PER_ROW, PER_STATEMENT),
    ]
