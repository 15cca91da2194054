"""When a schedule's occurrences fall: five-field cron in a time zone, a fixed interval in
absolute time, or one time. Cron is matched by croniter on local wall-clock time; this module
adds the time zone's rules:

- a local time that does not exist (the hour skipped when clocks spring forward) fires once,
  at the first instant after the gap (several such times fire once between them);
- a local time that happens twice (clocks fall back) fires once, the first time.

Occurrences are UTC instants, at whole seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from runs.domain.errors import InvalidRequest

# Searching further than this for a cron's next match means it never matches (croniter's own
# bound is years of candidate days).
_MAX_SKIPPED = 1000


@lru_cache(maxsize=512)
def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``UTC`` included); 400 naming ``timezone`` otherwise."""
    try:
        if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidRequest(
            f"timezone {name!r} is not a known IANA time zone name (for example 'UTC' or "
            "'Europe/Berlin')",
            field="timezone",
        ) from exc


def check_cron(expression: str, field: str = "schedule") -> str:
    """A five-field cron expression (minute hour day-of-month month day-of-week; month and day
    names allowed), as written; 400 naming ``field`` with the parser's reason otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidRequest(
            f"{field} {expression!r} must have five fields (minute hour day-of-month month "
            f"day-of-week), not {len(fields)}",
            field=field,
        )
    try:
        croniter(expression, datetime(2000, 1, 1))
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidRequest(
            f"{field} {expression!r} is not a valid cron expression: {exc}", field=field
        ) from exc
    return " ".join(fields)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """One of: ``cron`` (in ``timezone``), ``interval_seconds`` (counted from ``anchor``), or
    ``run_at`` (once)."""

    timezone: str = "UTC"
    cron: str | None = None
    interval_seconds: int | None = None
    anchor: datetime | None = None
    run_at: datetime | None = None

    def next_after(self, after: datetime) -> datetime | None:
        """The first occurrence strictly after ``after`` (UTC), or None: there is none."""
        if self.run_at is not None:
            return self.run_at if self.run_at > after else None
        if self.interval_seconds is not None:
            return _next_interval(self.anchor or after, self.interval_seconds, after)
        assert self.cron is not None
        return _next_cron(self.cron, time_zone(self.timezone), after)

    def between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Occurrences ``t`` with ``start <= t <= end``, oldest first, at most ``limit``."""
        found: list[datetime] = []
        moment = self.next_after(start - timedelta(microseconds=1))
        while moment is not None and moment <= end and len(found) < limit:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def latest(self, since: datetime, until: datetime) -> datetime | None:
        """The newest occurrence ``t`` with ``since <= t <= until``, or None."""
        if self.interval_seconds is not None and self.run_at is None:
            first = self.next_after(since - timedelta(microseconds=1))
            if first is None or first > until:
                return None
            steps = math.floor((until - first).total_seconds() / self.interval_seconds)
            return first + timedelta(seconds=steps * self.interval_seconds)
        # Look back over growing spans, so that a dense cron is not walked from ``since``.
        for span in _LOOKBACK:
            start = since if span is None or until - since <= span else until - span
            found = self.between(start, until, _MAX_LISTED)
            if found:
                return found[-1]
            if start == since:
                return None
        return None


_LOOKBACK = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=32),
    timedelta(days=400),
    None,
)
_MAX_LISTED = 100_000


def _next_interval(anchor: datetime, seconds: int, after: datetime) -> datetime:
    anchor = anchor.replace(microsecond=0)
    if after < anchor:
        return anchor
    steps = math.floor((after - anchor).total_seconds() / seconds) + 1
    return anchor + timedelta(seconds=steps * seconds)


def _next_cron(expression: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    local = after.astimezone(zone).replace(tzinfo=None, microsecond=0)
    matches = croniter(expression, local)
    for _ in range(_MAX_SKIPPED):
        try:
            wall: datetime = matches.get_next(datetime)
        except CroniterError:
            return None
        moment = _instant(wall, zone)
        if moment > after:
            return moment
    return None


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of the local time ``wall``: the first of two when it happens twice, the
    end of the gap when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=1 reads it with the offset after the change, fold=0 with the one before;
    # the change happened between those two instants. Find it to the second.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    low, high = min(low, high), max(low, high)
    before = low.astimezone(zone).utcoffset()
    while (high - low) > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)
