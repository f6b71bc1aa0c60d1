"""wait.for_ / wait.until on the manual clock, and waits that give the queue slot back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]

UNITS = [("seconds", 1), ("minutes", 60), ("hours", 3600), ("days", 86400),
         ("weeks", 604800), ("months", 30 * 86400), ("years", 365 * 86400)]


@pytest.mark.parametrize(("unit", "seconds"), UNITS)
def test_wait_for_each_unit(clocked: Engine, clock: ManualClock, wait_status: WaitStatus,
                            unit: str, seconds: int) -> None:
    @clocked.task(id=f"wait-{unit}")
    async def waiter(payload: Any, ctx: Any) -> float:
        await nbtasks.wait.for_(**{unit: 2})
        return clock.now()

    t0 = clock.now()
    handle = waiter.trigger(None)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(2 * seconds - 0.5)
    assert handle.status is RunStatus.WAITING
    clock.advance(0.5)
    assert handle.wait(timeout=10).output == t0 + 2 * seconds


def test_wait_for_sums_units(clocked: Engine, clock: ManualClock,
                             wait_status: WaitStatus) -> None:
    @clocked.task(id="wait-sum")
    async def waiter(payload: Any, ctx: Any) -> float:
        await clocked.wait.for_(hours=1, minutes=30, seconds=5)
        return clock.now()

    t0 = clock.now()
    handle = waiter.trigger(None)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.advance(5405)
    assert handle.wait(timeout=10).output == t0 + 5405


@pytest.mark.parametrize("units", [{}, {"fortnights": 1}, {"seconds": -1}, {"minutes": "5"}])
def test_wait_for_rejects_bad_units(engine: Engine, units: dict[str, Any]) -> None:
    @engine.task(id="bad-wait", retry=None)
    async def bad_wait(payload: Any, ctx: Any) -> None:
        await nbtasks.wait.for_(**units)

    result = bad_wait.trigger(None).wait(timeout=10)
    assert result.error is not None and result.error.type_name == "ConfigurationError"
    assert "wait.for_" in str(result.error)


def test_wait_until(clocked: Engine, clock: ManualClock, wait_status: WaitStatus) -> None:
    at = datetime.fromtimestamp(clock.now(), UTC) + timedelta(days=2)

    @clocked.task(id="until")
    async def until(payload: Any, ctx: Any) -> float:
        await nbtasks.wait.until(at)
        return clock.now()

    handle = until.trigger(None)
    wait_status(clocked, handle.id, RunStatus.WAITING)
    clock.set(at - timedelta(seconds=1))
    assert handle.status is RunStatus.WAITING
    clock.set(at)
    assert handle.wait(timeout=10).output == at.timestamp()


def test_wait_until_the_past(clocked: Engine, clock: ManualClock) -> None:
    past = datetime.fromtimestamp(clock.now(), UTC) - timedelta(minutes=1)

    @clocked.task(id="until-past", retry=None)
    async def until_past(payload: bool, ctx: Any) -> str:
        await nbtasks.wait.until(past, throw_if_in_the_past=payload)
        return "went on at once"

    assert until_past.trigger(False).wait(timeout=10).output == "went on at once"
    result = until_past.trigger(True).wait(timeout=10)
    assert result.error is not None and str(result.error) == "Date is in the past"

    @clocked.task(id="until-naive", retry=None)
    async def until_naive(payload: Any, ctx: Any) -> None:
        await nbtasks.wait.until(datetime(2030, 1, 1))

    assert "aware" in str(until_naive.trigger(None).wait(timeout=10).error)


def test_a_waiting_run_gives_its_slot_back(clocked: Engine, clock: ManualClock,
                                           wait_status: WaitStatus) -> None:
    @clocked.task(id="slot", queue={"concurrency_limit": 1})
    async def slot(payload: str, ctx: Any) -> str:
        if payload == "waits":
            await nbtasks.wait.for_(hours=1)
        return payload

    waiting = slot.trigger("waits")
    wait_status(clocked, waiting.id, RunStatus.WAITING)
    snap = clocked.queues.retrieve("task/slot")
    assert (snap["running"], snap["queued"]) == (0, 0)
    other = slot.trigger("runs meanwhile")
    assert other.wait(timeout=10).output == "runs meanwhile"
    assert waiting.status is RunStatus.WAITING
    clock.advance(3600)
    assert waiting.wait(timeout=10).output == "waits"
    assert clocked.queues.retrieve("task/slot")["peak"] == 1


def test_a_resuming_run_waits_for_a_free_slot(clocked: Engine, clock: ManualClock,
                                              wait_status: WaitStatus) -> None:
    gate = asyncio.Event()

    @clocked.task(id="resume-slot", queue={"concurrency_limit": 1})
    async def resume_slot(payload: str, ctx: Any) -> str:
        if payload == "waits":
            await nbtasks.wait.for_(seconds=10)
        else:
            await gate.wait()
        return payload

    waiting = resume_slot.trigger("waits")
    wait_status(clocked, waiting.id, RunStatus.WAITING)
    holder = resume_slot.trigger("holds")
    wait_status(clocked, holder.id, RunStatus.EXECUTING)
    clock.advance(10)  # the wait is over, but the only slot is taken
    snap = clocked.queues.retrieve("task/resume-slot")
    assert (snap["running"], snap["queued"]) == (1, 1)
    assert waiting.status is RunStatus.WAITING
    clocked.runtime.loop.call_soon_threadsafe(gate.set)
    assert waiting.wait(timeout=10).output == "waits"
    assert holder.wait(timeout=10).ok


def test_recursive_task_on_a_limit_one_queue_completes(engine: Engine) -> None:
    @engine.task(id="countdown", queue={"concurrency_limit": 1})
    async def countdown(payload: int, ctx: Any) -> list[int]:
        if payload == 0:
            return [0]
        rest = (await countdown.trigger_and_wait(payload - 1)).unwrap()
        return [payload, *rest]

    handle = countdown.trigger(4)
    assert handle.wait(timeout=10).output == [4, 3, 2, 1, 0]
    assert engine.queues.retrieve("task/countdown")["peak"] == 1


def test_batch_and_wait_parent_gives_its_slot_to_the_children(engine: Engine) -> None:
    @engine.task(id="tree", queue={"concurrency_limit": 1})
    async def tree(payload: int, ctx: Any) -> int:
        if payload == 0:
            return 1
        results = await tree.batch_trigger_and_wait([payload - 1] * 2)
        return sum(r.unwrap() for r in results)

    assert tree.trigger(3).wait(timeout=20).output == 8
    assert engine.queues.retrieve("task/tree")["peak"] == 1


def test_sync_bodies_use_blocking_waits(clocked: Engine, clock: ManualClock,
                                        wait_status: WaitStatus) -> None:
    @clocked.task(id="sync-child", queue={"concurrency_limit": 1})
    def child(payload: int, ctx: Any) -> int:
        return payload * 2

    @clocked.task(id="sync-waiter", queue={"concurrency_limit": 1})
    def waiter(payload: Any, ctx: Any) -> list[Any]:
        nbtasks.wait.for_sync(minutes=5)
        started = clock.now()
        handle = child.trigger(21)
        return [started, handle.wait(timeout=10).output]

    t0 = clock.now()
    parent = waiter.trigger(None)
    wait_status(clocked, parent.id, RunStatus.WAITING)
    assert clocked.queues.retrieve("task/sync-waiter")["running"] == 0
    clock.advance(300)
    assert parent.wait(timeout=10).output == [t0 + 300, 42]


def test_sync_parent_blocking_on_a_child_in_its_own_queue(engine: Engine) -> None:
    @engine.task(id="sync-recursive", queue={"concurrency_limit": 1})
    def recursive(payload: int, ctx: Any) -> int:
        if payload == 0:
            return 0
        return 1 + recursive.trigger(payload - 1).wait(timeout=10).unwrap()

    assert recursive.trigger(3).wait(timeout=20).output == 3


def test_blocking_forms_on_the_loop_name_the_async_form(engine: Engine) -> None:
    @engine.task(id="wrong-form", retry=None)
    async def wrong_form(payload: str, ctx: Any) -> None:
        if payload == "wait":
            nbtasks.wait.for_sync(seconds=1)
        else:
            engine.task(id="noop-child", run=lambda p, c: None).trigger(None).wait()

    waited = wrong_form.trigger("wait").wait(timeout=10)
    assert "await nbtasks.wait.for_" in str(waited.error)
    blocked = wrong_form.trigger("handle").wait(timeout=10)
    assert "await handle" in str(blocked.error)


def test_a_wait_abandoned_by_a_timeout_leaves_the_run_healthy(
    clocked: Engine, clock: ManualClock,
) -> None:
    @clocked.task(id="impatient", queue={"concurrency_limit": 1})
    async def impatient(payload: Any, ctx: Any) -> list[Any]:
        token = nbtasks.wait.create_token()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nbtasks.wait.for_token(token), timeout=0.05)
        # Executing again, holding its slot, before it carries on.
        return [clocked.status_of(ctx.run.id).value,
                clocked.queues.retrieve("task/impatient")["running"]]

    handle = impatient.trigger(None)
    assert handle.wait(timeout=10).output == ["EXECUTING", 1]
    assert clocked.queues.retrieve("task/impatient")["running"] == 0
    second = impatient.trigger(None)  # the slot was given back exactly once
    assert second.wait(timeout=10).output == ["EXECUTING", 1]


def test_a_sync_body_whose_handle_wait_times_out_carries_on(engine: Engine) -> None:
    @engine.task(id="slow-child")
    async def slow_child(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(3600)

    @engine.task(id="gives-up-waiting", queue={"concurrency_limit": 1})
    def gives_up(payload: Any, ctx: Any) -> list[Any]:
        child = slow_child.trigger(None)
        with contextlib.suppress(nbtasks.RunWaitTimeoutError):
            child.wait(timeout=0.05)
        return [engine.status_of(ctx.run.id).value,
                engine.queues.retrieve("task/gives-up-waiting")["running"]]

    handle = gives_up.trigger(None)
    assert handle.wait(timeout=10).output == ["EXECUTING", 1]
    assert engine.queues.retrieve("task/gives-up-waiting")["running"] == 0


def test_an_abandoned_wait_takes_its_slot_back_before_the_body_goes_on(
    engine: Engine, wait_status: WaitStatus,
) -> None:
    gate = asyncio.Event()
    child_ids: list[str] = []
    triggered = threading.Event()
    shared = nbtasks.queue(name="one-slot", concurrency_limit=1)

    @engine.task(id="slot-child", queue=shared)
    async def slot_child(payload: Any, ctx: Any) -> str:
        await gate.wait()
        return "child done"

    @engine.task(id="slot-parent", queue=shared)
    def slot_parent(payload: Any, ctx: Any) -> str:
        child = slot_child.trigger(None)
        child_ids.append(child.id)
        triggered.set()
        try:
            child.wait(timeout=0.05)  # the child takes the only slot meanwhile
        except nbtasks.RunWaitTimeoutError:
            return "gave up, then had the slot back"
        return "never"

    handle = slot_parent.trigger(None)
    assert triggered.wait(10)
    wait_status(engine, child_ids[0], RunStatus.EXECUTING)
    # Once the parent's wait has timed out it queues for the slot the child holds; only then
    # does the child finish, so the parent's body is held until it has the slot back.
    deadline = time.monotonic() + 10
    while engine.queues.retrieve("one-slot")["queued"] != 1:
        assert time.monotonic() < deadline, "the timed-out wait never queued for its slot"
        time.sleep(0.005)
    assert handle.status is RunStatus.WAITING
    assert engine.queues.retrieve("one-slot")["running"] == 1
    engine.runtime.loop.call_soon_threadsafe(gate.set)
    assert handle.wait(timeout=10).output == "gave up, then had the slot back"
    assert engine.wait_result(child_ids[0], timeout=10).output == "child done"
    assert engine.queues.retrieve("one-slot")["peak"] == 1


def test_a_body_may_return_with_a_detached_wait_still_parked(
    clocked: Engine, clock: ManualClock,
) -> None:
    @clocked.task(id="detached", queue={"concurrency_limit": 1})
    async def detached(payload: Any, ctx: Any) -> str:
        asyncio.get_running_loop().create_task(nbtasks.wait.for_(hours=1))
        await asyncio.sleep(0)  # the detached wait parks the run
        return "returned anyway"

    first = detached.trigger(None)
    assert first.wait(timeout=10).output == "returned anyway"
    assert clocked.queues.retrieve("task/detached")["running"] == 0
    assert detached.trigger(None).wait(timeout=10).ok
    clock.advance(3600)  # the dropped wait does not come back to life
    assert clocked.runs.retrieve(first.id).status is RunStatus.COMPLETED
