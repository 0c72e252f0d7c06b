"""Schedule math: cron across DST, intervals, one-offs, windows, validation, misfires.

Every expected instant below was worked out by hand from the rules in DESIGN.md and the
zones' published transitions, not by running a library:

- Europe/London 2024: GMT->BST at 2024-03-31 01:00 UTC (01:00-02:00 local does not
  exist); BST->GMT at 2024-10-27 01:00 UTC (01:00-02:00 local happens twice).
- America/New_York 2024: EST->EDT at 2024-03-10 07:00 UTC (02:00-03:00 local does not
  exist); EDT->EST at 2024-11-03 06:00 UTC (01:00-02:00 local happens twice).
- Australia/Sydney 2024: AEDT(+11)->AEST(+10) at 2024-04-06 16:00 UTC (02:00-03:00 local
  on 7 April happens twice); AEST->AEDT at 2024-10-05 16:00 UTC (02:00-03:00 local on
  6 October does not exist).
- Asia/Kolkata is +05:30 all year.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from jobs import schedule
from jobs.schedule import (
    COALESCE_COUNT_CAP,
    FirePlan,
    is_fixed_time,
    next_fire_times,
    plan_fires,
    validate_cron,
    validate_timezone,
)

ROOT = Path(__file__).resolve().parents[2]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def trigger(**fields) -> SimpleNamespace:
    """A stand-in for jobs.Trigger with the model's defaults."""
    values = {
        "kind": "cron",
        "cron": "",
        "timezone": "UTC",
        "interval": None,
        "run_at": None,
        "start_at": None,
        "end_at": None,
        "misfire_policy": "fire_once",
        "misfire_grace": 60,
        "next_fire_at": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def cron(expr: str, zone: str = "UTC", **fields) -> SimpleNamespace:
    return trigger(kind="cron", cron=expr, timezone=zone, **fields)


# --- The module stands alone ------------------------------------------------------------


def test_module_imports_without_django():
    code = "import sys, jobs.schedule; assert 'django' not in sys.modules, 'django imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={}
    )
    assert result.returncode == 0, result.stderr


# --- Validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "*/15 * * * *",
        "30 2 * * *",
        "0 12 13 * FRI",
        "0 0 2 * * *",
        "*/10 * * * * *",
        "0 9 * * MON-FRI",
        "0 0 29 2 *",
        "0 0 L * *",
    ],
)
def test_validate_cron_accepts_five_and_six_field_expressions(expr):
    validate_cron(expr)


@pytest.mark.parametrize(
    ("expr", "count"), [("* * * *", 4), ("0 0 2 * * * *", 7), ("", 0), ("   ", 0)]
)
def test_validate_cron_rejects_a_wrong_number_of_fields_and_says_how_many(expr, count):
    with pytest.raises(
        ValueError, match=f"Expected 5 fields, or 6 with seconds first; got {count}"
    ):
        validate_cron(expr)


@pytest.mark.parametrize(
    ("expr", "field", "value"),
    [
        ("61 * * * *", "minute", "61"),
        ("0 24 * * *", "hour", "24"),
        ("0 0 * 13 *", "month", "13"),
        ("0 0 * * 9", "day-of-week", "9"),
        ("*/0 * * * *", "minute", "*/0"),
        ("60 0 2 * * *", "second", "60"),
        ("0 60 2 * * *", "minute", "60"),
        ("a b c d e", "minute", "a"),
        ("1,,2 * * * *", "minute", "1,,2"),
    ],
)
def test_validate_cron_names_the_bad_field_and_its_text(expr, field, value):
    with pytest.raises(ValueError) as error:
        validate_cron(expr)
    assert f"bad {field} field '{value}'" in str(error.value)


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_validate_cron_rejects_an_expression_that_never_matches(expr):
    with pytest.raises(ValueError, match="never matches"):
        validate_cron(expr)


def test_validate_cron_rejects_a_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        validate_cron(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["UTC", "Europe/London", "America/New_York", "Australia/Sydney", "Asia/Kolkata"]
)
def test_validate_timezone_accepts_iana_names(name):
    validate_timezone(name)


