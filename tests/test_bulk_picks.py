"""After a bulk action the picks are used up: no box stays ticked and the count says so."""

from __future__ import annotations

import pytest
from test_dashboard import define, until

from nbtasks import Engine, RunStatus
from nbtasks.notebook.dashboard import Dashboard

pytestmark = pytest.mark.timeout(60)


def test_a_bulk_cancel_leaves_nothing_picked(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    slow = [t["slow"].trigger(i) for i in range(4)]
    until(dash, lambda: dash.table.total == 4)
    bulk = dash.bulk
    assert bulk is not None
    for row in dash.table.rows_view.rows[:2]:
        dash.table.rows_view.click("pick", row["id"], True)  # as the page reports a ticked box
    assert "2 selected" in bulk.count.value
    bulk.cancel.click()
    assert "canceled 2 of 2" in bulk.progress.value
    assert dash.table.picked == set()
    assert not any(row["picked"] for row in dash.table.rows_view.rows)
    assert "pick rows, or" in bulk.count.value and bulk.cancel.disabled
    assert sum(h.status is RunStatus.CANCELED for h in slow) == 2
    for h in slow:
        engine.runs.cancel(h.id)
