"""Cancellation: at any non-final status, with children, hooks and late results."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import nbtasks
from nbtasks import Engine, RunStatus
from nbtasks.testing import ManualClock

WaitStatus = Callable[..., RunStatus]


def logs(eng: Engine, run_id: str) -> list[tuple[str, str]]:
    eng.runs.retrieve(run_id)  # lets pending writes land
    return list(eng.store.select("SELECT level, message FROM logs WHERE run_id=? ORDER BY ts",
                                 (run_id,))[1])


def test_a_queued_run_never_starts(engine: Engine) -> None:
    calls: list[str] = []

    @engine.task(id="queued", on_cancel=lambda p, c: calls.append("on_cancel"))
    async def queued(payload: Any, ctx: Any) -> None:
        calls.append("ran")

    engine.queues.pause("task/queued")
    handle = queued.trigger(None)
    assert handle.cancel() is True
    assert handle.wait(timeout=10).status is RunStatus.CANCELED
    engine.queues.resume("task/queued")
    assert queued.trigger(None).wait(timeout=10).ok  # the queue works; the cancelled run stays out
    run = engine.runs.retrieve(handle.id)
    assert run.status is RunStatus.CANCELED and run.attempt_count == 0 and run.started_at is None
    assert calls == ["ran"]  # once, for the second run; on_cancel only fires while executing


def test_a_delayed_run_never_starts(clocked: Engine, clock: ManualClock) -> None:
    calls: list[str] = []

    @clocked.task(id="delayed")
    async def delayed(payload: Any, ctx: Any) -> None:
        calls.append("ran")

    handle = delayed.trigger(None, delay="1h")
    assert clocked.runs.cancel(handle.id) is True
    clock.advance(7200)
    assert handle.wait(timeout=10).status is RunStatus.CANCELED
    assert calls == [] and clock.pending() == 0


def test_a_retrying_run_is_not_retried(clocked: Engine, clock: ManualClock,
                                       wait_status: WaitStatus) -> None:
    calls: list[int] = []

    @clocked.task(id="reattempting", retry={"max_attempts": 3, "min_timeout_in_ms": 1000})
    async def reattempting(payload: Any, ctx: Any) -> None:
        calls.append(ctx.attempt.number)
        raise RuntimeError("fails")

    handle = reattempting.trigger(None)
    wait_status(clocked, handle.id, RunStatus.REATTEMPTING)
    assert handle.cancel() is True
    clock.advance(3600)
    assert handle.wait(timeout=10).status is RunStatus.CANCELED and calls == [1]


def test_an_executing_async_body_is_cancelled(engine: Engine, wait_status: WaitStatus) -> None:
    calls: list[str] = []
    done = threading.Event()

    async def on_cancel(payload: Any, ctx: Any) -> None:
        calls.append(f"on_cancel({payload}, {ctx.signal.reason})")

    def cleanup(payload: Any, ctx: Any) -> None:
        calls.append("cleanup")
        done.set()

    @engine.task(id="long", on_cancel=on_cancel, cleanup=cleanup,
                 on_failure=lambda p, e, c: calls.append("on_failure"))
    async def long(payload: Any, ctx: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            calls.append("body cancelled")
            raise

    handle = long.trigger("p")
    wait_status(engine, handle.id, RunStatus.EXECUTING)
    assert engine.runs.cancel(handle.id) is True
    assert handle.status is RunStatus.CANCELED  # at once
    assert done.wait(10)
    assert calls == ["body cancelled", "on_cancel(p, cancel)", "cleanup"]
    run = engine.runs.retrieve(handle.id)
    assert run.is_cancelled and [a.status for a in run.attempts] == ["CANCELED"]
    assert ("info", "run cancelled while executing") in logs(engine, handle.id)


def test_a_sync_body_gets_the_signal_and_its_late_result_is_discarded(
    engine: Engine, wait_status: WaitStatus,
) -> None:
    release = threading.Event()
    finished = threading.Event()
    seen: list[Any] = []

    @engine.task(id="sync-long", on_failure=lambda p, e, c: seen.append("on_failure"))
    def sync_long(payload: Any, ctx: Any) -> str:
        release.wait(10)  # ignores the signal until the test lets it go
        seen.append((ctx.signal.is_set(), ctx.signal.reason))
        finished.set()
        return "late result"

    handle = sync_long.trigger(None)
    wait_status(engine, handle.id, RunStatus.EXECUTING)
    assert handle.cancel() is True
    result = handle.wait(timeout=10)  # returns while the thread is still blocked
    assert result.status is RunStatus.CANCELED and not finished.is_set()
    release.set()
    assert finished.wait(10)
    wait_for_log(engine, handle.id, "late result discarded")
    run = engine.runs.retrieve(handle.id)
    assert run.status is RunStatus.CANCELED and run.output is None
    assert seen == [(True, "cancel")]


def wait_for_log(eng: Engine, run_id: str, fragment: str) -> None:
    hit = threading.Event()
    unsubscribe = eng.subscribe(lambda e: hit.set() if e.kind == "log" else None)
    try:
        for _ in range(3):
            if any(fragment in m for _, m in logs(eng, run_id)):
                return
            hit.wait(5)
            hit.clear()
        raise AssertionError(f"no {fragment!r} in {logs(eng, run_id)}")
    finally:
        unsubscribe()


def test_children_still_running_are_cancelled(engine: Engine, wait_status: WaitStatus) -> None:
    @engine.task(id="child")
    async def child(payload: str, ctx: Any) -> str:
        if payload == "quick":
            return payload
        await asyncio.sleep(3600)
        return payload

    @engine.task(id="grandchild-parent")
    async def middle(payload: Any, ctx: Any) -> None:
        await child.trigger_and_wait("slow")

    @engine.task(id="parent")
    async def parent(payload: Any, ctx: Any) -> None:
        (await child.trigger_and_wait("quick")).unwrap()
        child.trigger("slow")
        await middle.trigger_and_wait(None)

    # The parent waits twice (on "quick", then on the middle run), so its own WAITING says
    # nothing about how far it got: sequence on the middle run reaching WAITING instead.
    middle_waiting = threading.Event()
    unsubscribe = engine.subscribe(
        lambda e: middle_waiting.set()
        if e.task_id == "grandchild-parent" and e.status is RunStatus.WAITING else None)
    try:
        handle = parent.trigger(None)
        assert middle_waiting.wait(10), engine.runs.list(limit=10)
    finally:
        unsubscribe()
    mids = engine.runs.list(task_id="grandchild-parent")
    assert len(mids) == 1
    wait_status(engine, handle.id, RunStatus.WAITING)
    assert handle.cancel() is True
    statuses = {r.payload if r.task_id == "child" else r.task_id: r.status
                for r in engine.runs.list(limit=10) if r.id != handle.id}
    assert engine.runs.retrieve(handle.id).status is RunStatus.CANCELED
    assert statuses["quick"] is RunStatus.COMPLETED  # finished children are left alone
    assert statuses["grandchild-parent"] is RunStatus.CANCELED
    slow = [r for r in engine.runs.list(task_id="child") if r.payload == "slow"]
    assert len(slow) == 2 and {r.status for r in slow} == {RunStatus.CANCELED}


def test_cancelling_a_final_run_is_a_no_op_that_says_so(engine: Engine) -> None:
    @engine.task(id="finished")
    async def finished(payload: Any, ctx: Any) -> int:
        return 1

    handle = finished.trigger(None)
    handle.wait(timeout=10)
    assert handle.cancel() is False and engine.runs.cancel(handle.id) is False
    assert nbtasks.runs.cancel is not None
    assert engine.runs.retrieve(handle.id).status is RunStatus.COMPLETED


def test_a_waiting_run_is_cancelled(engine: Engine, wait_status: WaitStatus) -> None:
    token = engine.wait.create_token()
    calls: list[str] = []

    @engine.task(id="waits-on-token", on_cancel=lambda p, c: calls.append("on_cancel"))
    async def waits(payload: str, ctx: Any) -> None:
        await nbtasks.wait.for_token(payload)
        calls.append("resumed")

    handle = waits.trigger(token.id)
    wait_status(engine, handle.id, RunStatus.WAITING)
    assert handle.cancel() is True
    assert handle.wait(timeout=10).status is RunStatus.CANCELED
    engine.wait.complete_token(token, {})
    assert engine.runs.retrieve(handle.id).status is RunStatus.CANCELED
    assert "resumed" not in calls


def test_cancel_from_inside_another_run(engine: Engine, wait_status: WaitStatus) -> None:
    @engine.task(id="victim")
    async def victim(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(3600)

    @engine.task(id="canceller")
    async def canceller(payload: str, ctx: Any) -> bool:
        return engine.runs.cancel(payload)

    target = victim.trigger(None)
    wait_status(engine, target.id, RunStatus.EXECUTING)
    assert canceller.trigger(target.id).wait(timeout=10).output is True
    assert target.wait(timeout=10).status is RunStatus.CANCELED


def test_a_cancelled_sync_body_is_released_from_its_blocking_wait(
    engine: Engine, wait_status: WaitStatus,
) -> None:
    token = engine.wait.create_token()
    released: list[str] = []
    done = threading.Event()

    @engine.task(id="sync-blocked")
    def sync_blocked(payload: str, ctx: Any) -> None:
        try:
            if payload == "token":
                nbtasks.wait.for_token_sync(token)
            else:
                child = engine.task(id="never-ends", run=never_ends).trigger(None)
                child.wait()
        except BaseException as exc:  # the blocking call gives up once the run is cancelled
            released.append(f"{payload}: {type(exc).__name__}, signal={ctx.signal.is_set()}")
            raise
        finally:
            done.set()

    async def never_ends(payload: Any, ctx: Any) -> None:
        await asyncio.sleep(3600)

    for kind in ("token", "handle"):
        done.clear()
        handle = sync_blocked.trigger(kind)
        wait_status(engine, handle.id, RunStatus.WAITING)
        assert handle.cancel() is True
        assert handle.wait(timeout=10).status is RunStatus.CANCELED
        assert done.wait(10), f"the {kind} wait kept its thread after the cancel"
    assert [r.split(":")[0] for r in released] == ["token", "handle"]
    assert all(r.endswith("signal=True") for r in released)