def test_validate_timezone_rejects_an_unknown_zone_with_a_clear_message():
    with pytest.raises(ValueError, match="Unknown time zone 'Mars/Base'"):
        validate_timezone("Mars/Base")


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "Europe/London ",
        "europe/london",
        "Europe",
        "/usr/share/zoneinfo/UTC",
        "../../etc/passwd",
        "Europe/../UTC",
        "UTC/",
        "zone.tab",
        "localtime",
        "Europe/London\x00",
        "A" * 300,
        None,
    ],
)
def test_validate_timezone_rejects_empty_names_paths_and_host_settings(name):
    with pytest.raises(ValueError, match="Unknown time zone"):
        validate_timezone(name)


@pytest.mark.parametrize(
    ("expr", "fixed"),
    [
        ("30 2 * * *", True),
        ("0 1 * * *", True),
        ("0 0 2 * * *", True),
        ("*/5 0 2 * * *", True),  # the seconds field does not count
        ("0 0-23 * * *", True),  # Debian looks at the first character only
        ("0,30 1 * * *", True),
        ("*/15 * * * *", False),
        ("0 * * * *", False),
        ("30 */2 * * *", False),
        ("*/10 * * * * *", False),
        ("0 * 2 * * *", False),
    ],
)
def test_is_fixed_time_looks_at_the_minute_and_hour_fields(expr, fixed):
    assert is_fixed_time(expr) is fixed


# --- Cron: fixed-time expressions across DST -------------------------------------------


def test_fixed_time_job_in_spring_forward_gap_fires_once_after_the_gap():
    # 01:30 does not exist in London on 31 March; 02:00 BST = 01:00 UTC ends the gap.
    times = next_fire_times(cron("30 1 * * *", "Europe/London"), utc(2024, 3, 29, 12), 3)
    assert times == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30)]


def test_fixed_time_job_in_fall_back_overlap_fires_once_at_first_occurrence():
    # 01:30 happens twice in London on 27 October; the first is 01:30 BST = 00:30 UTC.
    times = next_fire_times(cron("30 1 * * *", "Europe/London"), utc(2024, 10, 25, 12), 3)
    assert times == [utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_fixed_time_job_in_new_york_spring_gap_fires_at_three_am_edt():
    times = next_fire_times(cron("30 2 * * *", "America/New_York"), utc(2024, 3, 9), 3)
    assert times == [utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7, 0), utc(2024, 3, 11, 6, 30)]


def test_fixed_time_job_in_new_york_fall_overlap_fires_once_in_edt():
    times = next_fire_times(cron("0 1 * * *", "America/New_York"), utc(2024, 11, 2), 3)
    assert times == [utc(2024, 11, 2, 5), utc(2024, 11, 3, 5), utc(2024, 11, 4, 6)]


def test_six_field_fixed_time_job_in_spring_gap_fires_once_after_the_gap():
    # 02:00:00 does not exist in New York on 10 March: fires at 03:00 EDT = 07:00 UTC.
    times = next_fire_times(cron("0 0 2 * * *", "America/New_York"), utc(2024, 3, 9), 3)
    assert times == [utc(2024, 3, 9, 7), utc(2024, 3, 10, 7), utc(2024, 3, 11, 6)]


def test_six_field_fixed_time_job_in_fall_overlap_fires_once():
    times = next_fire_times(cron("0 0 1 * * *", "Europe/London"), utc(2024, 10, 26, 12), 2)
    assert times == [utc(2024, 10, 27, 0), utc(2024, 10, 28, 1)]


def test_fixed_time_job_in_southern_hemisphere_april_overlap_fires_once_in_daylight_time():
    times = next_fire_times(cron("30 2 * * *", "Australia/Sydney"), utc(2024, 4, 5), 3)
    # 02:30 AEDT (+11) on 6 and 7 April, then 02:30 AEST (+10) on 8 April.
    assert times == [utc(2024, 4, 5, 15, 30), utc(2024, 4, 6, 15, 30), utc(2024, 4, 7, 16, 30)]


def test_fixed_time_job_in_southern_hemisphere_october_gap_fires_at_three_am():
    times = next_fire_times(cron("30 2 * * *", "Australia/Sydney"), utc(2024, 10, 4), 3)
    # 02:30 AEST on 5 October; on 6 October 03:00 AEDT = 16:00 UTC the day before.
    assert times == [utc(2024, 10, 4, 16, 30), utc(2024, 10, 5, 16, 0), utc(2024, 10, 6, 15, 30)]


