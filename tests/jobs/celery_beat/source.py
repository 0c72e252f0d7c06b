"""A django-celery-beat database, made by django-celery-beat itself, for the import tests.

Run with django-celery-beat on the path (tests/jobs/test_import_celery_beat.py does):

    python -m tests.jobs.celery_beat.source URL WHEN[,WHEN...]

It creates django-celery-beat's tables in the database at URL with its own migrations,
adds the periodic tasks below through its own models, and prints, as JSON, the first fire
time after each WHEN of every crontab task, computed by django-celery-beat itself.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dj_database_url
import django
from django.conf import settings

# Crontabs on which celery and this scheduler agree (one of day of month and day of week
# left as "*"), in zones with and without DST: (name, minute, hour, dom, month, dow, tz).
AGREEING_CRONTABS = [
    ("every 15 minutes", "*/15", "*", "*", "*", "*", "UTC"),
    ("nightly in London", "0", "2", "*", "*", "*", "Europe/London"),
    ("weekdays in New York", "30", "9", "*", "*", "1-5", "America/New_York"),
    ("first of the month", "0", "0", "1", "*", "*", "UTC"),
    ("every 6 hours in Kolkata", "0", "*/6", "*", "*", "*", "Asia/Kolkata"),
    ("sundays in June", "5", "4", "*", "6", "0", "Australia/Sydney"),
]


def main(url: str, whens: list[datetime]) -> dict:
    settings.configure(
        INSTALLED_APPS=["django_celery_beat"],
        DATABASES={"default": dj_database_url.parse(url)},
        USE_TZ=True,
        TIME_ZONE="UTC",
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    def crontab(minute, hour, dom, month, dow, tz):
        return CrontabSchedule.objects.create(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
            day_of_week=dow, timezone=ZoneInfo(tz),
        )  # fmt: skip

    first_fires = {}
    for name, *fields, tz in AGREEING_CRONTABS:
        schedule = crontab(*fields, tz)
        PeriodicTask.objects.create(name=name, task="proj.tasks.tick", crontab=schedule)
        first_fires[name] = [
            schedule.due_start_time(when, ZoneInfo(tz)).astimezone(UTC).isoformat()
            for when in whens
        ]

    now = datetime.now(UTC)
    every_minute = crontab("*", "*", "*", "*", "*", "UTC")
    ten_minutes = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    an_hour = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.create(
        name="every field", task="proj.tasks.report", crontab=every_minute,
        args='[1, "two"]', kwargs='{"region": "eu"}', queue="reports", enabled=False,
        description="The report", start_time=now + timedelta(days=1),
        expires=now + timedelta(days=30),
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="unroutable", task="proj.tasks.route", crontab=every_minute, exchange="ex",
        routing_key="rk", priority=5, headers='{"trace": "1"}', expire_seconds=60,
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="every 10 minutes", task="proj.tasks.poll", interval=ten_minutes,
        last_run_at=datetime(2026, 1, 1, 0, 3, tzinfo=UTC),
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="one-off hourly", task="proj.tasks.once", interval=an_hour, one_off=True,
        start_time=datetime(2031, 1, 1, 0, 30, tzinfo=UTC),
    )  # fmt: skip
    clocked = ClockedSchedule.objects.create(clocked_time=datetime(2031, 5, 4, 3, 2, tzinfo=UTC))
    PeriodicTask.objects.create(name="clocked", task="proj.tasks.at", clocked=clocked, one_off=True)
    sunset = SolarSchedule.objects.create(event="sunset", latitude=51.5, longitude=-0.12)
    PeriodicTask.objects.create(name="at sunset", task="proj.tasks.lights", solar=sunset)
    PeriodicTask.objects.create(
        name="friday the 13th", task="proj.tasks.luck",
        crontab=crontab("0", "0", "13", "*", "5", "UTC"),
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="half a second", task="proj.tasks.fast",
        interval=IntervalSchedule.objects.create(every=500000, period="microseconds"),
    )  # fmt: skip
    PeriodicTask.objects.create(
        name="bad args", task="proj.tasks.x", crontab=every_minute, args="not json"
    )
    PeriodicTask.objects.create(
        name="bad minute", task="proj.tasks.x", crontab=crontab("61", "*", "*", "*", "*", "UTC")
    )
    return first_fires


if __name__ == "__main__":
    whens = [datetime.fromisoformat(when) for when in sys.argv[2].split(",")]
    print(json.dumps(main(sys.argv[1], whens)))
