"""The dashboard's logic, in process: a real engine on a real SQLite file, widgets without a
frontend. Buttons are pressed with `.click()`, filters set through their widgets' values, and
what the table, detail and form show is read back from the widgets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.notebook._ui import is_hidden
from nbtasks.notebook.dashboard import QUEUES, RUNS, TEST, TIMELINE, Dashboard
from nbtasks.notebook.feed import feed_for

pytestmark = pytest.mark.timeout(60)

NO_RETRY = {"max_attempts": 1}


@pytest.fixture
def dash(engine: Engine) -> Iterator[Dashboard]:
    d = Dashboard(engine, page_size=5)
    try:
        yield d
    finally:
        d.close()


def until(dash: Dashboard, check: Callable[[], bool], timeout: float = 15) -> None:
    """Wait for the dashboard's own (feed-driven) refreshes until `check()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = dash.refreshes
        if check():
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the dashboard never showed the expected state")
        dash.wait_refreshed(seen, left)


def shown(dash: Dashboard) -> list[str]:
    return [r.id for r in dash.table.rows_shown]


def define(engine: Engine) -> dict[str, Any]:
    @engine.task(id="ok", retry=NO_RETRY)
    def ok(payload: Any, ctx: Any) -> Any:
        return {"echo": payload}

    @engine.task(id="boom", retry={"max_attempts": 2, "min_timeout_in_ms": 1,
                                   "randomize": False})
    def boom(payload: Any, ctx: Any) -> Any:
        nbtasks.logger.info("about to fail", step=ctx.attempt.number)
        nbtasks.metadata.set("progress", 0.5)
        raise ValueError(f"bad input {payload}")

    @engine.task(id="slow", retry=NO_RETRY)
    async def slow(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(120)

    return {"ok": ok, "boom": boom, "slow": slow}


def test_table_lists_new_runs_live_and_filters_them(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    good = [t["ok"].trigger(i, tags=["nightly"] if i % 2 else None) for i in range(3)]
    bad = t["boom"].trigger({"x": 1})
    for h in [*good, bad]:
        h.wait(10)
    until(dash, lambda: len(shown(dash)) == 4 and dash.counts.get("FAILED") == 1)
    assert shown(dash)[0] == bad.id  # newest first
    assert "FAILED" in dash.summary.value and "finished in the last minute" in dash.summary.value
    assert [o[1] for o in dash.table.task.options] == ["", "boom", "ok", "slow"]

    dash.table.status.value = "FAILED"
    assert shown(dash) == [bad.id]
    dash.table.status.value = ""
    dash.table.task.value = "ok"
    assert set(shown(dash)) == {h.id for h in good}
    dash.table.tag.value = "nightly"
    dash.table.apply_typing_now()  # typed filters apply after a pause; don't wait for it
    assert shown(dash) == [good[1].id]
    dash.table.task.value = ""
    dash.table.tag.value = ""
    dash.table.search.value = bad.id[-10:]  # part of an id
    dash.table.apply_typing_now()
    assert shown(dash) == [bad.id]
    dash.table.search.value = "_"
    dash.table.apply_typing_now()
    assert shown(dash) == [bad.id, *reversed([h.id for h in good])]
    rows = dash.table.rows_view.rows  # what the page draws: one dict per row, no blanks
    assert rows[0]["status"] == "FAILED" and rows[0]["id"] == bad.id
    assert len(rows) == 4 and dash.table.rows_view.page_size == 5  # the page keeps 5 rows high


def test_pages_through_a_longer_history(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    batch = t["ok"].batch_trigger(list(range(12)))
    batch.wait(10)
    until(dash, lambda: dash.table.total == 12)
    first = shown(dash)
    assert len(first) == 5 and dash.table.newer.disabled and not dash.table.older.disabled
    assert "1&ndash;5 of 12" in dash.table.where.value
    dash.table.older.click()
    dash.table.older.click()
    assert len(shown(dash)) == 2 and dash.table.older.disabled
    assert "11&ndash;12 of 12" in dash.table.where.value
    dash.table.newer.click()
    dash.table.newer.click()
    assert shown(dash) == first
    everything = {h.id for h in batch}
    assert set(first) < everything


def test_detail_shows_error_traceback_attempts_logs_and_metadata(engine: Engine,
                                                                 dash: Dashboard) -> None:
    t = define(engine)
    handle = t["boom"].trigger({"x": 1}, tags=["t1"])
    handle.wait(10)
    until(dash, lambda: handle.id in shown(dash))
    dash.table.rows_view.click("open", handle.id)  # as the page reports a click on the run id
    detail = dash.detail
    assert detail.run_id == handle.id and not is_hidden(detail)
    assert "FAILED" in detail.header.value and handle.id in detail.header.value
    body = detail.body.value + detail.attempts.value + detail.logs_title.value + detail.logs.value
    assert "ValueError" in body and "bad input" in body and "Traceback" in body
    assert "Attempts" in body and body.count("ValueError: bad input") >= 2  # both attempts
    assert "about to fail" in body and "Logs (2)" in body
    assert "progress" in body and "0.5" in body
    assert "&quot;x&quot;: 1" in body  # the payload, escaped
    assert is_hidden(detail.cancel)  # final runs cannot be cancelled
    assert dash.table.rows_view.rows[0]["selected"]


def test_cancel_button_cancels_a_running_run(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    handle = t["slow"].trigger(None)
    until(dash, lambda: dash.counts.get("EXECUTING") == 1)
    dash.show_run(handle.id)
    assert not is_hidden(dash.detail.cancel) and "EXECUTING" in dash.detail.header.value
    dash.detail.cancel.click()
    assert handle.status is RunStatus.CANCELED
    assert "CANCELED" in dash.detail.header.value and is_hidden(dash.detail.cancel)
    assert "canceled" in dash.detail.message.value
    until(dash, lambda: dash.table.rows_view.rows[0]["status"] == "CANCELED")


def test_a_run_missing_from_the_store_is_reported_not_raised(engine: Engine,
                                                              dash: Dashboard) -> None:
    dash.show_run("run_missing")
    assert "is not in the store" in dash.detail.header.value
    assert is_hidden(dash.detail.actions)  # no Replay or Cancel for a run that is not there
    dash.refresh()  # later refreshes do not trip over it
    assert dash.notice.value == ""


def test_replay_uses_the_edited_payload(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    first = t["ok"].trigger({"n": 1}, tags=["a"])
    first.wait(10)
    dash.show_run(first.id)
    detail = dash.detail
    assert is_hidden(detail.replay_box)
    detail.replay.click()
    assert not is_hidden(detail.replay_box)
    assert '"n": 1' in detail.replay_payload.value
    detail.replay_payload.value = "{not json"
    detail.replay_go.click()
    assert "not valid JSON" in detail.message.value and engine.runs.count() == 1
    detail.replay_payload.value = '{"n": 2}'
    detail.replay_go.click()
    assert engine.runs.count() == 2
    second = detail.run_id
    assert second is not None and second != first.id
    assert "replay of" in detail.message.value
    run = engine.runs.retrieve(second)
    assert run.payload == {"n": 2} and run.tags == ["a"]
    assert engine.runs.list()[0].id == second
    until(dash, lambda: shown(dash)[:2] == [second, first.id])


def test_complete_token_button_resumes_a_waiting_run(engine: Engine, dash: Dashboard) -> None:
    @engine.task(id="approve", retry=NO_RETRY)
    async def approve(payload: Any, ctx: Any) -> Any:
        result = await nbtasks.wait.for_token(payload["token"])
        return result.output

    token = engine.wait.create_token(timeout="10m")
    handle = approve.trigger({"token": token.id})
    until(dash, lambda: dash.counts.get("WAITING") == 1)
    dash.show_run(handle.id)
    detail = dash.detail
    assert not is_hidden(detail.token_box) and detail.token.value == token.id
    detail.token_data.value = '{"approved": true}'
    detail.token_go.click()
    assert "completed" in detail.message.value
    assert handle.wait(10).output == {"approved": True}
    until(dash, lambda: "COMPLETED" in detail.header.value)
    assert is_hidden(detail.token_box)


class Order(BaseModel):
    sku: str
    qty: int = 1
    rush: bool = False


def test_test_form_prefills_validates_and_triggers_test_runs(engine: Engine,
                                                             dash: Dashboard) -> None:
    t = define(engine)
    engine.schema_task(id="order", schema=Order, run=lambda p, ctx: p.sku, retry=NO_RETRY)
    t["ok"].trigger({"last": "payload"}).wait(10)
    assert dash._form.children == ()  # built when its tab is first opened
    dash.tabs.selected_index = TEST
    assert dash._form.children == (dash._form.part,)
    form = dash.form
    assert list(form.task.options) == ["boom", "ok", "order", "slow"]
    form.task.value = "ok"
    assert '"last": "payload"' in form.payload.value  # a plain task: its last payload
    form.task.value = "order"
    assert '"sku": ""' in form.payload.value and '"qty": 1' in form.payload.value

    before = engine.runs.count()
    form.payload.value = '{"sku": 5, "qty": "many"}'
    form.go.click()
    assert "does not match Order" in form.message.value and "qty" in form.message.value
    form.payload.value = "{oops"
    form.go.click()
    assert "not valid JSON" in form.message.value
    form.payload.value = '{"sku": "A-1"}'
    form.delay.value = "1h"
    form.go.click()
    assert "triggered test run" in form.message.value
    form.delay.value = "soon"
    form.go.click()
    assert "delay" in form.message.value
    assert engine.runs.count() == before + 1  # bad input never reached the store

    run = engine.runs.list(task_id="order")[0]
    assert run.is_test and run.status is RunStatus.DELAYED and run.payload["sku"] == "A-1"
    assert dash.tabs.selected_index == RUNS and dash.detail.run_id == run.id

    dash.tabs.selected_index = TEST
    form.task.value = "ok"
    form.payload.value = "[1, 2]"
    form.delay.value = ""
    form.tags.value = "x, y"
    form.machine.value = "kernel"
    handle_id = form.trigger()
    assert handle_id is not None
    assert engine.runs.retrieve(handle_id).tags == ["x", "y"]
    assert engine.runs.retrieve(handle_id).is_test
    engine.runs.cancel(run.id)


def test_new_task_definitions_reach_the_filters_and_the_form(engine: Engine,
                                                             dash: Dashboard) -> None:
    dash.tabs.selected_index = TEST
    assert list(dash.form.task.options) == []
    engine.task(id="late", run=lambda p, ctx: p)
    assert list(dash.form.task.options) == ["late"] and dash.form.task.value == "late"
    assert ("late", "late") in dash.table.task.options


def test_queues_panel_pauses_and_resumes(engine: Engine, dash: Dashboard) -> None:
    @engine.task(id="one-at-a-time", queue={"name": "serial", "concurrency_limit": 1},
                 retry=NO_RETRY)
    def serial(payload: Any, ctx: Any) -> Any:
        return payload

    serial.trigger(0).wait(10)
    dash.tabs.selected_index = QUEUES
    (row,) = [r for r in dash.queues.list.children if getattr(r, "name", None) == "serial"]
    assert "at most 1 at once" in row.text.value and row.toggle.description == "Pause"
    row.toggle.click()
    assert engine.queues.retrieve("serial")["paused"] and "PAUSED" in row.text.value
    held = serial.trigger(1)
    until(dash, lambda: "<b>1</b> queued" in row.text.value)
    assert held.status is RunStatus.QUEUED
    row.toggle.click()
    assert not engine.queues.retrieve("serial")["paused"]
    assert held.wait(10).output == 1


def test_the_timeline_tab_reads_its_window(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    for h in [t["ok"].trigger(1), t["boom"].trigger(2)]:
        h.wait(10)
    dash.tabs.selected_index = TIMELINE
    data = dash.timeline.plot.data
    assert {q["name"] for q in data["queues"]} == {"task/ok", "task/boom"}
    assert data["window"] == 300.0 and len(data["bars"]) == 2
    dash.timeline.window.value = 3600.0
    assert dash.timeline.plot.data["window"] == 3600.0


def test_feed_is_quiet_when_idle_and_throttled_under_load(engine: Engine,
                                                          dash: Dashboard) -> None:
    t = define(engine)
    seen = dash.refreshes
    assert not dash.wait_refreshed(seen, 0.6)  # nothing happens: no refresh, no polling
    start = time.monotonic()
    batches = [t["ok"].batch_trigger(list(range(100))) for _ in range(4)]
    for b in batches:
        b.wait(20)
    until(dash, lambda: dash.table.total == 400)
    elapsed = time.monotonic() - start
    # 400 runs make 1,600+ events; the dashboard redraws at most ~4 times a second
    assert dash.refreshes - seen <= elapsed / feed_for(engine).interval + 3


def test_clicks_during_a_storm_of_events_neither_corrupt_nor_deadlock(engine: Engine,
                                                                      dash: Dashboard) -> None:
    t = define(engine)
    stop = threading.Event()
    errors: list[BaseException] = []

    def trigger_forever() -> None:
        try:
            while not stop.is_set():  # each batch done before the next: a storm, not a flood
                t["ok"].batch_trigger(list(range(20))).wait(timeout=30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=trigger_forever)
    worker.start()
    try:
        for i in range(40):  # the kernel thread works the widgets meanwhile
            dash.table.status.value = "COMPLETED" if i % 2 else ""
            dash.table.older.click()
            dash.table.newer.click()
            if dash.table.rows_shown:
                dash.show_run(dash.table.rows_shown[0].id)
    finally:
        stop.set()
        worker.join(30)
    assert not errors and not worker.is_alive()
    assert dash.notice.value == ""
    engine.runs._fresh()
    until(dash, lambda: engine.runs.count(status="COMPLETED") == engine.runs.count())
    dash.table.status.value = ""
    dash.refresh()
    assert dash.table.total == engine.runs.count() == sum(dash.counts.values())
    ids = shown(dash)
    assert len(ids) == len(set(ids)) == 5


def test_interrupted_runs_can_be_resumed_from_the_banner(tmp_path: Any) -> None:
    from nbtasks._runstate import RunState
    from nbtasks.stores import SQLiteStore, WriteBatch

    path = str(tmp_path / "held.db")
    store = SQLiteStore(path)
    store.open()
    orphan = RunState("run_orphan", "later", "1", time.time())
    orphan.owner = "eng_gone"
    store.write(WriteBatch(runs=[orphan.row()]))
    store.close()
    with Engine(store=path, resume=False) as eng:
        eng.task(id="later", run=lambda p, ctx: p + 1, retry=NO_RETRY)
        d = Dashboard(eng)
        try:
            assert not is_hidden(d.held) and "1 run(s)" in d.held_text.value
            resume = d.held.children[1]
            resume.click()
            assert "resumed 1" in d.notice.value
            assert eng.wait_result("run_orphan", 10).output == 2
            assert is_hidden(d.held)
        finally:
            d.close()


def test_close_stops_listening(engine: Engine) -> None:
    d = Dashboard(engine)
    feed = feed_for(engine)
    assert feed.running and len(engine.scheduler.subscribers) == 1
    d.close()
    assert not feed.running and engine.scheduler.subscribers == []
    assert d.update([]) == -1.0  # a late feed call on a closed dashboard asks to be dropped
    d.close()  # twice is fine


def test_plain_text_repr(engine: Engine, dash: Dashboard) -> None:
    t = define(engine)
    t["ok"].trigger(1).wait(10)
    dash.refresh()
    assert repr(dash) == "<nbtasks dashboard: 1 run (1 COMPLETED)>"
    bundle = dash._repr_mimebundle_()
    assert bundle["text/plain"] == repr(dash)
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_module_level_dashboard_uses_the_default_engine() -> None:
    nbtasks.configure(store=":memory:")
    d = nbtasks.dashboard(page_size=3)
    try:
        assert isinstance(d, Dashboard) and d.table.rows_view.page_size == 3
    finally:
        d.close()


def test_a_task_defined_on_the_engine_loop_never_waits_for_the_dashboard(
        engine: Engine, dash: Dashboard) -> None:
    @engine.task(id="definer", retry=NO_RETRY)
    async def definer(payload: Any, ctx: Any) -> str:
        engine.task(id="defined-in-a-run", run=lambda p, c: p)  # registry listeners run here
        return "ok"

    with dash.guard.lock:  # as if a click were being handled, waiting on the engine loop
        assert definer.trigger(None).wait(10).output == "ok"
    dash.refresh()
    assert ("defined-in-a-run", "defined-in-a-run") in dash.table.task.options
