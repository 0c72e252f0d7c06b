"""Indexes for the executions page's node, state and origin filters and the overview."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY: nodes keep inserting executions while the indexes build.
    atomic = False

    dependencies = [("jobs", "0004_alter_execution_options_alter_job_options")]

    operations = [
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                fields=["node", "-created_at", "-id"], name="execution_node_recent_idx"
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=~models.Q(state="succeeded"),
                fields=["state", "-created_at", "-id"],
                name="execution_state_recent_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=~models.Q(origin="schedule"),
                fields=["origin", "-created_at", "-id"],
                name="execution_origin_recent_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=models.Q(state__in=["failed", "timed_out", "abandoned"]),
                fields=["-created_at", "-id"],
                name="execution_failed_recent_idx",
            ),
        ),
    ]