def test_fixed_time_job_in_a_zone_without_dst_keeps_its_utc_time():
    times = next_fire_times(cron("30 2 * * *", "Asia/Kolkata"), utc(2024, 3, 30), 3)
    # 02:30 IST = 21:00 UTC the day before, whatever Europe and America do.
    assert times == [utc(2024, 3, 30, 21), utc(2024, 3, 31, 21), utc(2024, 4, 1, 21)]


def test_fixed_time_job_in_utc_ignores_other_zones_transitions():
    times = next_fire_times(cron("30 1 * * *"), utc(2024, 3, 30, 12), 2)
    assert times == [utc(2024, 3, 31, 1, 30), utc(2024, 4, 1, 1, 30)]


def test_several_gap_times_of_a_fixed_time_job_fire_once_together():
    expr = "0,15,30,45 1 * * *"
    times = next_fire_times(cron(expr, "Europe/London"), utc(2024, 3, 30, 12), 3)
    # All four wall times fall in the gap and move to 01:00 UTC; next day 01:00 BST.
    assert times == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0), utc(2024, 4, 1, 0, 15)]


def test_gap_time_and_the_wall_time_ending_the_gap_fire_once():
    # 01:00 (in the gap) moves to 01:00 UTC, which is also 02:00 BST.
    times = next_fire_times(cron("0 1,2 * * *", "Europe/London"), utc(2024, 3, 31), 3)
    assert times == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0), utc(2024, 4, 1, 1)]


def test_fixed_time_job_with_two_times_in_the_overlap_fires_each_once():
    times = next_fire_times(cron("0,30 1 * * *", "America/New_York"), utc(2024, 11, 3, 4), 3)
    assert times == [utc(2024, 11, 3, 5), utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6)]


# --- Cron: wildcard expressions across DST ---------------------------------------------


def test_wildcard_job_does_not_fire_for_local_times_in_the_spring_gap():
    times = next_fire_times(cron("*/15 * * * *", "Europe/London"), utc(2024, 3, 31, 0, 30), 3)
    # 00:45 GMT, then 01:00-01:45 local do not exist, then 02:00 BST = 01:00 UTC.
    assert times == [utc(2024, 3, 31, 0, 45), utc(2024, 3, 31, 1), utc(2024, 3, 31, 1, 15)]


def test_wildcard_job_fires_again_in_the_repeated_hour():
    times = next_fire_times(cron("*/15 * * * *", "Europe/London"), utc(2024, 10, 27, 0, 30), 6)
    # 01:45 BST, then 01:00-01:45 GMT, then 02:00 GMT: every 15 minutes of real time.
    assert times == [
        utc(2024, 10, 27, 0, 45),
        utc(2024, 10, 27, 1, 0),
        utc(2024, 10, 27, 1, 15),
        utc(2024, 10, 27, 1, 30),
        utc(2024, 10, 27, 1, 45),
        utc(2024, 10, 27, 2, 0),
    ]


def test_wildcard_job_starting_in_the_second_pass_of_the_overlap_continues_from_there():
    times = next_fire_times(cron("*/15 * * * *", "Europe/London"), utc(2024, 10, 27, 1, 20), 3)
    assert times == [utc(2024, 10, 27, 1, 30), utc(2024, 10, 27, 1, 45), utc(2024, 10, 27, 2)]


def test_hourly_job_fires_every_real_hour_through_fall_back():
    times = next_fire_times(cron("0 * * * *", "Europe/London"), utc(2024, 10, 26, 23, 30), 3)
    assert times == [utc(2024, 10, 27, 0), utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)]


def test_hourly_job_fires_every_real_hour_through_spring_forward():
    times = next_fire_times(cron("0 * * * *", "Europe/London"), utc(2024, 3, 31, 0, 30), 2)
    assert times == [utc(2024, 3, 31, 1), utc(2024, 3, 31, 2)]


def test_every_two_hours_job_skips_its_run_in_the_spring_gap():
    # "30 */2" is a wildcard expression: 02:30 does not exist, so it does not fire.
    times = next_fire_times(cron("30 */2 * * *", "America/New_York"), utc(2024, 3, 10, 5), 3)
    # 00:30 EST, (02:30 skipped), 04:30 EDT, 06:30 EDT.
    assert times == [utc(2024, 3, 10, 5, 30), utc(2024, 3, 10, 8, 30), utc(2024, 3, 10, 10, 30)]


