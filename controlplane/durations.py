"""One way to write a duration, everywhere people read one (dashboard, admin, messages).

    250ms   1.2s   5s   42s   4m 05s   59m 56s   3h 02m   2d 04h
    in 59m 56s   5s ago

Two units at most, the second zero-padded and left out when it is zero ("5m", "1h",
"2d"); below ten seconds one decimal, below a second whole milliseconds. Machines get
seconds as numbers (the API), never these strings.
"""

from __future__ import annotations

import math
from datetime import timedelta

_UNITS = (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1))


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def duration(value: float | timedelta | None) -> str:
    """A duration in seconds (or a timedelta) for people; "" for None."""
    seconds = _seconds(value)
    if seconds is None or math.isnan(seconds):
        return ""
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1 and round(seconds * 1000) < 1000:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + "s"  # 9.96 reads "10s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    for big, big_size, small, small_size in _UNITS:
        if whole >= big_size:
            count, rest = divmod(whole, big_size)
            part = rest // small_size
            return f"{count}{big} {part:02d}{small}" if part else f"{count}{big}"
    raise AssertionError("unreachable")  # whole >= 60 matches the minutes row


def duration_ms(milliseconds: float | None) -> str:
    """A duration given in milliseconds (fire lag percentiles)."""
    return "" if milliseconds is None else duration(float(milliseconds) / 1000)


def relative(value: float | timedelta | None) -> str:
    """A time from now: "in 59m 56s" ahead, "5s ago" behind; "" for None."""
    seconds = _seconds(value)
    if seconds is None:
        return ""
    if seconds >= 0:
        return f"in {duration(seconds)}"
    return f"{duration(-seconds)} ago"


def ago(value: float | timedelta | None) -> str:
    """How long ago (an age, counted positive): "5s ago"; "" for None."""
    seconds = _seconds(value)
    return "" if seconds is None else f"{duration(abs(seconds))} ago"
