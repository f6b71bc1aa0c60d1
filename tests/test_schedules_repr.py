"""`schedules.list()` as a table: IPython's own formatter gives HTML (escaped) and text."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.formatters import DisplayFormatter

from nbtasks import Engine
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)

SNEAKY = "<img src=x onerror=alert(1)>"


def _bundle(obj: Any) -> dict[str, str]:
    data, _meta = DisplayFormatter().format(obj)
    return data  # type: ignore[no-any-return]


def test_a_schedule_list_is_a_table_in_html_and_in_text(clocked: Engine,
                                                        clock: ManualClock) -> None:
    @clocked.task(id="report")
    def report(payload: Any, ctx: Any) -> None:
        return None

    weekday = clocked.schedules.create(task="report", cron="0 9 * * 1-5",
                                       timezone="Europe/London", deduplication_key="weekday",
                                       external_id=SNEAKY)
    often = clocked.schedules.create(task="report", cron="*/5 * * * *",
                                     timezone="America/New_York", deduplication_key="often")
    clock.advance(300)  # 00:05 UTC: `often` fires once
    clocked.schedules.deactivate(weekday.id)
    listed = clocked.schedules.list()
    assert [s.id for s in listed] == [weekday.id, often.id]  # still a list of Schedule

    data = _bundle(listed)
    page = data["text/html"]
    assert "<table" in page and page.count("<tr>") == 3  # header + 2 rows
    assert "every 5 minutes (*/5 * * * *)" in page
    assert "at 09:00, Monday to Friday" in page and "inactive" in page
    assert "America/New_York" in page and "Europe/London" in page
    # `often`'s times in its own zone: 00:05 UTC is 19:05 the day before in New York
    assert "2025-12-31 19:10 (in 5 min)" in page and "2025-12-31 19:05 (0 s ago)" in page
    assert SNEAKY not in page and "&lt;img src=x onerror=alert(1)&gt;" in page  # text, not markup

    text = data["text/plain"]
    assert SNEAKY in text and "&lt;" not in text and "<td" not in text  # plain text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["id", "task", "cron"] and len(lines) == 3
    assert lines[1].startswith(weekday.id) and "inactive" in lines[1]
    assert "every 5 minutes" in lines[2] and "in 5 min" in lines[2]
    # aligned columns: each row's task starts under the header's
    assert {line.index("report") for line in lines[1:]} == {lines[0].index("task")}


def test_no_schedules_says_so(clocked: Engine) -> None:
    listed = clocked.schedules.list()
    assert listed == [] and repr(listed) == "no schedules"
    assert "no schedules" in _bundle(listed)["text/html"]