def test_wildcard_minute_job_fires_at_both_occurrences_of_the_repeated_hour():
    times = next_fire_times(cron("*/30 1 * * *", "America/New_York"), utc(2024, 11, 3, 4), 5)
    assert times == [
        utc(2024, 11, 3, 5, 0),  # 01:00 EDT
        utc(2024, 11, 3, 5, 30),  # 01:30 EDT
        utc(2024, 11, 3, 6, 0),  # 01:00 EST
        utc(2024, 11, 3, 6, 30),  # 01:30 EST
        utc(2024, 11, 4, 6, 0),  # 01:00 EST the next day
    ]


def test_wildcard_job_in_southern_hemisphere_april_overlap_fires_twice():
    times = next_fire_times(cron("*/30 2 * * *", "Australia/Sydney"), utc(2024, 4, 6, 14), 5)
    assert times == [
        utc(2024, 4, 6, 15, 0),  # 02:00 AEDT
        utc(2024, 4, 6, 15, 30),  # 02:30 AEDT
        utc(2024, 4, 6, 16, 0),  # 02:00 AEST
        utc(2024, 4, 6, 16, 30),  # 02:30 AEST
        utc(2024, 4, 7, 16, 0),  # 02:00 AEST on 8 April
    ]


def test_wildcard_job_in_southern_hemisphere_october_gap_does_not_fire():
    times = next_fire_times(cron("*/30 2 * * *", "Australia/Sydney"), utc(2024, 10, 5, 12), 2)
    # Nothing on 6 October; 02:00 and 02:30 AEDT on 7 October.
    assert times == [utc(2024, 10, 6, 15), utc(2024, 10, 6, 15, 30)]


def test_seconds_field_fires_every_ten_seconds():
    times = next_fire_times(cron("*/10 * * * * *"), utc(2024, 1, 1, 0, 0, 5), 3)
    assert times == [
        utc(2024, 1, 1, 0, 0, 10),
        utc(2024, 1, 1, 0, 0, 20),
        utc(2024, 1, 1, 0, 0, 30),
    ]


def test_seconds_field_after_with_microseconds_gives_the_next_whole_match():
    after = datetime(2024, 1, 1, 0, 0, 10, 500_000, tzinfo=UTC)
    assert next_fire_times(cron("*/10 * * * * *"), after, 1) == [utc(2024, 1, 1, 0, 0, 20)]


def test_seconds_field_job_runs_on_in_real_time_into_the_repeated_hour():
    # 00:59:40 UTC is 01:59:40 BST, in the first pass of the overlap.
    after = utc(2024, 10, 27, 0, 59, 40)
    times = next_fire_times(cron("*/10 * * * * *", "Europe/London"), after, 3)
    assert times == [
        utc(2024, 10, 27, 0, 59, 50),
        utc(2024, 10, 27, 1),
        utc(2024, 10, 27, 1, 0, 10),
    ]


def test_every_second_job_gives_a_thousand_consecutive_seconds():
    times = next_fire_times(cron("* * * * * *", "Europe/London"), utc(2024, 6, 1), 1000)
    assert times == [utc(2024, 6, 1) + timedelta(seconds=n) for n in range(1, 1001)]


@pytest.mark.parametrize(
    ("zone", "around"),
    [
        ("Europe/London", utc(2024, 3, 31, 1)),
        ("Europe/London", utc(2024, 10, 27, 1)),
        ("America/New_York", utc(2024, 3, 10, 7)),
        ("America/New_York", utc(2024, 11, 3, 6)),
        ("Australia/Sydney", utc(2024, 4, 6, 16)),
        ("Australia/Sydney", utc(2024, 10, 5, 16)),
        ("Australia/Lord_Howe", utc(2024, 4, 6, 15)),  # a 30-minute shift
    ],
)
@pytest.mark.parametrize(
    "expr",
    ["*/15 * * * *", "0 * * * *", "30 */2 * * *", "*/7 * * * * *", "30 2 * * *", "0,30 1-3 * * *"],
)
def test_fire_times_are_strictly_increasing_whole_seconds_in_utc(zone, around, expr):
    for start in range(-3 * 3600, 3 * 3600, 1250):
        after = around + timedelta(seconds=start, microseconds=250_000)
        times = next_fire_times(cron(expr, zone), after, 40)
        assert len(times) == 40
        assert times[0] > after
        assert all(a < b for a, b in zip(times, times[1:], strict=False))
        assert all(t.tzinfo is UTC and t.microsecond == 0 for t in times)


