"""The run trace's data, built from a real engine on a real SQLite file: queued time, attempts,
retry back-off, a wait, a wait token, a child run, spans, log marks and every attempt's
traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunNotFoundError, RunStatus
from nbtasks.notebook.trace_model import build_trace
from nbtasks.stores.sqlite import SQLiteStore
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)
WaitStatus = Callable[..., RunStatus]

FAST_RETRY = {"max_attempts": 3, "min_timeout_in_ms": 30, "max_timeout_in_ms": 30,
              "randomize": False}


def _define(eng: Engine) -> Any:
    @eng.task(id="child")
    async def child(payload: int, ctx: Any) -> int:
        return payload * 2

    @eng.task(id="parent", retry=FAST_RETRY)
    async def parent(payload: str, ctx: Any) -> int:
        async with nbtasks.logger.trace("prepare", n=1):
            nbtasks.logger.info("hello", attempt=ctx.attempt.number)
            with nbtasks.logger.trace("inner"):
                pass
        if ctx.attempt.number == 1:
            raise ValueError("first attempt fails")
        await nbtasks.wait.for_token(payload)
        await nbtasks.wait.for_(seconds=0.05)
        async with nbtasks.logger.trace("fetch"):
            return (await child.trigger_and_wait(21)).unwrap()

    return parent


def test_a_retried_run_with_a_token_a_wait_a_child_and_spans(
        db_path: Path, wait_status: WaitStatus) -> None:
    with Engine(store=str(db_path)) as eng:
        parent = _define(eng)
        tok = eng.wait.create_token(timeout="1h")
        handle = parent.trigger(tok.id)
        wait_status(eng, handle.id, RunStatus.WAITING)
        assert eng.wait.complete_token(tok.id, {"ok": True})
        assert handle.wait(timeout=20).output == 42
        eng.runs.retrieve(handle.id)  # pending writes land
        trace = build_trace(eng.store, handle.id, eng.clock.now())
    # read again from the file alone, as another kernel would
    store = SQLiteStore(db_path)
    store.open()
    try:
        assert build_trace(store, handle.id, trace["now"])["rows"] == trace["rows"]
    finally:
        store.close()

    rows = trace["rows"]
    kinds = [(r["kind"], r["label"], r["depth"]) for r in rows]
    assert kinds == [
        ("run", "parent", 0), ("queued", "queued", 1),
        ("attempt", "attempt 1", 1), ("span", "prepare", 2), ("span", "inner", 3),
        ("backoff", "retry back-off", 1),
        ("attempt", "attempt 2", 1), ("span", "prepare", 2), ("span", "inner", 3),
        ("token", "wait for token", 2), ("wait", "wait", 2), ("span", "fetch", 2),
        ("child", "child", 3),  # triggered inside the "fetch" span
    ]
    by = {(r["kind"], r["attempt"]): r for r in rows}
    a1, a2, backoff = by["attempt", 1], by["attempt", 2], by["backoff", 1]
    assert (a1["status"], a2["status"]) == ("FAILED", "COMPLETED")
    assert a1["detail"]["error"] == "ValueError: first attempt fails"
    assert backoff["start"] == a1["end"] and backoff["end"] == a2["start"]
    assert backoff["detail"]["next retry at"] == a2["start"]
    assert by["queued", None]["end"] == a1["start"]
    wait = by["wait", 2]
    assert wait["detail"]["duration"] == pytest.approx(0.05, abs=0.01)
    assert a2["start"] <= wait["start"] <= wait["end"] <= a2["end"]
    token_row = by["token", 2]
    assert token_row["status"] == "COMPLETED" and token_row["detail"]["token"] == tok.id
    child = by["child", 2]
    assert child["status"] == "COMPLETED" and child["open"] != handle.id
    assert child["open"].startswith("run_")
    spans = [r for r in rows if r["kind"] == "span"]
    assert all(s["status"] == "COMPLETED" and s["span"] for s in spans)
    assert spans[0]["detail"] == {"n": 1}
    assert rows[0]["status"] == "COMPLETED" and rows[0]["end"] is not None
    assert trace["start"] == rows[0]["start"] and trace["end"] >= a2["end"]
    hello = [m for m in trace["marks"] if m["message"] == "hello"]
    assert [m["attempt"] for m in hello] == [1, 2] and hello[0]["level"] == "info"
    (err,) = trace["errors"]  # every failed attempt's traceback: here only the first failed
    assert err["attempt"] == 1 and err["type"] == "ValueError"
    assert "first attempt fails" in err["traceback"] and "Traceback" in err["traceback"]
    assert trace["run"]["replayed_from"] is None


def test_each_failed_attempt_keeps_its_traceback_and_a_pending_retry_shows_when(
        clocked: Engine, clock: ManualClock, wait_status: WaitStatus) -> None:
    @clocked.task(id="always-fails", retry={"max_attempts": 3, "min_timeout_in_ms": 60_000,
                                            "max_timeout_in_ms": 60_000, "randomize": False})
    def always_fails(payload: Any, ctx: Any) -> None:
        raise RuntimeError(f"failure number {ctx.attempt.number}")

    handle = always_fails.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clocked.runs.retrieve(handle.id)
    trace = build_trace(clocked.store, handle.id, clock.now())
    backoff = trace["rows"][-1]
    assert backoff["kind"] == "backoff" and backoff["end"] is None  # still waiting for it
    assert backoff["detail"]["next retry at"] == pytest.approx(backoff["start"] + 60)
    assert trace["rows"][0]["end"] is None and trace["end"] == clock.now()
    clock.advance(60)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    clock.advance(60)
    assert not handle.wait(timeout=10).ok
    clocked.runs.retrieve(handle.id)
    trace = build_trace(clocked.store, handle.id, clock.now())
    assert [e["message"] for e in trace["errors"]] == [
        "failure number 1", "failure number 2", "failure number 3"]
    assert all("RuntimeError" in e["traceback"] for e in trace["errors"])
    assert [r["kind"] for r in trace["rows"]].count("backoff") == 2


def test_a_delayed_run_a_replay_and_an_unknown_id(clocked: Engine, clock: ManualClock) -> None:
    @clocked.task(id="later")
    def later(payload: Any, ctx: Any) -> str:
        return "done"

    handle = later.trigger(None, delay="10m")
    clocked.runs.retrieve(handle.id)
    trace = build_trace(clocked.store, handle.id, clock.now())
    delayed = trace["rows"][1]
    assert delayed["kind"] == "delayed" and delayed["end"] is None
    assert delayed["detail"]["until"] == pytest.approx(clock.now() + 600)
    assert [r["kind"] for r in trace["rows"]] == ["run", "delayed"]
    clock.advance(600)
    assert handle.wait(timeout=10).ok
    replay = clocked.runs.replay(handle.id)
    assert replay.wait(timeout=10).ok
    clocked.runs.retrieve(replay.id)
    again = build_trace(clocked.store, replay.id, clock.now())
    assert again["run"]["replayed_from"] == handle.id
    trace = build_trace(clocked.store, handle.id, clock.now())
    assert [r["kind"] for r in trace["rows"]] == ["run", "delayed", "queued", "attempt"]
    with pytest.raises(RunNotFoundError):
        build_trace(clocked.store, "run_missing", clock.now())
