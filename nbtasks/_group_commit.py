"""`trigger_async` from a coroutine: the calls of one loop turn share one commit.

`await asyncio.gather(*(task.trigger_async(x) for x in items))` starts thousands of calls in
one turn of the caller's loop. Each adds its prepared run here; at the end of the turn one
worker thread commits them all in one transaction (the caller's loop never blocks on SQLite),
then the engine is handed the recorded runs and every call returns. So concurrent calls cost
about what one `batch_trigger` of them costs, and the contract is a cell's `trigger()`'s: the
run is on disk when the call returns, and a store that can't take it raises `StoreError` with
nothing recorded and nothing started.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._runstate import RunState

if TYPE_CHECKING:
    from ._engine import Engine
    from ._prepare import QueueRequest


class GroupCommit:
    """One per (engine, caller loop); used only on that loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self._items: list[tuple[RunState, QueueRequest | None]] = []
        self._futures: list[asyncio.Future[RunState]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, run: RunState, queue: QueueRequest | None) -> asyncio.Future[RunState]:
        fut: asyncio.Future[RunState] = self.loop.create_future()
        self._items.append((run, queue))
        self._futures.append(fut)
        if len(self._items) == 1:
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = self.loop.create_task(self._commit(items, futures))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, items: list[tuple[RunState, QueueRequest | None]],
                      futures: list[asyncio.Future[RunState]]) -> None:
        engine = self.engine
        try:
            await asyncio.to_thread(engine._commit_new, [run for run, _ in items])
        except BaseException as exc:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        engine._post_admit(items)
        for (run, _), fut in zip(items, futures, strict=True):
            if not fut.done():
                fut.set_result(run)