# --- Cron: day rules and windows --------------------------------------------------------


def test_day_of_month_or_day_of_week_fires_on_either_when_both_are_restricted():
    times = next_fire_times(cron("0 12 13 * FRI"), utc(2024, 11, 1, 13), 3)
    # Friday 8th, Wednesday 13th, Friday 15th November 2024.
    assert times == [utc(2024, 11, 8, 12), utc(2024, 11, 13, 12), utc(2024, 11, 15, 12)]


def test_day_of_month_alone_fires_only_on_that_day():
    times = next_fire_times(cron("0 12 13 * *"), utc(2024, 11, 1, 13), 2)
    assert times == [utc(2024, 11, 13, 12), utc(2024, 12, 13, 12)]


def test_day_of_week_alone_fires_only_on_that_weekday():
    times = next_fire_times(cron("0 12 * * FRI"), utc(2024, 11, 1, 13), 2)
    assert times == [utc(2024, 11, 8, 12), utc(2024, 11, 15, 12)]


def test_cron_window_start_and_end_are_inclusive():
    t = cron("0 * * * *", start_at=utc(2024, 1, 1, 12), end_at=utc(2024, 1, 1, 14))
    times = next_fire_times(t, utc(2024, 1, 1), 10)
    assert times == [utc(2024, 1, 1, 12), utc(2024, 1, 1, 13), utc(2024, 1, 1, 14)]


def test_cron_window_start_between_fire_times_waits_for_the_next_one():
    t = cron("0 * * * *", start_at=utc(2024, 1, 1, 12, 30))
    assert next_fire_times(t, utc(2024, 1, 1), 1) == [utc(2024, 1, 1, 13)]


def test_cron_trigger_past_its_end_is_finished():
    t = cron("0 * * * *", end_at=utc(2024, 1, 1, 14))
    assert next_fire_times(t, utc(2024, 1, 1, 14), 5) == []


def test_zero_count_gives_nothing():
    assert next_fire_times(cron("* * * * *"), utc(2024, 1, 1), 0) == []


def test_naive_after_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_times(cron("* * * * *"), datetime(2024, 1, 1), 1)


def test_invalid_stored_cron_or_zone_raises_value_error():
    with pytest.raises(ValueError, match="bad minute"):
        next_fire_times(cron("99 * * * *"), utc(2024, 1, 1), 1)
    with pytest.raises(ValueError, match="Unknown time zone"):
        next_fire_times(cron("* * * * *", "Mars/Base"), utc(2024, 1, 1), 1)


# --- Interval and one-off ---------------------------------------------------------------


def test_interval_without_start_counts_from_after():
    t = trigger(kind="interval", interval=600)
    times = next_fire_times(t, utc(2024, 1, 1, 10), 3)
    assert times == [utc(2024, 1, 1, 10, 10), utc(2024, 1, 1, 10, 20), utc(2024, 1, 1, 10, 30)]


def test_interval_with_start_keeps_to_the_grid_from_start():
    t = trigger(kind="interval", interval=3600, start_at=utc(2024, 1, 1, 9))
    assert next_fire_times(t, utc(2024, 1, 1, 10, 30), 2) == [
        utc(2024, 1, 1, 11),
        utc(2024, 1, 1, 12),
    ]


def test_interval_fire_times_are_strictly_after_a_grid_point():
    t = trigger(kind="interval", interval=3600, start_at=utc(2024, 1, 1, 9))
    assert next_fire_times(t, utc(2024, 1, 1, 11), 1) == [utc(2024, 1, 1, 12)]


def test_interval_with_start_in_the_future_first_fires_at_start():
    t = trigger(kind="interval", interval=3600, start_at=utc(2024, 1, 1, 15))
    assert next_fire_times(t, utc(2024, 1, 1, 10, 30), 2) == [
        utc(2024, 1, 1, 15),
        utc(2024, 1, 1, 16),
    ]


def test_interval_end_is_inclusive_and_then_finished():
    t = trigger(
        kind="interval", interval=3600, start_at=utc(2024, 1, 1, 9), end_at=utc(2024, 1, 1, 12)
    )
    assert next_fire_times(t, utc(2024, 1, 1, 10, 30), 5) == [
        utc(2024, 1, 1, 11),
        utc(2024, 1, 1, 12),
    ]
    assert next_fire_times(t, utc(2024, 1, 1, 12), 5) == []


