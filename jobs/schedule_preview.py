"""A trigger's schedule as the admin previews it: in words, and its next fire times.

The same facts for a saved trigger (the admin page as first shown) and for a trigger
form being typed (the admin's preview endpoint, asked by jobs/static/jobs/trigger_form.js
while the schedule changes, before anything is saved). Nothing here writes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from jobs import schedule
from jobs.describe import describe_schedule, local_text, observes_dst, utc_text
from jobs.models import Trigger

UPCOMING_FIRES = 5

FIXED_TIME_NOTE = (
    "Fixed time: across DST changes it fires once per matching local time; a time skipped "
    "in spring fires just after the gap, a time repeated in autumn fires at its first "
    "occurrence."
)
WILDCARD_NOTE = (
    "Wildcard: it follows elapsed time across DST changes; skipped local times do not fire "
    "and a repeated hour fires again."
)


def trigger_preview(trigger: Trigger, now: datetime) -> dict:
    """The schedule in words (``lines``), the next fire times (``fires``: local and UTC
    text), and whether the zone is UTC (one time column then), for the admin."""
    try:
        zone = trigger.tzinfo()
    except Exception:  # an invalid zone on a form being corrected
        zone = None
    lines = [describe_schedule(trigger)]
    if zone is not None and trigger.kind == Trigger.Kind.CRON and trigger.cron:
        lines.append(_dst_note(trigger, zone, now.year))
    window = [
        f"{word} {_when_text(when, zone)}"
        for word, when in (("from", trigger.start_at), ("until", trigger.end_at))
        if when
    ]
    if window:
        lines.append(f"Window: {' '.join(window)}.")
    context = {
        "lines": [line for line in lines if line],
        "zone": trigger.timezone,
        "zone_is_utc": zone is not None and _is_utc(zone, now),
        "fires": [],
        "problem": "",
        "paused": trigger.paused or bool(trigger.job_id and trigger.job.paused),
    }
    try:
        fires = schedule.next_fire_times(trigger, now, UPCOMING_FIRES)
    except ValueError as e:
        context["problem"] = str(e)
        return context
    if not fires:
        context["problem"] = (
            "None: the trigger has finished (its window or one-off time has passed)."
        )
    context["fires"] = [(local_text(when, zone), utc_text(when)) for when in fires]
    return context


def form_preview(form, now: datetime) -> dict:
    """trigger_preview of a bound trigger form, or its errors (label, message) when the
    schedule typed so far cannot be read."""
    if not form.is_valid():
        errors = []
        for name, messages in form.errors.items():
            field = form.fields.get(name)
            label = (field.label if field and field.label else name).replace("_", " ")
            for message in messages:
                errors.append(("" if name == "__all__" else label, message))
        return {"errors": errors}
    return trigger_preview(form.instance, now)


def _dst_note(trigger: Trigger, zone, year: int) -> str:
    try:
        fixed = schedule.is_fixed_time(trigger.cron)
    except Exception:  # an invalid cron on a form being corrected
        return ""
    if not observes_dst(zone, year):
        return ""
    return FIXED_TIME_NOTE if fixed else WILDCARD_NOTE


def _is_utc(zone, now: datetime) -> bool:
    # "UTC", "Etc/UTC", "Etc/Zulu"...: a zone that is UTC all year needs no second column.
    return all(
        datetime(now.year, month, 1, tzinfo=zone).utcoffset().total_seconds() == 0
        and datetime(now.year, month, 1, tzinfo=zone).tzname() in ("UTC", "Z", "Zulu")
        for month in (1, 7)
    )


def _when_text(when: datetime, zone) -> str:
    if zone is None or _is_utc(zone, when):
        return utc_text(when)
    return f"{local_text(when, zone)} ({when.astimezone(UTC):%H:%M:%S} UTC)"
