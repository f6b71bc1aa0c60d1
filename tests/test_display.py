"""Rich reprs: HTML for results, batches and run lists; live status lines and batch progress
bars (driven by the engine's feed thread); plain text wherever there is no frontend.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks._status import FINAL
from nbtasks.notebook import display
from nbtasks.notebook.feed import DONE, feed_for
from nbtasks.notebook.progress import batch_progress
from nbtasks.notebook.status_line import BatchProgress, StatusLine

pytestmark = pytest.mark.timeout(60)

NO_RETRY = {"max_attempts": 1}
FINAL_VALUES = {s.value for s in FINAL}


def tasks(engine: Engine) -> dict[str, Any]:
    @engine.task(id="echo", retry=NO_RETRY)
    def echo(payload: Any, ctx: Any) -> Any:
        if payload == "fail":
            raise RuntimeError("<b>not bold</b>")
        return {"html": "<script>alert(1)</script>", "n": payload}

    @engine.task(id="slow", retry=NO_RETRY)
    async def slow(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(120)

    return {"echo": echo, "slow": slow}


def test_results_batches_and_run_lists_render_escaped_html(engine: Engine) -> None:
    t = tasks(engine)
    ok = t["echo"].trigger(1).wait(10)
    bad = t["echo"].trigger("fail").wait(10)
    for html in (ok._repr_html_(), bad._repr_html_()):
        assert "<script>" not in html and "<b>not bold</b>" not in html
    assert "COMPLETED" in ok._repr_html_() and "&lt;script&gt;" in ok._repr_html_()
    assert "FAILED" in bad._repr_html_() and "&lt;b&gt;not bold" in bad._repr_html_()
    assert repr(ok).startswith("Result(ok") and repr(bad).startswith("Result(FAILED")

    batch = t["echo"].batch_trigger([1, "fail", 3])
    results = batch.wait(10)
    html = batch._repr_html_()
    assert batch.id in html and html.count("<tr>") == 4 and "FAILED" in html
    assert "2/3 ok" in results._repr_html_() and repr(results).endswith("2/3 ok>")
    assert repr(batch) == f"<BatchHandle {batch.id} with 3 runs>"

    listing = engine.runs.list()
    table = listing._repr_html_()
    assert table.count("<tr>") == 1 + 5 and "echo" in table
    run = engine.runs.retrieve(bad.id)
    assert "&lt;b&gt;not bold" in run._repr_html_() and "<b>not" not in run._repr_html_()


def test_plain_python_shows_text_not_widgets(engine: Engine, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    t = tasks(engine)
    handle = t["echo"].trigger(1)
    handle.wait(10)
    assert not display.in_widget_kernel()
    handle._ipython_display_()
    engine.runs.retrieve(handle.id)._ipython_display_()
    out = capsys.readouterr().out
    assert f"<RunHandle {handle.id} task='echo' COMPLETED>" in out
    assert "Run(id=" in out


def test_import_loads_no_widgets_and_scripts_wait_without_them(tmp_path: Any) -> None:
    code = (
        "import sys, nbtasks\n"
        "assert 'ipywidgets' not in sys.modules and 'pandas' not in sys.modules\n"
        f"eng = nbtasks.Engine(store={str(tmp_path / 'x.db')!r})\n"
        "t = eng.task(id='t', run=lambda p, ctx: p)\n"
        "print(t.batch_trigger([1, 2]).wait(10))\n"
        "h = t.trigger(3); h.wait(10); h._ipython_display_()\n"
        "assert 'ipywidgets' not in sys.modules\n"
        "d = nbtasks.dashboard(eng); print(d); d.close()\n"
        "eng.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "2/2 ok" in out and "COMPLETED>" in out
    assert "<nbtasks dashboard: 3 runs (3 COMPLETED)>" in out  # a script gets a text summary


def test_status_line_follows_its_run_and_cancels_it(engine: Engine) -> None:
    t = tasks(engine)
    handle = t["slow"].trigger(None)
    line = StatusLine(engine, handle.id, "slow")
    feed = feed_for(engine)
    try:
        assert line in feed.listeners()
        assert line._open.description == handle.id and line._cancel in line.children
        line._cancel.click()
        assert handle.status is RunStatus.CANCELED
        assert "CANCELED" in line._badge.value and line._cancel not in line.children
        assert line not in feed.listeners()  # final: it stopped listening
        assert repr(line) == f"<RunHandle {handle.id} task='slow' CANCELED>"
        assert line._repr_mimebundle_()["text/plain"] == repr(line)
    finally:
        line.close()


class Watcher:
    """A feed listener added after the widget under test: the feed calls listeners in order,
    so once this one has seen every run end, the widget has processed those events too."""

    def __init__(self, engine: Engine, run_ids: list[str]) -> None:
        self.run_ids = frozenset(run_ids)
        self.ended: set[str] = set()
        self.done = threading.Event()
        feed_for(engine).add(self)

    def update(self, events: list[Any]) -> float | None:
        self.ended |= {e.run_id for e in events if e.status.value in FINAL_VALUES}
        if self.ended == self.run_ids:
            self.done.set()
            return DONE
        return None


class Flaky:
    """A listener that ticks only when it asks to (returns seconds), and whose first
    `failures` updates raise."""

    run_ids: frozenset[str] = frozenset()

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.ticked = threading.Event()

    def update(self, events: list[Any]) -> float | None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"update {self.calls} failed")
        self.ticked.set()
        return DONE


def test_a_listener_whose_update_raised_is_called_again_and_logged_once(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """No event is coming for it: without the retry it would never be called again (a clock
    that ticks only when it asks to would stop for good)."""
    feed = feed_for(engine)
    feed.retry = 0.02
    flaky = Flaky(failures=3)
    feed.add(flaky)
    try:
        feed.poke(flaky)
        assert flaky.ticked.wait(10), f"called {flaky.calls} times, never again after failing"
        assert flaky.calls == 4
        failures = [r for r in caplog.records if "failed to update" in r.getMessage()]
        assert len(failures) == 1 and "update 1 failed" in (failures[0].exc_text or "")
    finally:
        feed.remove(flaky)


def test_status_line_updates_from_engine_events(engine: Engine,
                                                 wait_status: Callable[..., RunStatus]) -> None:
    gate = asyncio.Event()

    @engine.task(id="gated", retry=NO_RETRY)
    async def gated(payload: Any, ctx: Any) -> str:
        await gate.wait()
        return "done"

    handle = gated.trigger(None)
    wait_status(engine, handle.id, RunStatus.EXECUTING)  # started just after its commit
    line = StatusLine(engine, handle.id, "gated")
    try:
        assert "EXECUTING" in line._badge.value and line in feed_for(engine).listeners()
        watcher = Watcher(engine, [handle.id])
        engine.runtime.loop.call_soon_threadsafe(gate.set)
        assert watcher.done.wait(10)
        assert "COMPLETED" in line._badge.value and line not in feed_for(engine).listeners()
    finally:
        line.close()


def test_a_status_line_shows_the_live_status_before_it_is_committed(
        engine: Engine, wait_status: Callable[..., RunStatus]) -> None:
    """The stored row lags a run by up to one group commit; the line shows the engine's state."""
    gate = asyncio.Event()

    @engine.task(id="gated", retry=NO_RETRY)
    async def gated(payload: Any, ctx: Any) -> str:
        await gate.wait()
        return "done"

    lock = engine.store._lock  # type: ignore[attr-defined]
    with lock:  # this thread may still commit its trigger; the writer thread must wait
        handle = gated.trigger(None)
        wait_status(engine, handle.id, RunStatus.EXECUTING)
        line = StatusLine(engine, handle.id, "gated")
        assert engine.runs.row(handle.id)["status"] == "QUEUED"  # what the file says
        assert "EXECUTING" in line._badge.value
    engine.runtime.loop.call_soon_threadsafe(gate.set)
    assert handle.wait(timeout=10).ok
    line.close()


