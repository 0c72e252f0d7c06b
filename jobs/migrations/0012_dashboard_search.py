"""Finding failures on the executions list (issue 12): text search and node prefixes.

- pg_trgm, and two trigram GIN indexes for ``q`` (ILIKE '%text%' over the error and the
  arguments, jobs/search.py); the error one only over rows that have an error.
- The node index is rebuilt with varchar_pattern_ops, so a node prefix (LIKE 'node-1%')
  is an index range, as equality was.

Every index is built CONCURRENTLY (writes go on meanwhile), the new node index before
the old one goes, so a large history is never without one.
"""

import django.contrib.postgres.indexes
from django.contrib.postgres.operations import (
    AddIndexConcurrently,
    RemoveIndexConcurrently,
    TrigramExtension,
)
from django.db import migrations, models

import jobs.search


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("jobs", "0011_lean_execution_indexes"),
    ]

    operations = [
        TrigramExtension(),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                django.contrib.postgres.indexes.OpClass(
                    models.F("node"), name="varchar_pattern_ops"
                ),
                models.OrderBy(models.F("created_at"), descending=True),
                models.OrderBy(models.F("id"), descending=True),
                name="execution_node_prefix_idx",
            ),
        ),
        RemoveIndexConcurrently(
            model_name="execution",
            name="execution_node_recent_idx",
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.indexes.OpClass(models.F("error"), name="gin_trgm_ops"),
                condition=models.Q(("error", ""), _negated=True),
                name="execution_error_trgm_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=django.contrib.postgres.indexes.GinIndex(
                django.contrib.postgres.indexes.OpClass(
                    jobs.search.ArgumentsText(), name="gin_trgm_ops"
                ),
                name="execution_args_trgm_idx",
            ),
        ),
    ]
