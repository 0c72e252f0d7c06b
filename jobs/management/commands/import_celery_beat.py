"""Import django-celery-beat's periodic tasks as Celery-executor jobs:
`import_celery_beat --database-url URL [--dry-run]`.

The mapping, and what cannot be mapped, is in jobs/celery_beat_import.py.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs import celery_beat_import
from jobs.models import database_now


class Command(BaseCommand):
    help = (
        "Read django-celery-beat's PeriodicTask rows (crontab, interval and clocked "
        "schedules) from another database, read-only, and create a Celery-executor job "
        "with one trigger for each; list what is skipped, and why, and what changes."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database-url",
            required=True,
            help="The database django-celery-beat uses, e.g. postgres://user@host/db.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the plan; create nothing."
        )
        parser.add_argument(
            "--default-queue",
            default=settings.CELERY_TASK_DEFAULT_QUEUE,
            help="The queue of tasks that name none (default: %(default)s).",
        )

    def handle(self, *args, database_url: str, dry_run: bool, default_queue: str, **options):
        try:
            rows = celery_beat_import.read_periodic_tasks(database_url)
        except celery_beat_import.SourceError as e:
            raise CommandError(f"django-celery-beat database: {e}") from None
        mapped = celery_beat_import.plan(rows, database_now(), default_queue)
        for item in mapped:
            label = f"{item.name!r} (PeriodicTask #{item.task_id})"
            if item.skip_reason:
                self.stdout.write(f"skip {label}: {item.skip_reason}")
                continue
            self.stdout.write(f"import {label}: {item.describe()}")
            for note in item.notes:
                self.stdout.write(f"    note: {note}")
        count = sum(1 for item in mapped if not item.skip_reason)
        skipped = len(mapped) - count
        if dry_run:
            self.stdout.write(f"Dry run: would import {count}, skip {skipped}; nothing created.")
            return
        celery_beat_import.import_tasks(mapped)
        self.stdout.write(f"Imported {count}, skipped {skipped}.")
