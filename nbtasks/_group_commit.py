"""Coroutines on another loop: the calls of one loop turn share one commit, or one trip.

`await asyncio.gather(*(task.trigger_async(x) for x in items))` starts thousands of calls in
one turn of the caller's loop. Each adds its prepared run here; at the end of the turn one
worker thread commits them, a transaction per part (the caller's loop never blocks on
SQLite), handing the engine each part as soon as it is recorded, and its calls return. So
concurrent calls cost about what `batch_trigger` of them costs, and the contract is a cell's
`trigger()`'s: the run is on disk when the call returns, and a store that can't take it raises
`StoreError` with nothing recorded and nothing started.

`await asyncio.gather(*handles)` does the same for waiting (`AwaitGroup`): the awaits of one
turn go to the engine loop as one call, and the answers come back in bunches, one wake-up of
the caller's loop per engine turn instead of one round trip per handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._collector import BURST_RUNS, COLLECTOR
from ._errors import EngineError
from ._handles import Result
from ._runstate import RunState
from ._runtime import Mailbox, mailbox, to_loop

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
        #: This turn's calls hold the collector (`nbtasks._collector`): the token they hold
        #: it by, or None.
        self._hold: object | None = None

    def add(self, run: RunState, queue: QueueRequest | None) -> asyncio.Future[RunState]:
        fut: asyncio.Future[RunState] = self.loop.create_future()
        self._items.append((run, queue))
        self._futures.append(fut)
        if len(self._items) == 1:
            self.loop.call_soon(self._flush)
        elif len(self._items) == BURST_RUNS and self.engine.config.defer_gc:
            # A burst, before the engine has any of it: put full collections off from here,
            # not from when its runs are in flight (by then the calls, their coroutines and
            # futures have set off several: the gc section of benchmarks/throughput.py).
            self._hold = object()
            COLLECTOR.enter(self._hold)
        return fut

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        hold, self._hold = self._hold, None
        self._items, self._futures = [], []
        task = self.loop.create_task(self._commit(items, futures, hold))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, items: list[tuple[RunState, QueueRequest | None]],
                      futures: list[asyncio.Future[RunState]], hold: object | None) -> None:
        """Commit on a worker thread; a hold on the collector these calls took ends with it
        (the engine's own burst takes over once their runs are in flight)."""
        try:
            await asyncio.to_thread(self._commit_parts, items, futures)
        finally:
            if hold is not None:
                COLLECTOR.leave(hold)

    def _commit_parts(self, items: list[tuple[RunState, QueueRequest | None]],
                      futures: list[asyncio.Future[RunState]]) -> None:
        """On a worker thread: commit in parts (see `parts`), handing each part to the engine
        as soon as it is on disk. The engine runs the first part while the next one commits,
        as it does for a cell's `batch_trigger` calls; one transaction of 20,000 rows would
        leave it idle until the last row was written. Each call returns once its own run is
        committed; if a part can't be, it and every later part fail with that error, with
        nothing of theirs recorded."""
        engine, loop = self.engine, self.loop
        for start, stop in parts(len(items)):
            part = items[start:stop]
            try:
                engine._commit_new([run for run, _ in part])
            except BaseException as exc:
                to_loop(loop, _fail, futures[start:], exc)
                if not isinstance(exc, Exception):
                    raise
                return
            engine._post_admit(part)
            to_loop(loop, _resolve, part, futures[start:stop])


#: Most runs per transaction of a group commit: big enough that a commit's fixed cost is
#: spread thin. The first parts are smaller, so the engine starts on the first runs early.
PART = 500
FIRST_PART = 64


def parts(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each part of `n` runs: 64, 128, 256, then 500 at a time. Measured on
    20,000 gathered calls: 90-97 µs a run, against 114-118 with 500 from the first."""
    start, size = 0, FIRST_PART
    while start < n:
        yield start, min(start + size, n)
        start += size
        size = min(size * 2, PART)


def _fail(futures: list[asyncio.Future[RunState]], exc: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(exc)


def _resolve(items: list[tuple[RunState, QueueRequest | None]],
             futures: list[asyncio.Future[RunState]]) -> None:
    for (run, _), fut in zip(items, futures, strict=True):
        if not fut.done():
            fut.set_result(run)


class AwaitGroup:
    """One per (engine, caller loop); used only on that loop. Waits for runs that are not known
    final yet: a waiter hears of a run only once its final state is committed, as with every
    other wait (the engine's `_deliver`)."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self._ids: list[str] = []
        self._futures: list[asyncio.Future[Result[Any]]] = []

    def add(self, run_id: str) -> asyncio.Future[Result[Any]]:
        fut: asyncio.Future[Result[Any]] = self.loop.create_future()
        self._ids.append(run_id)
        self._futures.append(fut)
        if len(self._ids) == 1:
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        ids, futures = self._ids, self._futures
        self._ids, self._futures = [], []
        engine = self.engine
        if engine.closed or engine.runtime.closed:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(EngineError("the engine is closed"))
            return
        relay = _Relay(engine.runtime.loop, mailbox(self.loop), futures)
        # The same mailbox as the hand-over of runs a cell triggered: posted after them, so the
        # engine has taken every run this caller triggered before it looks for these.
        engine.runtime.inbox.post(engine._deliver, ids, relay.put_run, relay.put)


class _Relay:
    """On the engine loop: answers for one group's futures, sent back once per engine turn."""

    __slots__ = ("_back", "_futures", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, back: Mailbox,
                 futures: list[asyncio.Future[Result[Any]]]) -> None:
        self._loop = loop
        self._back = back
        self._futures = futures
        self._pending: list[tuple[int, Result[Any] | BaseException]] = []

    def put_run(self, i: int, run: RunState) -> None:
        self.put(i, run.withdrawn if run.withdrawn is not None else Result(
            run.id, run.task_id, run.status, run.output_json, run.error))

    def put(self, i: int, answer: Result[Any] | BaseException) -> None:
        if not self._pending:
            self._loop.call_soon(self._send)
        self._pending.append((i, answer))

    def _send(self) -> None:
        answers, self._pending = self._pending, []
        self._back.post(_settle, self._futures, answers)


def _settle(futures: list[asyncio.Future[Result[Any]]],
            answers: list[tuple[int, Result[Any] | BaseException]]) -> None:
    """On the caller's loop."""
    for i, answer in answers:
        fut = futures[i]
        if fut.done():  # the caller stopped waiting (a timeout, a cancel)
            continue
        if isinstance(answer, BaseException):
            fut.set_exception(answer)
        else:
            fut.set_result(answer)
