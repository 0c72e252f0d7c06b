"""The rollup triggers of 0013 compute each changed run's contribution once per statement.

Their contribution CTE was inlined into the aggregate that reads it, so the lag slot,
duration and lag of every row were computed again for each of the 13 lag-slot sums and
the other aggregates that use them. Materialized, they are computed once. A recorder's
write of 100 finished runs (durable server, one connection, three alternated rounds)
took 1.01-1.07 times as long as the claim's insert of the same round, against 1.15-1.30
inlined; one-run writes (a Celery worker's) did not change.
"""

import importlib

from django.db import migrations

rollup = importlib.import_module("jobs.migrations.0013_dashboard_rollup")

# 0013's two trigger functions (what precedes its CREATE TRIGGER statements), replaced.
INLINED = rollup.TRIGGERS.split("CREATE TRIGGER")[0].replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
)
MATERIALIZED = INLINED.replace("WITH contribution AS (", "WITH contribution AS MATERIALIZED (")
# Two upserts (minutes, hours) in each of the two functions.
assert MATERIALIZED.count("WITH contribution AS MATERIALIZED (") == 4


class Migration(migrations.Migration):
    dependencies = [("jobs", "0013_dashboard_rollup")]

    operations = [migrations.RunSQL(MATERIALIZED, INLINED)]
