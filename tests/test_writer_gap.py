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
