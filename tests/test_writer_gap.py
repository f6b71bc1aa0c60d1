"""The writer's GAP: under steady load batches gather; somebody waiting cuts one at once.

Runs that end one by one (pool workers, sleeping runs) would each cost a commit of their own,
started and then final. After a commit the writer waits GAP of loop time before cutting the
next batch, unless a callback marked since has somebody waiting (`urgent`, a barrier, a waiter
on a run whose end is marked): that batch is cut in the next loop turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from nbtasks._runstate import RunState
from nbtasks._writer import GAP, STREAM_GAP, GroupWriter
from nbtasks.stores.sqlite import SQLiteStore

T = TypeVar("T")


def _run(n: int) -> RunState:
    return RunState(f"run_gap{n:018d}", "gap", "null", 1.0)


def _after_a_commit(tmp_path: Path, then: Callable[[GroupWriter], Awaitable[T]],
                    streaming: bool = False) -> T:
    """`then(writer)` on a real store, right after the writer's first commit is done; with
    `streaming`, while runs come in a stream (`Mailbox.streaming`)."""
    async def scenario() -> T:
        store = SQLiteStore(tmp_path / "runs.db")
        store.open()
        writer = GroupWriter(store, asyncio.get_running_loop(), lambda: streaming)
        try:
            writer.mark(_run(1))
            await writer.barrier()
            return await then(writer)
        finally:
            await writer.close()
            store.close()

    return asyncio.run(scenario())


async def _next_commit(writer: GroupWriter) -> tuple[float, bool]:
    """(loop seconds from the last commit's end to the next one's, whether it was put off)."""
    loop = writer.loop
    committed = loop.time()
    told: asyncio.Future[float] = loop.create_future()
    writer.mark(_run(2))
    writer.after_commit(lambda: told.set_result(loop.time()))
    put_off = writer._later is not None
    return await told - committed, put_off


@pytest.mark.timeout(30)
def test_after_a_commit_the_next_batch_gathers_for_a_gap(tmp_path: Path) -> None:
    waited, put_off = _after_a_commit(tmp_path, _next_commit)
    assert put_off
    assert waited >= GAP


@pytest.mark.timeout(30)
def test_while_runs_stream_in_the_next_batch_gathers_for_longer(tmp_path: Path) -> None:
    """A cell's `trigger()` loop: each commit made meanwhile takes the GIL from it, and nobody
    waits for these runs' progress; fewer, bigger commits cost less in all."""
    waited, put_off = _after_a_commit(tmp_path, _next_commit, streaming=True)
    assert put_off
    assert waited >= STREAM_GAP


@pytest.mark.timeout(30)
def test_somebody_waiting_cuts_the_batch_at_once_in_a_stream_too(tmp_path: Path) -> None:
    async def then(writer: GroupWriter) -> tuple[float, bool, int]:
        writer.mark(_run(2))
        assert writer._later is not None
        put_off_for = writer._later.when() - writer._last_done
        done = writer.barrier()  # somebody waits: cut at once
        cancelled = writer._later is None
        await done
        return put_off_for, cancelled, writer.commits

    put_off_for, cancelled, commits = _after_a_commit(tmp_path, then, streaming=True)
    assert put_off_for == pytest.approx(STREAM_GAP, abs=GAP / 10)  # the stream's gap, not GAP
    assert cancelled and commits == 2


@pytest.mark.timeout(30)
def test_somebody_waiting_cuts_the_batch_without_the_gap(tmp_path: Path) -> None:
    async def then(writer: GroupWriter) -> tuple[bool, bool, int]:
        writer.mark(_run(2))  # nobody waits: put off
        put_off = writer._later is not None
        writer.hurry()  # now somebody does
        cancelled = writer._later is None
        await writer.barrier()
        return put_off, cancelled, writer.commits

    put_off, cancelled, commits = _after_a_commit(tmp_path, then)
    assert put_off and cancelled
    assert commits == 2


@pytest.mark.timeout(30)
def test_the_mailbox_and_the_writer_share_one_turn_of_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sliced work ready in the same loop turn draws on one budget (`LoopTurn`): a mailbox
    drain that spends it leaves the writer's after-commit work ready in that turn one step
    (64 callbacks), and both carry on in the next turn with a new budget. The clock is a fake
    that only the mailbox's calls move, so the slices are counted, not timed."""
    import time as real_time

    from nbtasks._runtime import SLICE, Mailbox

    now = [1000.0]
    monkeypatch.setattr(real_time, "perf_counter", lambda: now[0])

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        loop = asyncio.get_running_loop()
        store = SQLiteStore(tmp_path / "runs.db")
        store.open()
        box = Mailbox(loop)
        writer = GroupWriter(store, loop, turn=box.turn)
        ran: list[int] = []
        told: list[int] = []
        per_turn: list[int] = []

        def costly(i: int) -> None:  # each call costs a whole slice
            ran.append(i)
            now[0] += SLICE

        try:
            for i in range(3):
                box.post(costly, i)  # a drain is queued now
            loop.call_soon(writer._run_later, [lambda i=i: told.append(i) for i in range(200)])
            for _ in range(4):
                per_turn.append(len(told))
                await asyncio.sleep(0)
            return ran, told, per_turn
        finally:
            await writer.close()
            store.close()

    ran, told, per_turn = asyncio.run(scenario())
    assert ran == [0, 1, 2]
    assert told == list(range(200))
    # The turn the mailbox spent: the writer ran one step of 64. The next turn's budget,
    # which the mailbox's last call used up only to its end, let it finish.
    assert per_turn[:3] == [0, 64, 200], per_turn
