"""The bridge between callers' threads and loops and the engine loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nbtasks import Engine
from nbtasks._runtime import LINGER, STREAM, Mailbox
from nbtasks.testing import ManualClock


def test_a_call_that_raises_at_once_fails_only_its_caller(engine: Engine) -> None:
    rt = engine.runtime
    loop = rt.loop

    def bad() -> asyncio.Future[int]:
        raise ValueError("raised before any future existed")

    def good(n: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = loop.create_future()
        fut.set_result(n)
        return fut

    async def main() -> list[Any]:
        # Posted together, so one mailbox drain starts all three on the engine loop.
        return await asyncio.gather(rt.run(good, 1), rt.run(bad), rt.run(good, 2),
                                    return_exceptions=True)

    first, error, second = asyncio.run(main())
    assert (first, second) == (1, 2)
    assert isinstance(error, ValueError)
    with pytest.raises(ValueError, match="raised before"):
        rt.call(bad)
    assert rt.call(good, 3) == 3


class _CountingMailbox(Mailbox):
    """A mailbox that counts how often it wakes its loop."""

    wakes = 0

    def _wake(self) -> None:
        self.wakes += 1
        super()._wake()


def test_lazy_posts_wait_for_the_linger_and_a_plain_post_runs_them_in_order() -> None:
    """After a drain that ran a lazy post (a run handed over by a cell's trigger), lazy posts
    wake nobody until the linger ends; a plain post (a wait, a cancel) wakes the loop at
    once and runs after everything posted before it."""
    loop = asyncio.new_event_loop()
    try:
        box = _CountingMailbox(loop)
        box.linger = 3600.0  # its end is called by hand below: no race with the clock
        ran: list[Any] = []

        def turn() -> None:
            loop.run_until_complete(asyncio.sleep(0))

        box.post_lazy(ran.append, 1)
        turn()
        assert ran == [1] and box.wakes == 1  # the first one wakes the idle loop

        box.post_lazy(ran.append, 2)
        box.post_lazy(ran.append, 3)
        turn()
        assert ran == [1] and box.wakes == 1  # lingering: no wake, not run yet

        box.post(ran.append, "wait")
        assert box.wakes == 2
        turn()
        assert ran == [1, 2, 3, "wait"]

        box.post_lazy(ran.append, 4)
        turn()
        assert ran == [1, 2, 3, "wait"] and box.wakes == 2
        loop.call_soon(box._linger_end)  # the linger's end runs it, and lingers again
        turn()
        assert ran == [1, 2, 3, "wait", 4] and box.wakes == 2
        loop.call_soon(box._linger_end)  # nothing came meanwhile: it stops lingering
        turn()
        box.post_lazy(ran.append, 5)
        assert box.wakes == 3  # idle again: a lazy post wakes the loop
        turn()
        assert ran[-1] == 5

        # With the real timer: what waits for the linger runs when it ends.
        box.linger = LINGER
        box._linger_end()
        box.post_lazy(ran.append, 6)
        turn()
        box.post_lazy(ran.append, 7)
        loop.run_until_complete(asyncio.sleep(LINGER * 50))
        assert ran[-2:] == [6, 7]
    finally:
        loop.close()


def test_a_clock_advance_from_the_cell_comes_after_the_runs_it_triggered(
        clocked: Engine, clock: ManualClock) -> None:
    """`ManualClock.advance` reaches the engine through its mailbox, so a run a cell triggered
    just before is handed over first, however long the hand-over lingers."""
    clocked.runtime.inbox.linger = 3600.0  # a lazy hand-over waits for the next plain post
    # When each run reached the engine, by the engine's clock. (Read there: once the clock has
    # moved, the runs are due, run at once and may be finished before the cell looks again.)
    armed: dict[str, float] = {}
    clocked.subscribe(
        lambda event: armed.setdefault(event.run_id, clock.now()) if event.kind == "created"
        else None)

    @clocked.task(id="later")
    async def later(payload: int, ctx: Any) -> int:
        return payload

    first = later.trigger(1, delay="10s")  # the engine is idle: this one wakes it
    clocked.on_loop(lambda: None)  # a plain post: runs after the hand-over, which now lingers
    assert first.id in clocked.scheduler.active
    second = later.trigger(2, delay="10s")  # lingers
    assert second.id not in clocked.scheduler.active
    start = clock.now()
    clock.advance(10)
    assert armed[second.id] == start  # handed over before the clock moved
    assert [r.output for r in clocked.wait_results([first.id, second.id], timeout=10)] == [1, 2]


def test_a_sync_body_ends_after_the_child_it_triggered_is_handed_over(engine: Engine) -> None:
    """A sync body's result reaches the engine through the mailbox too: a child it triggered
    just before returning is armed before its parent is reported finished."""
    engine.runtime.inbox.linger = 3600.0  # a lazy hand-over waits for the next plain post
    events: list[tuple[str, str, str]] = []

    @engine.task(id="child")
    async def child(payload: int, ctx: Any) -> int:
        return payload

    @engine.task(id="parent")
    def parent(payload: int, ctx: Any) -> str:
        return child.trigger(payload).id

    engine.subscribe(lambda e: events.append((e.kind, e.task_id, e.status.value)))
    handle = parent.trigger(1)
    child_id = handle.wait(timeout=10).output
    assert engine.wait_result(child_id, timeout=10).output == 1
    created = events.index(("created", "child", "QUEUED"))
    assert created < events.index(("status", "parent", "COMPLETED")), events


def test_a_stream_of_lazy_posts_stretches_the_linger_and_a_quiet_linger_ends_it() -> None:
    """Hand-overs that keep coming (STREAM or more per `linger` of a linger's length) double
    the next linger, up to its most; a linger that gathers fewer starts over at `linger`, and
    one that gathers nothing ends the stream. It is a stream for the writer (`streaming`)
    once the linger has doubled three times. A plain post still runs everything at once."""
    loop = asyncio.new_event_loop()
    try:
        box = Mailbox(loop)
        # The timers' ends are called by hand below: their real ends are hours away.
        box.linger, box.linger_max = 3600.0, 3600.0 * 12
        ran: list[Any] = []

        def turn() -> None:
            loop.run_until_complete(asyncio.sleep(0))

        def linger_end() -> None:
            loop.call_soon(box._linger_end)
            turn()

        def stream(lingers: int) -> list[tuple[float, bool]]:
            """STREAM hand-overs per `linger` of each of `lingers` lingers: (span in lingers,
            streaming) after each."""
            seen = []
            for _ in range(lingers):
                for i in range(int(STREAM * box._span / 3600.0)):
                    box.post_lazy(ran.append, i)
                linger_end()
                seen.append((box._span / 3600.0, box.streaming()))
            return seen

        box.post_lazy(ran.append, 0)
        turn()
        assert box._span == 3600.0 and not box.streaming()  # a lone hand-over: no stream

        # Doubled each time, up to linger_max; a stream for the writer from 8 lingers on.
        assert stream(5) == [(2, False), (4, False), (8, True), (12, True), (12, True)]

        for i in range(STREAM * 12 - 1):  # one fewer than the rate: back to the first linger
            box.post_lazy(ran.append, i)
        linger_end()
        assert box._span == 3600.0 and not box.streaming()

        assert stream(3)[-1] == (8, True)
        box.post_lazy(ran.append, "lazy")
        box.post(ran.append, "wait")  # a plain post runs at once, after the hand-over
        turn()
        assert ran[-2:] == ["lazy", "wait"]
        linger_end()  # nothing came since: the stream is over
        assert not box.streaming()
        assert len(ran) == 1 + STREAM * (1 + 2 + 4 + 8 + 12) + STREAM * 12 - 1 + STREAM * 7 + 2
    finally:
        loop.close()


@pytest.mark.timeout(60)
def test_a_trigger_loop_streams_and_every_run_still_ends(engine: Engine) -> None:
    """A `trigger()` loop from a cell is a stream: the engine lingers longer between drains
    (and the writer between commits), and every run it triggered still runs and is waited
    for at once: a wait is a plain post, which never waits for a linger."""
    seen: list[bool] = []
    # A stream is then 4 hand-overs in 5 ms, not in 1: however slow the machine, a loop is one.
    engine.runtime.inbox.linger = 0.005

    @engine.task(id="streamed")
    async def streamed(payload: int, ctx: Any) -> int:
        seen.append(engine.runtime.inbox.streaming())
        return payload

    handles = [streamed.trigger(i) for i in range(2000)]
    assert [h.wait(timeout=30).output for h in handles] == list(range(2000))
    assert any(seen), "2,000 trigger() calls in a row were never seen as a stream"


def test_loops_closed_after_triggering_and_awaiting_are_not_kept(engine: Engine) -> None:
    """Each `asyncio.run()` that triggers and awaits runs gets its own mailbox, group commit
    and await group, held in weak maps keyed by its loop; each of those holds its loop, so
    the loop (and what hangs on it) stayed for the kernel's life. Once closed it is dropped
    when the next loop's entries are made: only the last closed loop may be left."""
    import gc
    import weakref

    task = engine.task(id="closed_loops", run=lambda p, ctx: p)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def go(i: int) -> Any:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        handle = await task.trigger_async(i)
        return (await handle).output

    assert [asyncio.run(go(i)) for i in range(4)] == [0, 1, 2, 3]
    gc.collect()
    assert sum(ref() is not None for ref in loops) <= 1