def test_interval_without_interval_is_rejected():
    with pytest.raises(ValueError, match="interval"):
        next_fire_times(trigger(kind="interval", interval=None), utc(2024, 1, 1), 1)


def test_one_off_fires_once_in_utc():
    run_at = datetime(2024, 6, 1, 9, 0, tzinfo=ZoneInfo("Europe/London"))  # BST
    times = next_fire_times(trigger(kind="once", run_at=run_at), utc(2024, 1, 1), 5)
    assert times == [utc(2024, 6, 1, 8)]
    assert times[0].tzinfo is UTC


def test_one_off_in_the_past_is_finished():
    t = trigger(kind="once", run_at=utc(2024, 6, 1, 8))
    assert next_fire_times(t, utc(2024, 6, 1, 8), 1) == []


def test_one_off_outside_its_window_never_fires():
    before_start = trigger(kind="once", run_at=utc(2024, 6, 1), start_at=utc(2024, 6, 2))
    after_end = trigger(kind="once", run_at=utc(2024, 6, 3), end_at=utc(2024, 6, 2))
    assert next_fire_times(before_start, utc(2024, 1, 1), 1) == []
    assert next_fire_times(after_end, utc(2024, 1, 1), 1) == []


def test_one_off_at_the_end_of_its_window_fires():
    t = trigger(kind="once", run_at=utc(2024, 6, 2), end_at=utc(2024, 6, 2))
    assert next_fire_times(t, utc(2024, 1, 1), 1) == [utc(2024, 6, 2)]


# --- Misfires ---------------------------------------------------------------------------


def hourly(policy: str, next_fire_at: datetime, **fields) -> SimpleNamespace:
    return cron("0 * * * *", misfire_policy=policy, next_fire_at=next_fire_at, **fields)


def test_plan_without_next_fire_at_is_empty_and_finished():
    assert plan_fires(hourly("fire_once", None), utc(2024, 1, 1), 10) == FirePlan([], [], 0, None)


@pytest.mark.parametrize("policy", ["fire_once", "skip", "fire_all"])
def test_plan_before_the_fire_time_does_nothing_and_keeps_next_fire_at(policy):
    plan = plan_fires(hourly(policy, utc(2024, 1, 1, 12)), utc(2024, 1, 1, 11, 59, 59), 10)
    assert plan == FirePlan([], [], 0, utc(2024, 1, 1, 12))


@pytest.mark.parametrize("policy", ["fire_once", "skip", "fire_all"])
def test_on_time_fire_is_fired_whatever_the_policy(policy):
    plan = plan_fires(hourly(policy, utc(2024, 1, 1, 12)), utc(2024, 1, 1, 12, 0, 30), 10)
    assert plan == FirePlan([utc(2024, 1, 1, 12)], [], 0, utc(2024, 1, 1, 13))


def test_fire_exactly_grace_seconds_late_is_still_on_time():
    t = hourly("skip", utc(2024, 1, 1, 12), misfire_grace=60)
    assert plan_fires(t, utc(2024, 1, 1, 12, 1, 0), 10).fire == [utc(2024, 1, 1, 12)]
    assert plan_fires(t, utc(2024, 1, 1, 12, 1, 1), 10).skip == [utc(2024, 1, 1, 12)]


def test_fire_once_coalesces_missed_fires_into_the_latest_when_none_is_on_time():
    t = cron(
        "* * * * *", misfire_policy="fire_once", misfire_grace=20, next_fire_at=utc(2024, 1, 1, 12)
    )
    plan = plan_fires(t, utc(2024, 1, 1, 12, 10, 30), 10)
    # 12:00 .. 12:10 are all more than 20 s late: fire 12:10, fold the other ten into it.
    assert plan == FirePlan([utc(2024, 1, 1, 12, 10)], [], 10, utc(2024, 1, 1, 12, 11))


def test_fire_once_coalesces_missed_fires_into_the_on_time_fire():
    plan = plan_fires(hourly("fire_once", utc(2024, 1, 1, 9)), utc(2024, 1, 1, 12, 0, 30), 10)
    # 09:00, 10:00 and 11:00 were missed; 12:00 is on time and stands for them.
    assert plan == FirePlan([utc(2024, 1, 1, 12)], [], 3, utc(2024, 1, 1, 13))


