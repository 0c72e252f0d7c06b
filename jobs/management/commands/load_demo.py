from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from jobs.models import Job, Trigger, database_now

DEMO_JOBS = [
    # name, target, job options, trigger options
    ("demo: echo every 10 seconds", "demo.echo", {"kwargs": {"hello": "world"}},
     {"kind": "interval", "interval": 10}),
    ("demo: every minute", "demo.echo", {"args": ["minute"]},
     {"kind": "cron", "cron": "* * * * *"}),
    ("demo: every 15 seconds (six-field cron)", "demo.noop", {},
     {"kind": "cron", "cron": "*/15 * * * * *"}),
    ("demo: nightly report at 02:00 London time", "demo.echo", {"args": ["report"]},
     {"kind": "cron", "cron": "0 0 2 * * *", "timezone": "Europe/London"}),
    ("demo: slow job with recovery", "demo.sleep",
     {"kwargs": {"seconds": 5}, "recover": True, "timeout": 60},
     {"kind": "interval", "interval": 30}),
    ("demo: failing job with retries", "demo.fail",
     {"kwargs": {"message": "demo failure"}, "max_attempts": 3, "retry_backoff": 2},
     {"kind": "cron", "cron": "*/5 * * * *", "misfire_policy": "skip"}),
]  # fmt: skip


class Command(BaseCommand):
    help = "Create an admin login (printed) and a few demo jobs. Safe to run again."

    def handle(self, *args, **options):
        self._admin_login()
        with transaction.atomic():
            created = [entry[0] for entry in DEMO_JOBS if self._demo_job(*entry)]
            if not Job.objects.filter(name="demo: one-off a minute from now").exists():
                job = Job.objects.create(
                    name="demo: one-off a minute from now", target="demo.echo", args=["once"]
                )
                Trigger.objects.create(
                    job=job, kind="once", run_at=database_now() + timedelta(minutes=1)
                )
                created.append(job.name)
        self.stdout.write(f"demo jobs: {len(created)} created, {Job.objects.count()} in all")

    def _demo_job(self, name, target, job_options, trigger_options) -> bool:
        if Job.objects.filter(name=name).exists():
            return False
        job = Job.objects.create(name=name, target=target, **job_options)
        Trigger.objects.create(job=job, **trigger_options)
        return True

    def _admin_login(self) -> None:
        # The generated password is kept under .data/ so every `make run` can print it.
        # An existing user's password is never changed: this may be a shared database
        # reached through DATABASE_URL, whose admin is not ours to reset.
        User = get_user_model()
        password_file = settings.BASE_DIR / ".data" / "admin-password"
        user = User.objects.filter(username="admin").first()
        if user is None:
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@example.com", password)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            self.stdout.write(f"admin login: username admin, password {password} (new)")
            return
        password = password_file.read_text().strip() if password_file.exists() else ""
        if password and user.check_password(password):
            self.stdout.write(f"admin login: username admin, password {password}")
        else:
            # Created elsewhere, or its password was changed since: we do not know it.
            self.stdout.write(
                "admin login: username admin, password unchanged (not the one in "
                f"{password_file}; set one with: python manage.py changepassword admin)"
            )
