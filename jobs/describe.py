"""Schedules in words, for people (the admin, the dashboard, the API)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cron_descriptor import Options, get_description

from controlplane import durations
from jobs.models import Trigger

_CRON_OPTIONS = Options()
_CRON_OPTIONS.use_24hour_time_format = True


# --- Schedules in words ------------------------------------------------------------------


def describe_cron(expr: str) -> str:
    """A cron expression in words; six fields have seconds first, as in Spring and Quartz.

    cron-descriptor guesses what six fields mean (seconds first, unless the last field
    looks like a year or a day field is "?"), so it is always given seven fields,
    seconds to year, and has nothing to guess. Returns "" for what it cannot describe.
    """
    parts = expr.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        return ""
    try:
        text = get_description(" ".join([*parts, "*"]), _CRON_OPTIONS)
    except Exception:  # cron-descriptor raises several unrelated types for odd input
        return ""
    day_of_month, day_of_week = parts[3], parts[5]
    if day_of_month != "*" and day_of_month.startswith("*") and not day_of_week.startswith("*"):
        # Vixie cron (and cronsim) match day-of-month OR day-of-week only when neither
        # field starts with "*"; "*/2" with "1" means odd days that are Mondays.
        # cron-descriptor says "or" whenever day-of-month is not exactly "*".
        text = text.replace(", or on ", ", only on ")
    return text


def observes_dst(zone: ZoneInfo, year: int) -> bool:
    return (
        datetime(year, 1, 1, tzinfo=zone).utcoffset()
        != datetime(year, 7, 1, tzinfo=zone).utcoffset()
    )


def utc_text(when: datetime) -> str:
    return f"{when.astimezone(UTC):%a %Y-%m-%d %H:%M:%S} UTC"


def local_text(when: datetime, zone) -> str:
    local = when.astimezone(zone)
    return f"{local:%a %Y-%m-%d %H:%M:%S} {local.tzname()}"


def describe_schedule(trigger: Trigger) -> str:
    """One line for people: when the trigger fires, in its time zone."""
    if trigger.kind == Trigger.Kind.CRON:
        text = describe_cron(trigger.cron or "") or f"cron {trigger.cron}"
        return f"{text} ({trigger.timezone} time)"
    if trigger.kind == Trigger.Kind.INTERVAL:
        if not trigger.interval:
            return "Every ? (no interval)"
        return f"Every {durations.duration(trigger.interval)}"
    if trigger.run_at is None:
        return "Once (no date-time)"
    try:
        zone = trigger.tzinfo()
    except Exception:  # an invalid zone on a form being corrected
        zone = UTC
    return f"Once, at {local_text(trigger.run_at, zone)}"
