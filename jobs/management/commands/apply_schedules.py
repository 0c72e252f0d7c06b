"""Make the database's jobs what a schedule file says: `apply_schedules FILE [--dry-run] [--prune]`.

The file format is in README.md ("Schedules as code") and jobs/schedule_files.py; what
applying does is in jobs/schedule_sync.py.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from jobs import schedule_files, schedule_sync


def source_name(path: Path) -> str:
    """How the file is named in `managed_by` and the audit log: its path from the current
    directory (the repository's root, say) when below it, else its absolute path."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


class Command(BaseCommand):
    help = (
        "Create, change, pause or delete jobs and their triggers so that the database "
        "matches a TOML schedule file, in one audited transaction. Prints the plan first."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The TOML schedule file.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Print what would change; change nothing."
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete the jobs this file managed and no longer lists (default: pause them).",
        )
        parser.add_argument(
            "--source",
            help="The name the jobs are marked as managed by (default: the file's path from "
            "the current directory). Keep it the same on every run.",
        )

    def handle(self, *args, file: Path, dry_run: bool, prune: bool, source, **options):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"Cannot read {file}: {e}") from None
        source = source or source_name(file)
        try:
            specs = schedule_files.read(text, source)
            plan = schedule_sync.apply(specs, source, prune=prune, dry_run=dry_run)
        except schedule_files.ScheduleFileError as e:
            for problem in e.problems:
                self.stderr.write(problem)
            count = len(e.problems)
            raise CommandError(
                f"{source}: {count} problem{'s' if count != 1 else ''}; nothing was applied."
            ) from None
        for step in plan.steps:
            self.stdout.write(f"{step.action} job {step.job!r}")
            for detail in step.details:
                self.stdout.write(f"    {detail}")
        if not plan.changes_anything:
            jobs = f"{len(specs)} job{'s' if len(specs) != 1 else ''}"
            self.stdout.write(f"{source}: no changes ({jobs} as the file says).")
            return
        verb = "Would apply" if dry_run else "Applied"
        self.stdout.write(f"{verb} {source}: {plan.summary()}.")
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