def test_fire_once_fires_every_on_time_fire_and_coalesces_the_missed_ones():
    t = cron(
        "* * * * *", misfire_policy="fire_once", misfire_grace=120, next_fire_at=utc(2024, 1, 1, 12)
    )
    plan = plan_fires(t, utc(2024, 1, 1, 12, 10, 30), 10)
    # Missed: 12:00 .. 12:08 (nine). On time: 12:09 and 12:10.
    assert plan == FirePlan(
        [utc(2024, 1, 1, 12, 9), utc(2024, 1, 1, 12, 10)], [], 9, utc(2024, 1, 1, 12, 11)
    )


def test_fire_once_of_an_interval_trigger_keeps_its_phase():
    t = trigger(
        kind="interval",
        interval=600,
        misfire_policy="fire_once",
        next_fire_at=utc(2024, 1, 1, 10),
    )
    plan = plan_fires(t, utc(2024, 1, 1, 11, 5), 10)
    # 10:00 .. 11:00 every ten minutes were all missed; the grid stays on the ten minutes.
    assert plan == FirePlan([utc(2024, 1, 1, 11)], [], 6, utc(2024, 1, 1, 11, 10))


def test_skip_records_missed_fires_as_skipped_and_fires_the_on_time_one():
    plan = plan_fires(hourly("skip", utc(2024, 1, 1, 9)), utc(2024, 1, 1, 12, 0, 30), 10)
    assert plan == FirePlan(
        [utc(2024, 1, 1, 12)],
        [utc(2024, 1, 1, 9), utc(2024, 1, 1, 10), utc(2024, 1, 1, 11)],
        0,
        utc(2024, 1, 1, 13),
    )


def test_skip_beyond_the_limit_continues_on_the_next_plan():
    now = utc(2024, 1, 1, 12, 0, 30)
    first = plan_fires(hourly("skip", utc(2024, 1, 1, 9)), now, 2)
    assert first == FirePlan([], [utc(2024, 1, 1, 9), utc(2024, 1, 1, 10)], 0, utc(2024, 1, 1, 11))
    second = plan_fires(hourly("skip", first.next_fire_at), now, 2)
    assert second == FirePlan([utc(2024, 1, 1, 12)], [utc(2024, 1, 1, 11)], 0, utc(2024, 1, 1, 13))


def test_fire_all_fires_every_missed_fire_oldest_first():
    plan = plan_fires(hourly("fire_all", utc(2024, 1, 1, 9)), utc(2024, 1, 1, 12, 0, 30), 10)
    assert plan == FirePlan(
        [utc(2024, 1, 1, 9), utc(2024, 1, 1, 10), utc(2024, 1, 1, 11), utc(2024, 1, 1, 12)],
        [],
        0,
        utc(2024, 1, 1, 13),
    )


def test_fire_all_beyond_the_limit_continues_on_the_next_plan():
    now = utc(2024, 1, 1, 12, 0, 30)
    first = plan_fires(hourly("fire_all", utc(2024, 1, 1, 9)), now, 2)
    assert first == FirePlan([utc(2024, 1, 1, 9), utc(2024, 1, 1, 10)], [], 0, utc(2024, 1, 1, 11))
    second = plan_fires(hourly("fire_all", first.next_fire_at), now, 2)
    assert second == FirePlan(
        [utc(2024, 1, 1, 11), utc(2024, 1, 1, 12)], [], 0, utc(2024, 1, 1, 13)
    )


def test_several_on_time_fires_are_all_fired_up_to_the_limit():
    t = cron("* * * * * *", misfire_policy="fire_once", next_fire_at=utc(2024, 1, 1, 12))
    now = utc(2024, 1, 1, 12, 0, 30)
    every = plan_fires(t, now, 100)
    assert every.fire == [utc(2024, 1, 1, 12) + timedelta(seconds=n) for n in range(31)]
    assert every.next_fire_at == utc(2024, 1, 1, 12, 0, 31)
    some = plan_fires(t, now, 10)
    assert some.fire == [utc(2024, 1, 1, 12) + timedelta(seconds=n) for n in range(10)]
    assert some.next_fire_at == utc(2024, 1, 1, 12, 0, 10)


