"""The dashboard's finish, in process on a real engine and SQLite file: span lines stay out of the
logs views, an attempt cut short by a kernel restart lasts until its last sign of life in every
view (the stored row, the attempts frame, the run trace, the run detail), and every status badge
reads at 4.5:1 or better.
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.notebook.dashboard import Dashboard
from nbtasks.notebook.trace_model import build_trace

pytestmark = pytest.mark.timeout(60)

STATIC = Path(nbtasks.__file__).parent / "notebook" / "static"


# ---------------------------------------------------------------------- span lines

def test_span_lines_stay_out_of_the_run_logs(engine: Engine) -> None:
    @engine.task(id="traced")
    def traced(payload: Any, ctx: Any) -> str:
        nbtasks.logger.info("first words", step=0)
        for i in range(150):  # 300 span lines after it: more than the logs view reads
            with nbtasks.logger.trace("part", i=i):
                pass
        nbtasks.logger.warn("last words")
        return "done"

    handle = traced.trigger(None)
    assert handle.wait(10).output == "done"
    dash = Dashboard(engine, read_only=False)
    try:
        dash.show_run(handle.id)
        detail = dash.detail
        logs = detail.logs.value
        assert "first words" in logs and "last words" in logs
        assert "span_" not in logs and "nbt-log-SPAN" not in logs
        assert "Logs (2)" in detail.logs_title.value
        # the trace still has them: 150 spans under the attempt
        trace = build_trace(engine.store, handle.id, engine.clock.now())
        assert sum(r["kind"] == "span" for r in trace["rows"]) == 150
    finally:
        dash.close()


# ---------------------------------------------------------------------- restart durations

def _orphan(path: str, started: float, last_words: float) -> None:
    """A file left by a kernel that died while `run_orphan` executed; it last logged at
    `last_words`."""
    from nbtasks._runstate import AttemptState, RunState
    from nbtasks.stores import SQLiteStore, WriteBatch

    orphan = RunState("run_orphan", "later", "1", started - 1)
    orphan.owner = "eng_gone"
    orphan.status = RunStatus.EXECUTING
    orphan.started_at = orphan.updated_at = started
    orphan.attempt_count = 1
    attempt = AttemptState(1, started, "kernel", "task/later")
    store = SQLiteStore(path)
    store.open()
    store.write(WriteBatch(runs=[orphan.row()], attempts=[attempt.row("run_orphan")]))
    store.close()
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("INSERT INTO logs (run_id, ts, level, message, attributes) VALUES "
                    "(?, ?, 'INFO', 'still going', NULL)", ("run_orphan", last_words))


def test_an_attempt_cut_by_a_restart_ends_at_its_last_sign_of_life_everywhere(
        tmp_path: Path) -> None:
    path = str(tmp_path / "restart.db")
    started = time.time() - 26.2  # it ran 8 s, then the kernel was down for 18 s
    _orphan(path, started, started + 8.0)
    with Engine(store=path, resume=False) as eng:
        run = eng.runs.retrieve("run_orphan")
        (attempt,) = run.attempts
        assert attempt.error is not None and attempt.error["type"] == "KernelRestartError"
        assert attempt.finished_at is not None
        assert attempt.finished_at.timestamp() == pytest.approx(started + 8.0)
        frame = eng.runs.attempts_dataframe()
        assert frame.duration_ms.iloc[0] == pytest.approx(8000.0, abs=1.0)
        trace = build_trace(eng.store, "run_orphan", eng.clock.now())
        (bar,) = [r for r in trace["rows"] if r["kind"] == "attempt"]
        assert bar["end"] - bar["start"] == pytest.approx(8.0)
        dash = Dashboard(eng, read_only=False)
        try:
            dash.show_run("run_orphan")
            attempts = dash.detail.attempts.value
            assert "8.0 s" in attempts and "26." not in attempts
        finally:
            dash.close()


def test_an_attempt_that_never_logged_ends_at_its_start(tmp_path: Path) -> None:
    path = str(tmp_path / "restart.db")
    started = time.time() - 30.0
    _orphan(path, started, started - 5.0)  # a line from before the attempt does not count
    with Engine(store=path, resume=False) as eng:
        (attempt,) = eng.runs.retrieve("run_orphan").attempts
        assert attempt.finished_at is not None and attempt.started_at is not None
        assert attempt.finished_at == attempt.started_at


# ---------------------------------------------------------------------- badge contrast

def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _on_white(hex_colour: str) -> float:
    """The WCAG contrast of white text on `hex_colour`."""
    return 1.05 / (_luminance(hex_colour) + 0.05)


def test_every_status_badge_reads_at_4_5_to_1() -> None:
    """White text on each badge colour, in the reprs (inline styles, so exported pages too) and
    in the trace and timeline's stylesheet: the colours are the same in every theme."""
    from nbtasks.notebook.display import COLOURS, badge

    for status in RunStatus:
        colour = re.search(r"background:\s*[^;]*?(#[0-9a-fA-F]{6})", badge(status.value))
        assert colour is not None, status
        assert _on_white(colour.group(1)) >= 4.5, (status, colour.group(1))
    assert all(_on_white(c) >= 4.5 for c in COLOURS.values())
    css = (STATIC / "common.css").read_text()
    pills = re.findall(r"\.nbt-st-[A-Z_]+[^{]*\{\s*background:\s*(#[0-9a-fA-F]{6})", css)
    assert len(pills) >= 6
    bad = [c for c in pills if _on_white(c) < 4.5]
    assert not bad, bad


