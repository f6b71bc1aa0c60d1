"""Durations, delays, TTLs and cron: pure parsing helpers that raise ConfigurationError.

>>> parse_duration("1h30m")
5400.0
>>> parse_duration("90s", where="delay")
90.0
>>> format_duration(5400)
'1h30m'
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ._errors import ConfigurationError

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

Duration = str | int | float | timedelta

#: The furthest ahead any duration, delay, TTL or timeout may reach: about 10 years. Beyond it a
#: value is a typo or an attack, and stored times far past it can't be read back as datetimes.
HORIZON = 10 * 365 * 86400.0


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: Duration, *, where: str = "duration") -> float:
    """Seconds in "1w2d3h4m5s" (units in that order), a number of seconds, or a timedelta.

    Refused: booleans and numeric strings ("3" is not 3 seconds), NaN and infinities, negative
    values and anything past HORIZON (about 10 years).
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too big for a float
            seconds = math.inf
        if math.isnan(seconds):
            raise ConfigurationError(f"{where}: {value!r} is not a number of seconds")
    elif isinstance(value, str):
        m = _DURATION.match(value.strip())
        if not value.strip() or m is None:
            raise ConfigurationError(
                f"{where}: {_shown(value)} is not a duration; use units w, d, h, m, s in that "
                'order, e.g. "1h30m" or "90s"'
            )
        seconds = float(
            sum(int(n) * mult for n, mult in zip(m.groups(), _UNITS.values(), strict=True) if n)
        )
    else:
        raise ConfigurationError(f"{where}: expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise ConfigurationError(f"{where}: {_shown(value)} is negative")
    if seconds > HORIZON:
        raise ConfigurationError(
            f"{where}: {_shown(value)} is more than {HORIZON / 86400 / 365:.0f} years; "
            "durations past that are refused")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for whole seconds: 5400 -> "1h30m"."""
    left = round(seconds)
    out = []
    for unit, mult in _UNITS.items():
        n, left = divmod(left, mult)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def parse_delay(value: Duration | datetime, now: float, *, where: str = "delay",
                allow_past: bool = True) -> float | None:
    """The epoch time a delayed run becomes due, or None when it is due now.

    A past date means "now" when triggering (as Trigger.dev); with `allow_past=False`
    (reschedule) it is refused as an invalid delay. A date past HORIZON is refused.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{where}: {value!r} has no timezone; pass an aware datetime")
        at = value.timestamp()
        if at - now > HORIZON:
            raise ConfigurationError(
                f"{where}: {value.isoformat()} is more than {HORIZON / 86400 / 365:.0f} years ahead")
        if at < now and not allow_past:
            raise ConfigurationError(f"Invalid delay: {where} {value.isoformat()} is in the past")
    else:
        at = now + parse_duration(value, where=where)
    return at if at > now else None


def parse_ttl(value: Duration | None, *, where: str = "ttl") -> float | None:
    """TTL seconds, or None for no TTL (0 means none, as in Trigger.dev)."""
    if value is None:
        return None
    seconds = parse_duration(value, where=where)
    return seconds or None


def parse_timezone(name: str, *, where: str = "timezone") -> ZoneInfo:
    """An IANA zone, or ConfigurationError naming the bad value."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{where}: {name!r} is not an IANA timezone") from exc


def validate_cron(pattern: str, *, where: str = "cron") -> str:
    """Check a 5-field cron expression (no seconds field, as in Trigger.dev)."""
    if not isinstance(pattern, str) or len(pattern.split()) != 5:
        raise ConfigurationError(
            f"{where}: {pattern!r} must have 5 fields (minute hour day-of-month month day-of-week)"
        )
    if not croniter.is_valid(pattern):
        raise ConfigurationError(f"{where}: {pattern!r} is not a valid cron expression")
    return pattern


def cron_next(pattern: str, timezone: str, after: float, count: int = 1) -> list[float]:
    """The next `count` tick times strictly after `after`, DST-aware in `timezone`.

    A wall-clock time that does not exist (clocks go forward) fires at the first instant after
    the gap. One that happens twice (clocks go back) fires once, as in cron, unless the hour
    field is a wildcard: "every 30 minutes" keeps running through the repeated hour.
    """
    tz = parse_timezone(timezone)
    start = datetime.fromtimestamp(after, UTC).astimezone(tz)
    it = croniter(pattern, start)
    fixed_hours = not pattern.split()[1].startswith("*")
    out: list[float] = []
    seen = start.replace(tzinfo=None) if fixed_hours else None
    while len(out) < count:
        tick = it.get_next(datetime)
        wall = tick.replace(tzinfo=None)
        if fixed_hours and seen is not None and wall <= seen:
            continue  # the same wall time again, an hour later in UTC
        seen = wall
        out.append(tick.timestamp())
    return out