@pytest.mark.parametrize(
    ("policy", "fire", "skip"),
    [
        ("fire_once", [utc(2024, 1, 1, 9)], []),
        ("skip", [], [utc(2024, 1, 1, 9)]),
        ("fire_all", [utc(2024, 1, 1, 9)], []),
    ],
)
def test_missed_one_off_is_handled_once_and_then_finished(policy, fire, skip):
    t = trigger(
        kind="once",
        run_at=utc(2024, 1, 1, 9),
        misfire_policy=policy,
        next_fire_at=utc(2024, 1, 1, 9),
    )
    assert plan_fires(t, utc(2024, 1, 1, 12), 10) == FirePlan(fire, skip, 0, None)


def test_on_time_one_off_fires_and_finishes():
    t = trigger(kind="once", run_at=utc(2024, 1, 1, 9), next_fire_at=utc(2024, 1, 1, 9))
    assert plan_fires(t, utc(2024, 1, 1, 9, 0, 5), 10) == FirePlan(
        [utc(2024, 1, 1, 9)], [], 0, None
    )


def test_catch_up_stops_at_the_end_of_the_window():
    t = hourly("fire_all", utc(2024, 1, 1, 9), end_at=utc(2024, 1, 1, 11))
    plan = plan_fires(t, utc(2024, 1, 1, 12, 30), 10)
    assert plan == FirePlan(
        [utc(2024, 1, 1, 9), utc(2024, 1, 1, 10), utc(2024, 1, 1, 11)], [], 0, None
    )


def test_fire_once_at_the_end_of_the_window_fires_the_last_and_finishes():
    t = hourly("fire_once", utc(2024, 1, 1, 9), end_at=utc(2024, 1, 1, 11))
    plan = plan_fires(t, utc(2024, 1, 1, 12, 30), 10)
    assert plan == FirePlan([utc(2024, 1, 1, 11)], [], 2, None)


def test_next_fire_at_beyond_a_narrowed_window_finishes_the_trigger():
    t = hourly("fire_all", utc(2024, 1, 1, 12), end_at=utc(2024, 1, 1, 11))
    assert plan_fires(t, utc(2024, 1, 1, 12, 30), 10) == FirePlan([], [], 0, None)


@pytest.mark.parametrize("policy", ["fire_once", "skip", "fire_all"])
@pytest.mark.parametrize("limit", [1, 2, 5])
def test_a_plan_never_handles_more_than_its_limit(policy, limit):
    t = cron("* * * * *", misfire_policy=policy, misfire_grace=90, next_fire_at=utc(2024, 1, 1, 12))
    plan = plan_fires(t, utc(2024, 1, 1, 12, 20), limit)
    assert 1 <= len(plan.fire) + len(plan.skip) <= limit
    assert plan.next_fire_at > max(plan.fire + plan.skip)


def test_limit_below_one_is_rejected():
    with pytest.raises(ValueError, match="limit"):
        plan_fires(hourly("fire_all", utc(2024, 1, 1, 9)), utc(2024, 1, 1, 12), 0)


def test_every_second_cron_paused_for_a_year_plans_by_jumping(monkeypatch):
    matches = 0

    class CountingCronSim(schedule.CronSim):
        def __next__(self):
            nonlocal matches
            matches += 1
            return super().__next__()

    monkeypatch.setattr(schedule, "CronSim", CountingCronSim)
    t = cron("* * * * * *", misfire_grace=0, next_fire_at=utc(2023, 1, 1))
    now = datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    plan = plan_fires(t, now, 10)
    # 31,536,001 fire times were missed; the latest stands for them all.
    assert plan == FirePlan([utc(2024, 1, 1)], [], COALESCE_COUNT_CAP, utc(2024, 1, 1, 0, 0, 1))
    # Counting stops at the cap and the rest is a bisection, not a walk of every second.
    assert matches < 2 * COALESCE_COUNT_CAP


def test_every_second_interval_paused_for_a_year_plans_by_jumping():
    t = trigger(kind="interval", interval=1, misfire_grace=0, next_fire_at=utc(2023, 1, 1))
    now = datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC)
    plan = plan_fires(t, now, 10)
    assert plan == FirePlan([utc(2024, 1, 1)], [], COALESCE_COUNT_CAP, utc(2024, 1, 1, 0, 0, 1))
