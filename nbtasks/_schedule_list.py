"""`schedules.list()`'s value: still a plain list of `Schedule`, but one that reads as a table.

In a notebook it shows as an HTML table (every stored text escaped: a task id or external id
is the user's data, not markup); in a terminal its repr is the same table as text. Pure Python:
no widgets, nothing imported until a frontend asks for a repr.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from ._schedules import Schedule

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def _day(field: str) -> str | None:
    names = {str(i): d for i, d in enumerate(_DAYS)} | {"7": "Sunday"}
    if field in names:
        return names[field]
    if field == "1-5":
        return "Monday to Friday"
    if field in ("0,6", "6,0"):
        return "Saturday and Sunday"
    if all(part in names for part in field.split(",")):
        return ", ".join(names[p] for p in field.split(","))
    return None


def cron_words(cron: str) -> str:
    """A 5-field cron in plain words; the cron itself when it is too unusual to say simply.

    >>> cron_words("*/5 * * * *"), cron_words("0 9 * * 1-5"), cron_words("30 * * * *")
    ('every 5 minutes', 'at 09:00, Monday to Friday', 'every hour at minute 30')
    >>> cron_words("0 0 1 * *"), cron_words("* * * * *"), cron_words("7 3 * 2 *")
    ('at 00:00 on day 1 of the month', 'every minute', '7 3 * 2 *')
    """
    parts = cron.split()
    if len(parts) != 5:
        return cron
    minute, hour, dom, month, dow = parts
    if month != "*":
        return cron
    if (minute, hour, dom, dow) == ("*", "*", "*", "*"):
        return "every minute"
    if minute.startswith("*/") and (hour, dom, dow) == ("*", "*", "*"):
        return f"every {minute[2:]} minutes"
    if minute.isdigit() and hour == "*" and (dom, dow) == ("*", "*"):
        return f"every hour at minute {int(minute)}"
    if minute.isdigit() and hour.startswith("*/") and (dom, dow) == ("*", "*"):
        return f"every {hour[2:]} hours at minute {int(minute)}"
    if minute.isdigit() and hour.isdigit():
        at = f"at {int(hour):02d}:{int(minute):02d}"
        if (dom, dow) == ("*", "*"):
            return f"every day {at}"
        if dom == "*" and (day := _day(dow)) is not None:
            return f"{at}, {day}"
        if dow == "*" and dom.isdigit():
            return f"{at} on day {int(dom)} of the month"
    return cron


def _relative(seconds: float) -> str:
    """ "in 4 min" / "2 h ago", coarse on purpose: a table, not a countdown."""
    ahead, s = seconds > 0, abs(seconds)
    text = (f"{s:.0f} s" if s < 60 else f"{s // 60:.0f} min" if s < 3600
            else f"{s // 3600:.0f} h" if s < 86400 else f"{s // 86400:.0f} d")
    return f"in {text}" if ahead else f"{text} ago"


def _when(ts: datetime | None, zone: str, now: float) -> str:
    """A tick time in the schedule's own timezone (the one its cron is read in)."""
    if ts is None:
        return "-"
    local = ts.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M} ({_relative(ts.timestamp() - now)})"


_HEADERS = ("id", "task", "cron", "timezone", "state", "next run", "last run", "external id")


class ScheduleList(list["Schedule"]):
    """A list of schedules with a table for a repr (see the module docstring)."""

    def __init__(self, schedules: Iterable[Schedule], now: float) -> None:
        super().__init__(schedules)
        self._now = now

    def _cells(self) -> list[tuple[str, ...]]:
        return [(s.id, s.task, f"{cron_words(s.cron)} ({s.cron})", s.timezone,
                 "active" if s.active else "inactive",
                 _when(s.next_run if s.active else None, s.timezone, self._now),
                 _when(s.last_timestamp, s.timezone, self._now), s.external_id or "-")
                for s in self]

    def __repr__(self) -> str:
        if not self:
            return "no schedules"
        rows = [_HEADERS, *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self:
            return "<div>no schedules</div>"
        cell = 'style="text-align:left;padding:2px 8px;vertical-align:top"'
        head = "".join(f"<th {cell}>{h}</th>" for h in _HEADERS)
        body = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(c)}</td>" for c in r)
                       + "</tr>" for r in self._cells())
        return (f'<table class="nbt-schedule-table" style="border-collapse:collapse">'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