def test_a_final_run_never_subscribes(engine: Engine) -> None:
    t = tasks(engine)
    handle = t["echo"].trigger(1)
    handle.wait(10)
    line = StatusLine(engine, handle.id, "echo")
    assert line not in feed_for(engine).listeners() and not feed_for(engine).running
    assert "COMPLETED" in line._badge.value and "attempt 1" in line._text.value
    line.close()


def test_batch_progress_counts_finished_runs(engine: Engine) -> None:
    gate = asyncio.Event()

    @engine.task(id="wait-then", retry=NO_RETRY)
    async def wait_then(payload: Any, ctx: Any) -> Any:
        await gate.wait()
        if payload == "fail":
            raise RuntimeError("no")
        return payload

    batch = wait_then.batch_trigger([1, "fail", 3])
    ids = [h.id for h in batch]
    bar = BatchProgress(engine, batch.id, ids)
    try:
        assert bar._bar.value == 0 and bar._bar.max == 3 and "0/3 done" in bar._label.value
        watcher = Watcher(engine, ids)
        engine.runtime.loop.call_soon_threadsafe(gate.set)
        assert watcher.done.wait(10)
        assert bar._bar.value == 3 and bar not in feed_for(engine).listeners()
        assert bar._bar.bar_style == "danger" and "1 failed" in bar._label.value
        bar.finish(True)
        assert repr(bar) == f"<batch {batch.id}: 3/3 done>"
    finally:
        bar.close()


