"""The timeline's data from a real engine and file: queried by the window, busy queues
summarised instead of hiding the others (a 2,000-run burst), lanes for concurrent runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Gate

from nbtasks import Engine, RunStatus
from nbtasks.notebook.timeline_model import assign_lanes, build_timeline
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(120)


def test_a_burst_on_one_queue_is_summarised_and_hides_no_other_queue(engine: Engine) -> None:
    @engine.task(id="quiet")
    async def quiet(payload: Any, ctx: Any) -> None:
        return None

    @engine.task(id="burst", retry={"max_attempts": 1})
    async def burst(payload: int, ctx: Any) -> None:
        if payload % 10 == 0:
            raise ValueError("every tenth fails")

    early = [quiet.trigger(i) for i in range(3)]
    for h in early:
        h.wait(timeout=10)
    batches = [burst.batch_trigger(list(range(k, k + 500))) for k in range(0, 2000, 500)]
    for b in batches:
        b.wait(timeout=60)
    engine.runs.retrieve(early[0].id)  # pending writes land
    data = build_timeline(engine.store, engine.clock.now(), 3600)
    queues = {q["name"]: q for q in data["queues"]}
    assert queues["task/quiet"] == {"name": "task/quiet", "mode": "runs", "count": 3, "lanes": 1}
    assert queues["task/burst"]["mode"] == "summary" and queues["task/burst"]["count"] == 2000
    assert {b["id"] for b in data["bars"]} == {h.id for h in early}
    assert data["summarised"] == 2000
    assert sum(c["total"] for c in data["summary"]) == 2000
    failed = sum(c["counts"].get("FAILED", 0) for c in data["summary"])
    assert failed == 200
    # a budget that fits everything draws every run
    everything = build_timeline(engine.store, engine.clock.now(), 3600, max_bars=5000)
    assert len(everything["bars"]) == 2003 and not everything["summary"]


def test_the_query_is_by_the_window_and_keeps_older_runs_still_going(
        clocked: Engine, clock: ManualClock) -> None:
    gate = Gate(clocked)

    @clocked.task(id="tick")
    async def tick(payload: Any, ctx: Any) -> None:
        return None

    @clocked.task(id="held")
    async def held(payload: Any, ctx: Any) -> None:
        await gate.wait()

    old = tick.trigger("old")
    old.wait(timeout=10)
    running = held.trigger(None)
    clock.advance(2 * 3600)
    new = tick.trigger("new")
    new.wait(timeout=10)
    clocked.runs.retrieve(new.id)
    hour = build_timeline(clocked.store, clock.now(), 3600)
    assert {b["id"] for b in hour["bars"]} == {new.id, running.id}
    (still,) = [b for b in hour["bars"] if b["id"] == running.id]
    assert still["ended"] is None and still["status"] == "EXECUTING"
    day = build_timeline(clocked.store, clock.now(), 86400)
    assert {b["id"] for b in day["bars"]} == {old.id, new.id, running.id}
    gate.open()
    running.wait(timeout=10)


def test_a_long_run_that_ended_inside_the_window_is_drawn(
        clocked: Engine, clock: ManualClock, wait_status: Callable[..., RunStatus]) -> None:
    """Started two hours before a five-minute window and ended inside it: the window's scan
    of finished_at finds it, however long ago it started."""
    gate = Gate(clocked)

    @clocked.task(id="long")
    async def long(payload: Any, ctx: Any) -> None:
        await gate.wait()

    run = long.trigger(None)
    wait_status(clocked, run.id, RunStatus.EXECUTING)
    clock.advance(2 * 3600)
    gate.open()
    run.wait(timeout=10)
    clocked.runs.retrieve(run.id)
    data = build_timeline(clocked.store, clock.now() + 60, 300)
    (bar,) = data["bars"]
    assert bar["id"] == run.id and bar["status"] == "COMPLETED"
    assert bar["started"] < data["start"] <= bar["ended"]


def test_concurrent_runs_take_lanes(engine: Engine, wait_status: Callable[..., RunStatus]) -> None:
    gate = Gate(engine)

    @engine.task(id="pair", queue={"concurrency_limit": 2})
    async def pair(payload: Any, ctx: Any) -> None:
        await gate.wait()

    handles = [pair.trigger(i) for i in range(2)]
    for h in handles:
        wait_status(engine, h.id, RunStatus.EXECUTING)
    engine.runs.retrieve(handles[0].id)
    data = build_timeline(engine.store, engine.clock.now(), 60)
    assert sorted(b["lane"] for b in data["bars"]) == [0, 1]
    assert data["queues"][0]["lanes"] == 2
    gate.open()
    for h in handles:
        h.wait(timeout=10)


def test_lane_packing() -> None:
    assert assign_lanes([(0, 10), (1, 2), (3, 4), (11, 12)]) == [0, 1, 1, 0]
    assert assign_lanes([]) == []
