"""Schedule math: when a trigger fires, and what to do about fire times that were missed.

Pure functions of their arguments: no database, no Django, no system clock (callers pass
"now", which is PostgreSQL's). A trigger is anything with the attributes of
``jobs.Trigger``: ``kind``, ``cron``, ``timezone``, ``interval``, ``run_at``,
``start_at``, ``end_at``, ``misfire_policy``, ``misfire_grace`` and ``next_fire_at``.

Cron expressions are matched by cronsim over naive local wall times; this module maps
wall times to instants itself, following Debian cron's DST rules (see DESIGN.md):

- a *fixed-time* expression (neither minute nor hour starts with ``*``) fires once per
  matching wall time: a wall time inside a spring-forward gap fires at the first instant
  after the gap, and one inside a fall-back overlap fires at its first occurrence;
- a *wildcard* expression follows real elapsed time: wall times that do not exist never
  fire, and wall times that occur twice fire twice.

Every datetime returned is aware and in UTC.
"""

from __future__ import annotations

import heapq
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import chain, islice
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: fire_once counts the fire times it coalesces exactly up to this many, then stops
#: counting: a ``FirePlan.coalesced`` equal to it means "this many or more". Counting
#: walks the schedule, and it runs inside the claim transaction, so it must stay short.
COALESCE_COUNT_CAP = 10_000

_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")

# A zone key is one or more path segments of letters, digits, "_", "+" and "-": this
# keeps absolute paths, "..", and the tzdata package's own files out before ZoneInfo
# touches the file system.
_ZONE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*")

# These exist on many hosts but name the host's own setting rather than a place, so the
# same trigger would fire at different instants on differently configured nodes.
_HOST_ZONES = frozenset({"localtime", "posixrules"})

# Any date works as a reference for "does this expression ever match": cronsim looks 50
# years ahead, longer than any Gregorian day/weekday/leap-year combination takes to recur.
_VALIDATION_REFERENCE = datetime(2000, 1, 1)

_ONE_MICROSECOND = timedelta(microseconds=1)


# --- Validation -------------------------------------------------------------------------


def _fields(expr: str) -> list[str]:
    if not isinstance(expr, str):
        raise ValueError("A cron expression must be a string.")
    parts = expr.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"Expected 5 fields, or 6 with seconds first; got {len(parts)}.")
    return parts


def _parse(expr: str, start: datetime) -> CronSim:
    """A cronsim iterator over naive wall times after ``start``; ValueError if invalid."""
    parts = _fields(expr)
    try:
        return CronSim(expr, start)
    except CronSimError as e:
        raise ValueError(_explain_cronsim_error(parts, str(e))) from None
    except (ValueError, IndexError, KeyError, TypeError) as e:
        # cronsim reports bad input as CronSimError; this is a guard in case some odd
        # input trips it elsewhere, so the admin still shows a message, not a 500.
        raise ValueError(f"Invalid cron expression {' '.join(parts)!r}: {e}.") from None


def _explain_cronsim_error(parts: list[str], message: str) -> str:
    expr = " ".join(parts)
    # cronsim says "Bad <field>"; name the text of that field too.
    name = message.removeprefix("Bad ").strip()
    if name not in _FIELD_NAMES:
        return f"Invalid cron expression {expr!r}: {message}."
    offset = 0 if len(parts) == 6 else 1
    value = parts[_FIELD_NAMES.index(name) - offset]
    if name == "day-of-month" and _day_field_is_well_formed(value):
        # cronsim rejects e.g. "0 0 30 2 *" (no February has a 30th) with the same words.
        return (
            f"Invalid cron expression {expr!r}: it never matches, because none of the "
            f"months in {parts[-2]!r} has day {value!r}."
        )
    return f"Invalid cron expression {expr!r}: bad {name} field {value!r}."


def _day_field_is_well_formed(value: str) -> bool:
    probe = f"0 0 {value} * *"
    try:
        CronSim(probe, _VALIDATION_REFERENCE)
    except CronSimError:
        return False
    return True


def validate_cron(expr: str) -> None:
    """Raise ValueError, with a message for a human, unless ``expr`` is a usable cron."""
    it = _parse(expr, _VALIDATION_REFERENCE)
    if next(it, None) is None:
        raise ValueError(f"Invalid cron expression {' '.join(expr.split())!r}: it never matches.")


