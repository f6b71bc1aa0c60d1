"""Runs in worker processes trigger, wait and read runs through the kernel: a wait parks the
parent exactly as in the kernel, on the kernel's clock, and a full pool can't deadlock it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.executors.process import ProcessExecutor
from nbtasks.testing import ManualClock

pytestmark = pytest.mark.timeout(60)

MakeEngine = Callable[..., Engine]


def test_a_worker_run_waits_on_a_child_of_its_own_preset_with_a_pool_of_one(
        process_engine: MakeEngine) -> None:
    eng = process_engine(max_workers=1)
    statuses: list[tuple[str, RunStatus]] = []
    eng.subscribe(lambda e: statuses.append((e.run_id, e.status)))

    @eng.task(id="child", machine="micro")
    def child(payload: int, ctx: Any) -> list[int]:
        return [payload + 1, os.getpid()]

    @eng.task(id="parent", machine="micro")
    async def parent(payload: int, ctx: Any) -> list[Any]:
        got = await child.trigger_and_wait(payload)
        batch = await child.batch_trigger_and_wait([10, 20])
        handle = child.trigger(5)
        later = await handle
        return [got.unwrap(), [r.output for r in batch], later.output, os.getpid()]

    result = parent.trigger(1).wait(timeout=45)
    assert result.ok, result.error
    out = result.output
    assert out is not None
    assert out[0][0] == 2 and [o[0] for o in out[1]] == [11, 21] and out[2][0] == 6
    assert out[0][1] != out[3]  # the child ran on a second worker while the parent waited
    children = eng.runs.list(task_id="child")
    assert {c.parent_id for c in children} == {result.id}
    assert (result.id, RunStatus.WAITING) in statuses
    executor = eng.preset_executor
    assert isinstance(executor, ProcessExecutor)
    assert eng.on_loop(lambda: len(executor.pools["micro"].workers)) == 1  # borrowed, retired


def test_a_wait_in_a_worker_runs_on_the_kernels_clock(
        process_engine: MakeEngine, clock: ManualClock,
        wait_status: Callable[..., RunStatus]) -> None:
    eng = process_engine(clock=clock)

    @eng.task(id="sleeper", machine="micro")
    async def sleeper(payload: None, ctx: Any) -> str:
        await nbtasks.wait.for_(hours=1)
        return "woke"

    handle = sleeper.trigger(None)
    wait_status(eng, handle.id, RunStatus.WAITING, timeout=30)
    clock.advance(3599)
    assert handle.status is RunStatus.WAITING
    clock.advance(1)
    assert handle.wait(timeout=30).output == "woke"


def test_a_retry_from_a_worker_is_scheduled_on_the_kernels_clock(
        process_engine: MakeEngine, clock: ManualClock,
        wait_status: Callable[..., RunStatus]) -> None:
    eng = process_engine(clock=clock)

    @eng.task(id="flaky", machine="micro",
              retry={"max_attempts": 2, "min_timeout_in_ms": 60_000, "randomize": False})
    def flaky(payload: None, ctx: Any) -> int:
        if ctx.attempt.number == 1:
            raise RuntimeError("first time")
        return ctx.attempt.number

    start = clock.now()
    handle = flaky.trigger(None)
    wait_status(eng, handle.id, RunStatus.REATTEMPTING, timeout=30)
    run = eng.runs.retrieve(handle.id)
    assert run.delay_until is not None
    assert run.delay_until.timestamp() == pytest.approx(start + 60, abs=1)
    clock.advance(61)
    assert handle.wait(timeout=30).output == 2


def test_tokens_and_runs_api_from_a_worker(process_engine: MakeEngine,
                                           wait_status: Callable[..., RunStatus]) -> None:
    eng = process_engine()

    @eng.task(id="approver", machine="micro")
    async def approver(payload: None, ctx: Any) -> Any:
        token = nbtasks.wait.create_token(timeout="1h", tags=["approval"])
        nbtasks.metadata.set("token", token.id)
        got = await nbtasks.wait.for_token(token)
        me = nbtasks.runs.retrieve(ctx.run.id)
        return [got.output, me.id, me.status.value]

    handle = approver.trigger(None)
    wait_status(eng, handle.id, RunStatus.WAITING, timeout=30)
    token = eng.runs.retrieve(handle.id).metadata["token"]
    assert eng.wait.complete_token(token, {"approved": True})
    assert handle.wait(timeout=30).output == [{"approved": True}, handle.id, "EXECUTING"]


def test_a_sync_body_in_a_worker_blocks_on_a_child(process_engine: MakeEngine) -> None:
    eng = process_engine()
    child = eng.task(id="child", run=lambda p, ctx: p * 2)

    @eng.task(id="parent", machine="micro")
    def parent(payload: int, ctx: Any) -> Any:
        handle = child.trigger(payload)
        return handle.wait(timeout=20).output

    assert parent.trigger(21).wait(timeout=30).output == 42


def test_cancelling_an_awaited_request_in_a_worker_withdraws_it(
        process_engine: MakeEngine) -> None:
    eng = process_engine()

    @eng.task(id="slow-child")
    async def slow_child(payload: None, ctx: Any) -> str:
        await asyncio.sleep(30)
        return "late"

    @eng.task(id="impatient", machine="micro")
    async def impatient(payload: None, ctx: Any) -> str:
        try:
            await asyncio.wait_for(slow_child.trigger_and_wait(None), 0.3)
        except TimeoutError:
            return "gave up"
        return "waited"

    result = impatient.trigger(None).wait(timeout=30)
    assert result.output == "gave up"
    child = eng.runs.list(task_id="slow-child")[0]
    assert child.parent_id == result.id
    assert eng.runs.cancel(child.id)


def test_trigger_by_id_from_a_worker_reaches_the_engine_of_the_run(
        process_engine: MakeEngine) -> None:
    eng = process_engine()
    eng.task(id="target", run=lambda p, ctx: f"target got {p}")

    @eng.task(id="caller", machine="micro")
    async def caller(payload: None, ctx: Any) -> Any:
        return (await nbtasks.tasks.trigger_and_wait("target", 7)).output

    assert caller.trigger(None).wait(timeout=30).output == "target got 7"


def test_a_worker_body_may_open_with_a_timeout_and_a_task_group(
        process_engine: MakeEngine) -> None:
    """Both need a current task from the body's first step: a real worker process gives it
    one, as the kernel's loop does."""
    eng = process_engine(max_workers=1)

    @eng.task(id="grouped", machine="micro")
    async def grouped(payload: int, ctx: Any) -> int:
        async with asyncio.timeout(5), asyncio.TaskGroup() as group:
            child = group.create_task(asyncio.sleep(0, payload + 1))
        return child.result()

    result = grouped.trigger(2).wait(timeout=30)
    assert (result.status, result.output) == (RunStatus.COMPLETED, 3), result.error
