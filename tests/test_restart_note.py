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


@pytest.mark.timeout(180)
def test_every_widget_in_a_cell_is_saved_with_the_reload_note(tmp_path: Any) -> None:
    """In a real kernel, each nbtasks widget shown in a cell is followed by one text/html
    output: the stylesheet that turns it into the restart line on a reloaded page (the browser
    test reloads one). Plain values get none."""
    import nbformat
    from _helpers import execute_notebook
    from nbformat.v4 import new_code_cell, new_notebook

    from nbtasks.notebook.reload_note import NOTE_HTML
    cells = ['import nbtasks\nnbtasks.configure(store=".nbtasks/note.db")\n'
             '@nbtasks.task(id="echo")\ndef echo(p, ctx):\n    return p\n'
             'h = echo.trigger(1)\nh.wait(10)\n"plain"',
             "h", "nbtasks.dashboard()",
             "from nbtasks.notebook.trace import trace_for\ntrace_for(None, h.id)",
             "from nbtasks.notebook.timeline import Timeline\nTimeline(window=60)",
             "echo.batch_trigger([1, 2])"]
    path = tmp_path / "note.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), path)
    work = tmp_path / "run"
    work.mkdir()
    nb = execute_notebook(path, work)
    assert [o.get("output_type") for o in nb.cells[0].outputs] == ["execute_result"]
    for cell in nb.cells[1:]:
        kinds = [next(k for k in o.data if k != "text/plain") for o in cell.outputs]
        assert kinds == ["application/vnd.jupyter.widget-view+json", "text/html"], cell.source
        assert cell.outputs[1].data["text/html"] == NOTE_HTML