def validate_timezone(name: str) -> None:
    """Raise ValueError unless ``name`` is an IANA time zone name such as Europe/London."""
    _zone(name)


@cache
def zone_names() -> tuple[str, ...]:
    """Every IANA time zone name this host knows, sorted (the admin's searchable list)."""
    return tuple(sorted(zoneinfo.available_timezones() - _HOST_ZONES))


@cache
def _zone_names_by_lower_case() -> dict[str, str]:
    return {name.lower(): name for name in zone_names()}


def canonical_zone_name(name: str) -> str:
    """The IANA spelling of a zone name typed in any case ("europe/berlin" gives
    "Europe/Berlin"); anything else comes back as it was, for validation to refuse."""
    if not isinstance(name, str):
        return name
    name = name.strip()
    return _zone_names_by_lower_case().get(name.lower(), name)


def _zone(name: str) -> ZoneInfo:
    message = f"Unknown time zone {name!r}: use an IANA name such as 'Europe/London' or 'UTC'."
    if not isinstance(name, str) or not _ZONE_KEY.fullmatch(name) or name in _HOST_ZONES:
        raise ValueError(message)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: the key names a directory ("Europe") or is too long for the file system.
        raise ValueError(message) from None


def is_fixed_time(expr: str) -> bool:
    """True when neither the minute nor the hour field starts with ``*`` (Debian's test)."""
    parts = _fields(expr)
    if len(parts) == 6:
        parts = parts[1:]
    minute, hour = parts[0], parts[1]
    return not minute.startswith("*") and not hour.startswith("*")


# --- Fire times -------------------------------------------------------------------------


