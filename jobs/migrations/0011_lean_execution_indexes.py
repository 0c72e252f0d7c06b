"""A leaner jobs_execution for the claim's insert and the recorder's updates.

- The job FK's own index goes: execution_job_recent_idx (job_id, created_at) leads with
  the same column and serves every lookup it did.
- retry_of, rerun_of and requested_by are NULL on almost every row (scheduled runs):
  their full indexes, which every insert and non-HOT update paid a NULL entry into, become
  partial (IS NOT NULL), which the FK lookups (col = x) still use.
- fillfactor 90 leaves room on each page so the updates that change no indexed column
  (progress, a Celery run's publish time and heartbeats) can be HOT.

The new indexes are built CONCURRENTLY (writes go on meanwhile) before the old ones are
dropped, so a large history never goes without one.
"""

import django.db.models.deletion
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("jobs", "0010_runview_cancel_permission"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=models.Q(("retry_of__isnull", False)),
                fields=["retry_of"],
                name="execution_retry_of_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=models.Q(("rerun_of__isnull", False)),
                fields=["rerun_of"],
                name="execution_rerun_of_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="execution",
            index=models.Index(
                condition=models.Q(("requested_by__isnull", False)),
                fields=["requested_by"],
                name="execution_requested_by_idx",
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="job",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="executions",
                to="jobs.job",
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="requested_by",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="rerun_of",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="The execution this one runs again (reruns and recoveries).",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="reruns",
                to="jobs.execution",
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="retry_of",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="The first attempt, for retries.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="retries",
                to="jobs.execution",
            ),
        ),
        migrations.RunSQL(
            "ALTER TABLE jobs_execution SET (fillfactor = 90)",
            "ALTER TABLE jobs_execution RESET (fillfactor)",
        ),
    ]
