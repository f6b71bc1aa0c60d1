"""The trace and timeline widgets' Python side: what they sync, and clicks coming back."""

from __future__ import annotations

from typing import Any

import pytest

from nbtasks import Engine, RunNotFoundError
from nbtasks.notebook.timeline import Timeline
from nbtasks.notebook.trace import STATIC, RunTrace, trace_for

pytestmark = pytest.mark.timeout(60)


def test_trace_for_syncs_the_model_and_reports_clicks(engine: Engine) -> None:
    @engine.task(id="shown")
    def shown(payload: Any, ctx: Any) -> int:
        return 1

    handle = shown.trigger(None)
    handle.wait(timeout=10)
    trace = trace_for(engine, handle.id)
    assert trace.data["run"]["id"] == handle.id and trace.data["run"]["final"]
    assert not trace.is_live and repr(trace) == f"<RunTrace {handle.id}>"
    opened: list[dict[str, Any]] = []
    stop = trace.on_open(opened.append)
    trace.clicked = {"run": "run_child", "span": None, "kind": "child", "n": 1}  # as the page does
    assert opened == [{"run": "run_child", "span": None, "kind": "child", "n": 1}]
    stop()
    trace.clicked = {"run": "run_child", "n": 2}
    assert len(opened) == 1
    trace.show(None)
    assert trace.data == {"message": "no run selected"}
    with pytest.raises(RunNotFoundError):
        trace_for(engine, "run_missing")
    assert RunTrace().data == {"message": "no run selected"}


def test_the_widgets_ship_their_module_and_styles_in_the_package(engine: Engine) -> None:
    names = {p.name for p in STATIC.iterdir()}
    assert {"common.js", "trace.js", "timeline.js", "common.css", "trace.css",
            "timeline.css"} <= names
    timeline = Timeline(engine, window=60)
    timeline.refresh()
    assert timeline.data["window"] == 60 and timeline.data["queues"] == []
    for widget in (timeline, RunTrace()):
        esm, css = str(widget._esm), str(widget._css)
        assert "export default" in esm and "http" not in esm  # no CDN, nothing fetched
        assert "--jp-layout-color1" in css and "--jp-ui-font-color1" in css


def test_the_trace_shows_tracebacks_as_the_run_detail_does(engine: Engine) -> None:
    """Every attempt's traceback without nbtasks' own frames, as the detail panel prints it."""

    @engine.task(id="breaks", retry={"max_attempts": 2, "min_timeout_in_ms": 10,
                                     "randomize": False})
    def breaks(payload: Any, ctx: Any) -> int:
        raise ValueError(f"broken {ctx.attempt.number}")

    handle = breaks.trigger(None)
    assert not handle.wait(timeout=10).ok
    errors = trace_for(engine, handle.id).data["errors"]
    assert [e["message"] for e in errors] == ["broken 1", "broken 2"]
    for e in errors:
        assert "nbtasks frame" in e["traceback"] and "_lifecycle.py" not in e["traceback"]
        assert 'in breaks' in e["traceback"]