def next_fire_times(trigger: Any, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``, oldest first.

    Respects the trigger's window (``start_at`` and ``end_at``, both inclusive); returns
    fewer, possibly none, when the trigger finishes sooner. Raises ValueError for a
    trigger that cannot be scheduled (bad cron or zone, missing interval or run_at).
    """
    if count <= 0:
        return []
    return list(islice(_fires_after(trigger, after), count))


def _fires_after(
    trigger: Any, after: datetime, phase: datetime | None = None
) -> Iterator[datetime]:
    """Lazily, the trigger's fire times strictly after ``after``, inside its window.

    ``phase`` is a known fire time of an interval trigger without ``start_at``: the
    grid continues from it instead of restarting at ``after``.
    """
    after = _as_utc(after, "after")
    start_at = _as_utc(trigger.start_at, "start_at") if trigger.start_at else None
    end_at = _as_utc(trigger.end_at, "end_at") if trigger.end_at else None

    if trigger.kind == "cron":
        if not trigger.cron:
            raise ValueError("A cron trigger needs a cron expression.")
        # Fire times are >= start_at; with microsecond datetimes that is > start_at - 1us.
        lower = max(after, start_at - _ONE_MICROSECOND) if start_at else after
        times = _cron_times(trigger.cron, _zone(trigger.timezone), lower)
    elif trigger.kind == "interval":
        if not trigger.interval or trigger.interval < 1:
            raise ValueError("An interval trigger needs an interval of at least 1 second.")
        if start_at:
            anchor = start_at
        elif phase is not None:
            anchor = _as_utc(phase, "phase")
        else:
            anchor = after
        times = _interval_times(anchor, timedelta(seconds=trigger.interval), after, start_at)
    elif trigger.kind == "once":
        if not trigger.run_at:
            raise ValueError("A one-off trigger needs a date-time to run at.")
        run_at = _as_utc(trigger.run_at, "run_at")
        ok = run_at > after and (start_at is None or run_at >= start_at)
        times = iter([run_at] if ok else [])
    else:
        raise ValueError(f"Unknown trigger kind {trigger.kind!r}.")

    for t in times:
        if end_at is not None and t > end_at:
            return
        yield t


def _interval_times(
    anchor: datetime, step: timedelta, after: datetime, start_at: datetime | None
) -> Iterator[datetime]:
    # Jump straight to the first grid point after `after`: a trigger paused for a year
    # must not walk the grid. (timedelta // timedelta floors, also for negatives.)
    k = (after - anchor) // step + 1
    if start_at is not None:
        k = max(k, 0)  # the grid starts at start_at itself
    t = anchor + k * step
    while True:
        yield t
        t += step


def _cron_times(expr: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Instants (UTC, increasing, distinct) at which ``expr`` fires in ``zone`` after ``after``."""
    fixed = is_fixed_time(expr)
    after_naive = after.astimezone(UTC).replace(tzinfo=None)
    # The earliest wall time that can map to an instant after `after`: its own wall time,
    # except inside a fall-back overlap's first pass, where the repeated wall times just
    # before it come round again (their second occurrence is still ahead).
    wall = after.astimezone(zone).replace(tzinfo=None)
    start = after_naive + min(_offset(wall, zone, 0), _offset(wall, zone, 1))
    last: datetime | None = None
    # Second occurrences (naive UTC) of repeated wall times. They come after first
    # occurrences of later wall times in the same overlap, so hold them until every
    # earlier instant has been yielded.
    pending: list[datetime] = []

    for wall in _parse(expr, start):
        off0, off1 = _offset(wall, zone, 0), _offset(wall, zone, 1)
        second = None
        if off0 == off1:
            instant = wall - off0
        elif off0 > off1:
            # Overlap: fold=0 is the first occurrence, fold=1 the second.
            instant = wall - off0
            if not fixed:
                second = wall - off1
        elif fixed:
            instant = _gap_end(wall, zone, off0, off1)
        else:
            continue  # a wall time that never happens does not fire
        while pending and pending[0] <= instant:
            held = heapq.heappop(pending)
            if last is None or held > last:
                last = held
                if held > after_naive:
                    yield held.replace(tzinfo=UTC)
        if last is None or instant > last:
            # Equal instants: several gap times moved to the same end of the gap.
            last = instant
            if instant > after_naive:
                yield instant.replace(tzinfo=UTC)
        if second is not None:
            heapq.heappush(pending, second)

    # cronsim found nothing more for 50 years; what is held still fires.
    while pending:
        held = heapq.heappop(pending)
        if held > after_naive and (last is None or held > last):
            last = held
            yield held.replace(tzinfo=UTC)


def _offset(wall: datetime, zone: ZoneInfo, fold: int) -> timedelta:
    offset = wall.replace(tzinfo=zone, fold=fold).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _gap_end(wall: datetime, zone: ZoneInfo, old: timedelta, new: timedelta) -> datetime:
    """The transition instant (naive UTC) that ends the spring-forward gap holding ``wall``.

    For a wall time in a gap, reading it with the new offset (fold=1) lands before the
    transition and with the old offset (fold=0) after it. Bisect the whole seconds in
    between for the first one already on the new offset.
    """
    lo = wall - new  # before the transition
    hi = wall - old  # at or after it
    while hi - lo > timedelta(seconds=1):
        mid = lo + timedelta(seconds=(hi - lo).total_seconds() // 2)
        if mid.replace(tzinfo=UTC).astimezone(zone).utcoffset() == new:
            hi = mid
        else:
            lo = mid
    return hi


def _as_utc(dt: datetime, name: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {dt!r}.")
    return dt.astimezone(UTC)


# --- Misfires ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FirePlan:
    """What a scheduler node records for one trigger in one claim transaction."""

    #: Fire times to record as normal executions, oldest first.
    fire: list[datetime]
    #: Fire times to record as skipped executions (the ``skip`` policy), oldest first.
    skip: list[datetime]
    #: Under fire_once, how many missed fire times were folded into a fire instead of
    #: being fired themselves; exact below COALESCE_COUNT_CAP, which means "at least
    #: that many". 0 for the other policies.
    coalesced: int
    #: The trigger's new next_fire_at: the first fire time this plan does not handle
    #: (possibly already due, when ``limit`` cut the plan short), or None when finished.
    next_fire_at: datetime | None

    def with_at_most(self, fires: int) -> FirePlan:
        """This plan cut to its first ``fires`` fires; the rest are left for a later claim.

        Skipped times all come before the fired ones (they are the missed ones), so the
        cut keeps them and the trigger resumes at the first fire time left out.
        """
        if len(self.fire) <= fires:
            return self
        return replace(self, fire=self.fire[:fires], next_fire_at=self.fire[fires])


def plan_fires(trigger: Any, now: datetime, limit: int) -> FirePlan:
    """Decide what to record for the due fire times of ``trigger`` at ``now``.

    Due fire times are ``trigger.next_fire_at`` and the fire times after it up to
    ``now``. One is *missed* when ``now`` is more than ``misfire_grace`` seconds past it;
    otherwise it is on time. On-time fire times are fired. Missed ones follow the
    policy: ``fire_once`` folds them all into one fire (the on-time one if there is one,
    else the latest missed one), ``skip`` records each as skipped, and ``fire_all``
    fires each. At most ``limit`` times go into ``fire`` and ``skip`` together; the
    rest are left for the next call through ``next_fire_at``, so nothing is dropped.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1.")
    if trigger.next_fire_at is None:
        return FirePlan(fire=[], skip=[], coalesced=0, next_fire_at=None)
    first = _as_utc(trigger.next_fire_at, "next_fire_at")
    now = _as_utc(now, "now")
    if trigger.end_at is not None and first > _as_utc(trigger.end_at, "end_at"):
        # The window was narrowed after next_fire_at was computed: nothing left to fire.
        return FirePlan(fire=[], skip=[], coalesced=0, next_fire_at=None)
    if first > now:
        return FirePlan(fire=[], skip=[], coalesced=0, next_fire_at=first)

    policy = trigger.misfire_policy
    if policy not in ("fire_once", "skip", "fire_all"):
        raise ValueError(f"Unknown misfire policy {policy!r}.")
    # A fire time before the cutoff is missed: now - d > grace  <=>  d < now - grace.
    cutoff = now - timedelta(seconds=trigger.misfire_grace or 0)

    def first_after(t: datetime) -> datetime | None:
        return next(_fires_after(trigger, t, phase=first), None)

    if policy == "fire_once" and first < cutoff:
        return _plan_coalesced(trigger, first, now, cutoff, limit, first_after)

    fire: list[datetime] = []
    skip: list[datetime] = []
    due = chain([first], _fires_after(trigger, first, phase=first))
    for t in due:
        if t > now or len(fire) + len(skip) >= limit:
            return FirePlan(fire=fire, skip=skip, coalesced=0, next_fire_at=t)
        if t < cutoff and policy == "skip":
            skip.append(t)
        else:
            fire.append(t)
    return FirePlan(fire=fire, skip=skip, coalesced=0, next_fire_at=None)


def _plan_coalesced(
    trigger: Any,
    first: datetime,
    now: datetime,
    cutoff: datetime,
    limit: int,
    first_after: Callable[[datetime], datetime | None],
) -> FirePlan:
    """fire_once when ``first`` was missed: one fire stands for all the missed ones."""
    # Count the missed times, up to one past the cap so we know whether we hit it.
    missed = 1
    latest = first
    rest = _fires_after(trigger, first, phase=first)
    upcoming = next(rest, None)
    while upcoming is not None and upcoming < cutoff and missed <= COALESCE_COUNT_CAP:
        latest, missed = upcoming, missed + 1
        upcoming = next(rest, None)
    if upcoming is not None and upcoming < cutoff:
        # Too many to walk (an every-second trigger paused for a year): jump instead.
        latest = _last_before(first_after, latest, cutoff)
        rest = _fires_after(trigger, latest, phase=first)
        upcoming = next(rest, None)

    on_time: list[datetime] = []
    while upcoming is not None and upcoming <= now and len(on_time) < limit:
        on_time.append(upcoming)
        upcoming = next(rest, None)
    if on_time:
        return FirePlan(
            fire=on_time,
            skip=[],
            coalesced=min(missed, COALESCE_COUNT_CAP),
            next_fire_at=upcoming,
        )
    return FirePlan(
        fire=[latest],
        skip=[],
        coalesced=min(missed - 1, COALESCE_COUNT_CAP),
        next_fire_at=upcoming,
    )


def _last_before(
    first_after: Callable[[datetime], datetime | None], known: datetime, cutoff: datetime
) -> datetime:
    """The last fire time before ``cutoff``, given ``known``, a fire time before it.

    Bisects time rather than walking fire times, so it costs a few dozen lookups
    however many fire times lie in between.
    """
    lo = known  # a fire time before cutoff: the answer is at or after it
    hi = cutoff  # no fire time in (hi, cutoff): the answer is at or before it
    while True:
        nxt = first_after(lo)
        if nxt is None or nxt >= cutoff:
            return lo
        lo = nxt
        mid = lo + (hi - lo) / 2
        probe = first_after(mid)
        if probe is not None and probe < cutoff:
            lo = probe
        else:
            hi = mid
