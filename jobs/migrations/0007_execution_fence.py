from django.db import migrations, models

# One sequence for every start of every run: a token drawn later is always larger, so a
# downstream system that remembers the largest token it has seen can refuse a stale runner.
CREATE_SEQUENCE = "CREATE SEQUENCE jobs_execution_fence_seq AS bigint"
DROP_SEQUENCE = "DROP SEQUENCE jobs_execution_fence_seq"


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0006_celery_executor"),
    ]

    operations = [
        migrations.AddField(
            model_name="execution",
            name="fence",
            field=models.BigIntegerField(
                blank=True,
                help_text="Fencing token: drawn from one sequence each time a node or worker "
                "starts the run, so whoever holds the run now has a larger one than anyone "
                "before.",
                null=True,
            ),
        ),
        migrations.RunSQL(CREATE_SEQUENCE, DROP_SEQUENCE),
    ]
