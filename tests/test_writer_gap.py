"""The writer's GAP: under steady load batches gather; somebody waiting cuts one at once.

Runs that end one by one (pool workers, sleeping runs) would each cost a commit of their own,
started and then final. After a commit the writer waits GAP of loop time before cutting the
next batch, unless a callback marked since has somebody waiting (`urgent`, a barrier, a waiter
on a run whose end is marked): that batch is cut in the next loop turns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nbtasks._runstate import RunState
from nbtasks._writer import GAP, GroupWriter
from nbtasks.stores.sqlite import SQLiteStore


def _run(n: int) -> RunState:
    return RunState(f"run_gap{n:018d}", "gap", "null", 1.0)


@pytest.mark.timeout(30)
def test_after_a_commit_the_next_batch_gathers_for_a_gap(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        store = SQLiteStore(tmp_path / "runs.db")
        store.open()
        writer = GroupWriter(store, loop)
        try:
            writer.mark(_run(1))
            await writer.barrier()
            committed = loop.time()
            told = loop.create_future()
            writer.mark(_run(2))
            writer.after_commit(lambda: told.set_result(loop.time()))
            put_off = writer._later is not None
            return await told - committed, put_off
        finally:
            await writer.close()
            store.close()

    waited, put_off = asyncio.run(scenario())
    assert put_off
    assert waited >= GAP


@pytest.mark.timeout(30)
def test_somebody_waiting_cuts_the_batch_without_the_gap(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, int]:
        loop = asyncio.get_running_loop()
        store = SQLiteStore(tmp_path / "runs.db")
        store.open()
        writer = GroupWriter(store, loop)
        try:
            writer.mark(_run(1))
            await writer.barrier()
            writer.mark(_run(2))  # nobody waits: put off
            put_off = writer._later is not None
            writer.hurry()  # now somebody does
            cancelled = writer._later is None
            await writer.barrier()
            return put_off, cancelled, writer.commits
        finally:
            await writer.close()
            store.close()

    put_off, cancelled, commits = asyncio.run(scenario())
    assert put_off and cancelled
    assert commits == 2
