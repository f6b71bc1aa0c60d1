"""Group commit: one writer thread turns everything marked since its last commit into one
transaction.

The engine loop only marks state dirty (a dict insert) and, where it must, awaits `barrier()`:
a future resolved once everything marked before the call is on disk. A run touched ten times
between two commits is written once, with its latest row. While one transaction commits, the
next batch gathers, so throughput rises with load instead of paying one transaction per run.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._runstate import AttemptState, RunState
from .stores._base import Store, WriteBatch

_Item = tuple[WriteBatch, list["asyncio.Future[None]"], list[Callable[[], None]]]


class GroupWriter:
    """Marks happen on the engine loop; `Store.write` happens on a daemon writer thread."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self._runs: dict[str, RunState] = {}
        self._attempts: dict[tuple[str, int], tuple[str, AttemptState]] = {}
        self._logs: list[tuple[Any, ...]] = []
        self._waitpoints: dict[str, tuple[Any, ...]] = {}
        self._statements: list[tuple[str, tuple[Any, ...]]] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._callbacks: list[Callable[[], None]] = []
        self._busy = False
        self._scheduled = False
        self._closed = False
        self.commits = 0
        self.rows_written = 0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="nbtasks-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- marking (engine loop)

    def mark(self, run: RunState) -> None:
        self._runs[run.id] = run
        if not self._scheduled:
            self._kick()

    def mark_attempt(self, run: RunState, attempt: AttemptState) -> None:
        self._attempts[(run.id, attempt.number)] = (run.id, attempt)
        if not self._scheduled:
            self._kick()

    def log(self, row: tuple[Any, ...]) -> None:
        self._logs.append(row)
        if not self._scheduled:
            self._kick()

    def waitpoint(self, wp_id: str, row: tuple[Any, ...]) -> None:
        self._waitpoints[wp_id] = row
        if not self._scheduled:
            self._kick()

    def statement(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._statements.append((sql, params))
        if not self._scheduled:
            self._kick()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once everything marked so far is committed.

        Cheaper than a barrier future per run: the callbacks ride along with their batch.
        """
        self._callbacks.append(callback)
        if not self._scheduled:
            self._kick()

    def barrier(self) -> asyncio.Future[None]:
        """Resolved once everything marked so far is committed."""
        fut = self.loop.create_future()
        self._waiting.append(fut)
        if not self._scheduled:
            self._kick()
        return fut

    # ---------------------------------------------------------------- flushing

    def _kick(self) -> None:
        if self._busy or self._scheduled:
            return
        self._scheduled = True
        self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        # One more turn of the loop before the batch is cut: attempts started by what was just
        # marked take their first step in that turn, and a run that finishes there (a quick
        # one) is written once, final, instead of once queued and again completed. Nobody
        # waits longer for durability than one loop turn.
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy:
            return
        batch = WriteBatch(
            runs=[r.row() for r in self._runs.values()],
            attempts=[a.row(run_id) for run_id, a in self._attempts.values()],
            logs=self._logs,
            waitpoints=list(self._waitpoints.values()),
            statements=self._statements,
        )
        waiting = self._waiting
        callbacks = self._callbacks
        self._callbacks = []
        self._runs = {}
        self._attempts = {}
        self._logs = []
        self._waitpoints = {}
        self._statements = []
        self._waiting = []
        if not batch:
            self._settle(waiting, callbacks, None)
            return
        self._busy = True
        self._queue.put((batch, waiting, callbacks))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, waiting, callbacks = item
            error: BaseException | None = None
            for attempt in range(4):  # a transient failure (I/O, lock) gets a few more tries
                try:
                    self.store.write(batch)
                    error = None
                    break
                except Exception as exc:
                    error = exc
                    time.sleep(0.05 * 2**attempt)
            rows = len(batch.runs) + len(batch.attempts) + len(batch.logs)
            try:
                self.loop.call_soon_threadsafe(self._done, waiting, callbacks, error, rows)
            except RuntimeError:  # loop already closed at interpreter exit
                return
            # Blocked in get() these would keep the last batch's finished runs alive.
            del item, batch, waiting, callbacks

    def _done(
        self, waiting: list[asyncio.Future[None]], callbacks: list[Callable[[], None]],
        error: BaseException | None, rows: int,
    ) -> None:
        self._busy = False
        self.commits += 1
        self.rows_written += rows
        self._settle(waiting, callbacks, error)
        if self._runs or self._attempts or self._logs or self._waitpoints or self._statements \
                or self._waiting or self._callbacks:
            self._kick()

    @staticmethod
    def _settle(waiting: list[asyncio.Future[None]], callbacks: list[Callable[[], None]],
                error: BaseException | None) -> None:
        if error is None:
            for cb in callbacks:
                cb()
        for fut in waiting:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    async def close(self) -> None:
        """Commit what is pending, then stop the writer thread."""
        if self._closed:
            return
        await self.barrier()
        self._closed = True
        self._queue.put(None)