# ---------------------------------------------------------------------- lazy widgets

def _models_made(engine: Engine, page_size: int) -> tuple[int, Dashboard]:
    from ipywidgets.widgets.widget import _instances  # every live model, by comm id

    before = set(_instances)
    dash = Dashboard(engine, page_size=page_size, read_only=False)
    return len(set(_instances) - before), dash


def test_opening_makes_the_same_few_widget_models_whatever_the_page_size(engine: Engine) -> None:
    """Each widget model is a comm opened and a state sent: the cost of opening in a kernel.
    Rows are one model, and the detail, Test form, schedules, queues and timeline are built
    when first shown."""
    _, warm = _models_made(engine, 5)  # shared layouts and styles are made once per kernel
    warm.close()
    small, a = _models_made(engine, 5)
    big, b = _models_made(engine, 50)
    try:
        assert big == small, (small, big)
        assert small < 60, small
        for part in (b._detail, b._form, b._schedules, b._queues, b._timeline):
            assert part.part is None  # not built until its tab or a run is shown
        b.tabs.selected_index = 4
        assert b._timeline.part is not None and b._queues.part is None
    finally:
        a.close()
        b.close()


def test_the_runs_table_does_no_work_while_another_tab_is_shown(engine: Engine) -> None:
    from nbtasks.notebook.dashboard import QUEUES, RUNS

    @engine.task(id="quick")
    def quick(payload: Any, ctx: Any) -> Any:
        return payload

    quick.trigger(0).wait(10)
    dash = Dashboard(engine, read_only=False)
    try:
        dash.tabs.selected_index = QUEUES
        drawn = dash.table.rows_view.rows
        after = dash.refreshes
        new = quick.trigger(1)
        new.wait(10)
        assert dash.wait_refreshed(after, 10)  # the feed delivered the events ...
        dash.probe.visible = True
        dash.update([])  # ... and a clock tick came: the hidden table was left alone
        assert dash.table.rows_view.rows is drawn
        assert "2 runs" in dash.summary.value  # the summary above the tabs is on screen
        dash.tabs.selected_index = RUNS  # shown again: it catches up at once
        assert dash.table.rows_view.rows[0]["id"] == new.id
    finally:
        dash.close()
