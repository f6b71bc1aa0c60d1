"""The order runs start in (FIFO, priority, retries first) and queues.pause/resume/list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _helpers import Gate

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]




def ordered_task(eng: Engine, task_id: str, order: list[str], gate: Gate, **options: Any) -> Any:
    """A limit-1 task that records its payload as it starts; payload "block" waits on `gate`."""

    async def body(payload: str, ctx: Any) -> str:
        order.append(payload)
        if payload == "block":
            await gate.wait()
        return payload

    return eng.task(id=task_id, run=body, queue={"concurrency_limit": 1}, **options)


def test_fifo_by_queue_time(engine: Engine, wait_status: WaitStatus) -> None:
    order: list[str] = []
    gate = Gate(engine)
    t = ordered_task(engine, "fifo", order, gate)
    blocker = t.trigger("block")
    wait_status(engine, blocker.id, RunStatus.EXECUTING)
    handles = [t.trigger(f"r{i}") for i in range(8)]
    assert engine.queues.retrieve("task/fifo")["queued"] == 8
    gate.open()
    for h in handles:
        h.wait(timeout=10)
    assert order == ["block"] + [f"r{i}" for i in range(8)]


def test_priority_moves_a_run_earlier_by_that_many_seconds(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    order: list[str] = []
    gate = Gate(clocked)
    t = ordered_task(clocked, "prio", order, gate)
    blocker = t.trigger("block")
    wait_status(clocked, blocker.id, RunStatus.EXECUTING)
    handles = [t.trigger("old-0")]            # queued at t0
    clock.advance(30)
    handles.append(t.trigger("new-30"))       # t0+30
    handles.append(t.trigger("boost-10", priority=10))   # t0+20: after old-0, before new-30
    handles.append(t.trigger("boost-60", priority=60))   # t0-30: ahead of everything
    handles.append(t.trigger("boost-30", priority=30))   # t0+0, ties with old-0: trigger order
    gate.open()
    for h in handles:
        h.wait(timeout=10)
    assert order == ["block", "boost-60", "old-0", "boost-30", "boost-10", "new-30"]


def test_retries_go_ahead_of_fresh_runs(
    clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
) -> None:
    order: list[str] = []
    gate = Gate(clocked)

    async def body(payload: str, ctx: Any) -> str:
        order.append(f"{payload}#{ctx.attempt.number}")
        if payload == "block":
            await gate.wait()
        if payload == "flaky" and ctx.attempt.number == 1:
            raise RuntimeError("first attempt fails")
        return payload

    t = clocked.task(id="retry-first", run=body, queue={"concurrency_limit": 1},
                     retry={"max_attempts": 2, "min_timeout_in_ms": 1000, "randomize": False})
    flaky = t.trigger("flaky")
    wait_status(clocked, flaky.id, RunStatus.REATTEMPTING)
    blocker = t.trigger("block")
    wait_status(clocked, blocker.id, RunStatus.EXECUTING)
    fresh = [t.trigger(f"fresh{i}") for i in range(3)]
    clock.advance(1)  # the retry is due: it queues behind the blocker, ahead of the fresh runs
    gate.open()
    for h in [flaky, blocker, *fresh]:
        assert h.wait(timeout=10).ok
    assert order == ["flaky#1", "block#1", "flaky#2", "fresh0#1", "fresh1#1", "fresh2#1"]


def test_pause_resume_and_list_counts(engine: Engine, wait_status: WaitStatus) -> None:
    gate = Gate(engine)

    @engine.task(id="pausable", queue={"concurrency_limit": 2})
    async def pausable(payload: int, ctx: Any) -> int:
        await gate.wait()
        return payload

    running = [pausable.trigger(i) for i in range(2)]
    for h in running:
        wait_status(engine, h.id, RunStatus.EXECUTING)
    engine.queues.pause("task/pausable")
    gate.open()
    for h in running:
        h.wait(timeout=10)  # running ones finish
    queued = [pausable.trigger(i) for i in range(2, 5)]  # triggers still queue
    snap = engine.queues.retrieve("task/pausable")
    assert (snap["paused"], snap["running"], snap["queued"], snap["concurrency_limit"]) == (
        True, 0, 3, 2)
    assert all(h.status is RunStatus.QUEUED for h in queued)
    assert {q["name"] for q in engine.queues.list()} >= {"task/pausable"}
    engine.queues.resume("task/pausable")
    assert [h.wait(timeout=10).output for h in queued] == [2, 3, 4]
    snap = engine.queues.retrieve("task/pausable")
    assert (snap["paused"], snap["running"], snap["queued"]) == (False, 0, 0)


def test_module_level_queues_api() -> None:
    @nbtasks.task(id="queues-module", queue=nbtasks.queue(name="module-q", concurrency_limit=1))
    async def module_task(payload: int, ctx: Any) -> int:
        return payload

    nbtasks.queues.pause("module-q")
    handle = module_task.trigger(1)
    listed = {q["name"]: q for q in nbtasks.queues.list()}
    assert listed["module-q"]["queued"] == 1 and listed["module-q"]["paused"] is True
    nbtasks.queues.resume("module-q")
    assert handle.wait(timeout=10).output == 1


def test_a_paused_queue_does_not_block_other_queues(engine: Engine) -> None:
    @engine.task(id="stopped")
    async def stopped(payload: Any, ctx: Any) -> None:
        return None

    @engine.task(id="flowing")
    async def flowing(payload: Any, ctx: Any) -> str:
        return "ran"

    engine.queues.pause("task/stopped")
    held = stopped.trigger(None)
    assert flowing.trigger(None).wait(timeout=10).output == "ran"
    assert held.status is RunStatus.QUEUED
    engine.queues.resume("task/stopped")
    assert held.wait(timeout=10).ok
