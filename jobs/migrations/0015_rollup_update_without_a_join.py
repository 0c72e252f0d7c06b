"""The rollup's update trigger finds the changed rows without joining its two transition
tables.

0013's trigger paired each updated row's old and new version with a join on the id. The
trigger's plan is made once per connection, on the first statement it sees; when that
was a small one (one Celery result, one recorder write of a few runs), the join was a
nested loop, kept for every later statement of the connection. A recorder's write of
550 results then compared 550 x 550 pairs: in the scale bench's drain (100,000 runs due
at once, 2 nodes, durable server), the two upserts took 28.4 s of the results' 33.3 s
of statement time (pg_stat_statements). In psql, after a one-row update, an update of
550 results took 77 ms (14 ms with the trigger disabled), one of 1,100 took 262 ms.

The contribution of a row depends only on the columns listed in 0013's COLUMNS. So the
trigger counts each distinct set of those columns, +1 for every new version in a final
state and -1 for every old one, and keeps the sets whose count is not 0: an unchanged
row cancels out as before, a row that left or reached a final state or changed a column
is taken back and added, and the counting hashes or sorts, never compares every pair.
A one-result write (a Celery worker's) cost the database as much CPU as with the join:
365-425 us per statement against 415-420, three alternated rounds on a durable server
(with a test run sharing the machine).
"""

import importlib

from django.db import migrations

rollup = importlib.import_module("jobs.migrations.0013_dashboard_rollup")
materialized = importlib.import_module("jobs.migrations.0014_rollup_contribution_once")

# Only a final state counts: rows in none stay out. A count is the multiplier of its
# columns' contribution (sign) in the upserts.
FINAL = f"WHERE state IN {rollup.FINAL_STATES}"
CHANGED = f"""
    SELECT {rollup.COLUMNS}, sum(sign)::int AS sign FROM (
        SELECT {rollup.COLUMNS}, 1 AS sign FROM new_rows {FINAL}
        UNION ALL
        SELECT {rollup.COLUMNS}, -1 AS sign FROM old_rows {FINAL}
    ) versions
    GROUP BY {rollup.COLUMNS}
    HAVING sum(sign) <> 0
"""

# 0014's update function (the insert function has no join and stays as it is).
JOINED = materialized.MATERIALIZED[
    materialized.MATERIALIZED.index("CREATE OR REPLACE FUNCTION jobs_execution_rollup_update()") :
]
# Its two upserts (minutes, hours) read the changes.
assert JOINED.count(rollup.UPDATED) == 2
WITHOUT_JOIN = JOINED.replace(rollup.UPDATED, CHANGED)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0014_rollup_contribution_once")]

    operations = [migrations.RunSQL(WITHOUT_JOIN, JOINED)]
