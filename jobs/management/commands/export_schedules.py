"""Write the database's jobs and triggers as a schedule file: `export_schedules [-o FILE]`.

The output is what apply_schedules reads, so exporting and then applying the result with
--dry-run reports no changes (only, the first time, that the jobs become managed by it).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from jobs import schedule_files
from jobs.models import Job, database_now

HEADER = """Jobs and triggers of the clustered scheduler, exported {when:%Y-%m-%d %H:%M:%S} UTC.
Apply with: python manage.py apply_schedules FILE [--dry-run] [--prune]
A field left out takes the admin's default. Format: README.md, "Schedules as code"."""


class Command(BaseCommand):
    help = "Write every job (or those one schedule file manages) in the apply_schedules format."

    def add_arguments(self, parser):
        parser.add_argument(
            "-o", "--output", type=Path, help="Write to this file instead of standard output."
        )
        parser.add_argument(
            "--managed-by", metavar="SOURCE", help="Only the jobs managed by this schedule file."
        )

    def handle(self, *args, output: Path | None, managed_by: str | None, **options):
        # One snapshot: the jobs and their triggers as of the same moment.
        with transaction.atomic():
            jobs = Job.objects.prefetch_related("triggers").order_by("name")
            if managed_by is not None:
                jobs = jobs.filter(managed_by=managed_by)
            try:
                text = schedule_files.write(jobs, HEADER.format(when=database_now()))
            except schedule_files.ScheduleFileError as e:
                raise CommandError("\n".join(e.problems)) from None
        if output is None:
            self.stdout.write(text, ending="")
        else:
            output.write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {jobs.count()} jobs to {output}.")
