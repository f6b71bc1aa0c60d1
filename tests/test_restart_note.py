"""The kernel-restart note is in every nbtasks widget, shared where that is safe, and never
closed by a widget that merely contains it (the browser test restarts a real kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from nbtasks import Engine
from nbtasks.notebook.dashboard import Dashboard
from nbtasks.notebook.restart_note import RestartNote, restart_note
from nbtasks.notebook.status_line import BatchProgress, StatusLine

pytestmark = pytest.mark.timeout(60)


def test_status_lines_and_bars_share_one_note_that_outlives_them(engine: Engine) -> None:
    @engine.task(id="echo")
    def echo(payload: Any, ctx: Any) -> Any:
        return payload

    h = echo.trigger(1)
    h.wait(10)
    line = StatusLine(engine, h.id, "echo")
    bar = BatchProgress(engine, "batch_x", [h.id])
    note = restart_note()
    assert note in line.children and note in bar.children  # final lines keep it too
    line.close()
    bar.close()
    assert note.comm is not None and restart_note() is note  # still open, still shared
    assert "kernel restarted: run the cell again" in str(RestartNote._esm)


def test_a_dashboard_has_its_own_note_and_closes_it(engine: Engine) -> None:
    dash = Dashboard(engine)
    (own,) = [c for c in dash.children if isinstance(c, RestartNote)]
    assert own is not restart_note()
    dash.close()
    assert own.comm is None and restart_note().comm is not None


def test_the_trace_and_the_timeline_watch_for_a_restart_in_their_own_views() -> None:
    """Not boxes, so no note inside them: their own module carries the watch and calls it."""
    from nbtasks.notebook.timeline import Timeline
    from nbtasks.notebook.trace import RunTrace
    for widget in (RunTrace, Timeline):
        module = str(widget._esm)
        assert "kernel restarted: run the cell again" in module
        assert "nbtWatchRestart(model, el)" in module.split("function render(")[-1]