def test_batch_progress_is_a_no_op_outside_a_kernel(engine: Engine) -> None:
    t = tasks(engine)
    batch = t["echo"].batch_trigger([1, 2])
    with batch_progress(engine, batch.id, [h.id for h in batch]):
        batch.wait(10)
    assert not feed_for(engine).running


def test_a_running_run_snapshot_finds_its_engine(engine: Engine) -> None:
    t = tasks(engine)
    handle = t["slow"].trigger(None)
    try:
        assert display._engine_of(handle.id) is engine
        assert display._engine_of("run_nope") is None
    finally:
        handle.cancel()


def test_helpers_format_for_humans() -> None:
    assert display.duration(0.0123) == "12 ms"
    assert display.duration(3.25) == "3.2 s"
    assert display.duration(3 * 60 + 5) == "3m 05s"
    assert display.duration(3 * 3600) == "3h 00m"
    assert display.duration(None) == ""
    assert "…" in display.pretty_json({"x": "y" * 50}, limit=10)
    assert display.counts_html({}) == "no runs yet"
    err = display.error_html({"type": "ValueError", "message": "<x>", "traceback": "tb"})
    assert "&lt;x&gt;" in err and "nbt-traceback" in err


def test_module_level_batch_and_handle_work_with_the_default_engine() -> None:
    nbtasks.configure(store=":memory:")
    echo = nbtasks.task(id="echo-default", run=lambda p, ctx: p, retry=NO_RETRY)
    batch = echo.batch_trigger([1, 2])
    assert [r.output for r in batch.wait(10)] == [1, 2]
    assert "2 runs" in batch._repr_html_()


def test_tracebacks_hide_the_engines_own_frames() -> None:
    pkg = display._PACKAGE
    tb = ("Traceback (most recent call last):\n"
          f'  File "{pkg}_lifecycle.py", line 1, in _run\n    await hook()\n'
          f'  File "{pkg}executors/inline.py", line 2, in _work\n    fn()\n'
          '  File "/home/me/etl.py", line 8, in etl\n    raise ValueError("boom")\n'
          "ValueError: boom")
    assert display.user_traceback(tb).splitlines() == [
        "Traceback (most recent call last):", "  [2 nbtasks frames hidden]",
        '  File "/home/me/etl.py", line 8, in etl', '    raise ValueError("boom")',
        "ValueError: boom"]
    assert "frames hidden" not in display.error_html(
        {"type": "E", "message": "m", "traceback": "Traceback:\nE: m"})


@pytest.mark.timeout(60)
def test_a_closed_engines_feed_does_not_keep_it_alive(tmp_path: Any) -> None:
    """Feeds are kept per engine in a weak map, and each holds its engine: the key could never
    die, so an engine that ever had a widget stayed in memory after `close()`. A closed
    engine's feed is dropped when the next engine's is made."""
    import gc
    import weakref

    first = Engine(store=str(tmp_path / "a.db"))
    assert first.task(id="t", run=lambda p, ctx: p).trigger(1).wait(timeout=10).output == 1
    feed_for(first)
    gone = weakref.ref(first)
    first.close()
    del first
    second = Engine(store=str(tmp_path / "b.db"))
    try:
        feed_for(second)
        gc.collect()
        assert gone() is None
    finally:
        second.close()
