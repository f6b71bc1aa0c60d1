"""The engine works in slices: a burst never holds its loop for the whole burst.

Measured by the order of callbacks on the engine loop, never by timing: a callback queued just
after a burst became ready must run after at most one slice of that burst's work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from _helpers import wait_queued

from nbtasks import Engine, RunStatus
from nbtasks._scheduler import STARTS_PER_TURN

BURST = 4 * STARTS_PER_TURN + 7


@pytest.mark.timeout(60)
def test_a_burst_of_starts_lets_other_callbacks_in(engine: Engine) -> None:
    """A queue raised from 0 with hundreds waiting: the next callback waits for one slice."""
    started: list[int] = []
    seen: list[int] = []

    @engine.task(id="burst", queue={"concurrency_limit": 0})
    async def burst(payload: int, ctx: Any) -> None:
        started.append(payload)

    batch = burst.batch_trigger(list(range(BURST)))
    wait_queued(engine, "task/burst", BURST)
    loop = engine.runtime.loop

    def raise_limit() -> None:
        engine.scheduler.dispatcher.configure("task/burst", 1000, None)
        loop.call_soon(lambda: seen.append(len(started)))  # the next callback in line

    engine.on_loop(raise_limit)
    assert all(r.ok for r in batch.wait(timeout=30))
    assert sorted(started) == list(range(BURST))
    assert seen and seen[0] <= STARTS_PER_TURN, seen


@pytest.mark.timeout(60)
def test_a_start_deferred_to_the_next_turn_is_dropped_when_the_run_ends(engine: Engine) -> None:
    started: list[int] = []

    @engine.task(id="deferred", queue={"concurrency_limit": 0})
    async def deferred(payload: int, ctx: Any) -> None:
        started.append(payload)

    batch = deferred.batch_trigger(list(range(BURST)))
    wait_queued(engine, "task/deferred", BURST)
    # Past the first turn's starts, within the engine's limit of 100: a slot, no attempt yet.
    victim = STARTS_PER_TURN + 1
    last = batch.runs[victim]

    def raise_then_cancel() -> None:
        sched = engine.scheduler
        sched.dispatcher.configure("task/deferred", 1000, None)
        run = sched.active[last.id]
        assert run.holds_slot and run.attempt_task is None  # given a slot, start deferred
        sched.stop(run, RunStatus.CANCELED, "cancel")

    engine.on_loop(raise_then_cancel)
    results = batch.wait(timeout=30)
    assert [r.status for r in results].count(RunStatus.COMPLETED) == BURST - 1
    assert results[victim].status is RunStatus.CANCELED
    assert sorted(started) == [i for i in range(BURST) if i != victim]
    cancelled = engine.runs.retrieve(last.id)
    assert (cancelled.attempt_count, cancelled.attempts) == (0, [])  # no attempt ever began
    assert engine.scheduler.dispatcher.running == 0


@pytest.mark.timeout(60)
def test_a_run_that_ends_hands_its_slot_over_in_the_same_step(engine: Engine) -> None:
    """Limit 1: the next run's attempt exists as soon as the previous one has finished."""
    order: list[str] = []

    @engine.task(id="relay", queue={"concurrency_limit": 1})
    async def relay(payload: int, ctx: Any) -> None:
        order.append(f"run {payload}")
        loop = asyncio.get_running_loop()
        # Queued while this run is still executing: a hand-over needing an extra loop turn
        # would let it in before the next run's first step.
        loop.call_soon(lambda: loop.call_soon(lambda: order.append(f"after {payload}")))

    batch = relay.batch_trigger([0, 1, 2])
    assert all(r.ok for r in batch.wait(timeout=30))
    assert order.index("run 1") < order.index("after 0")
    assert order.index("run 2") < order.index("after 1")


@pytest.mark.timeout(60)
def test_waiting_on_a_finished_batch_needs_no_engine_loop(engine: Engine) -> None:
    """The results of runs already finished are read on the caller's thread: a batch waited
    for while the engine loop is busy answers at once, and adds nothing to the loop's work."""

    @engine.task(id="quick")
    async def quick(payload: int, ctx: Any) -> int:
        return payload * 2

    batch = quick.batch_trigger(list(range(300)))
    assert all(r.ok for r in batch.wait(timeout=30))
    deadline = time.monotonic() + 30
    while any(h.id in engine.scheduler.active for h in batch.runs):  # let go of by the engine
        assert time.monotonic() < deadline
        time.sleep(0.01)
    held, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        held.set()
        release.wait(30)

    engine.runtime.loop.call_soon_threadsafe(hold_the_loop)
    try:
        assert held.wait(10)
        results = batch.wait(timeout=5)
        assert [r.output for r in results] == [i * 2 for i in range(300)]
    finally:
        release.set()
