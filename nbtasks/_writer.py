"""Group commit: one writer thread turns everything marked since its last commit into one
transaction.

The engine loop only marks state dirty (a dict insert) and, where it must, asks to be called
back once everything marked so far is on disk (`after_commit`, `barrier`). A run touched ten
times between two commits is written once, with its latest row. While one transaction commits,
the next batch gathers, so throughput rises with load instead of paying one transaction per run.

What the writer promises (docs/design.md, decision 10):

- A batch is never dropped. A commit that fails for a passing reason (a lock held past the busy
  timeout, a full disk, an I/O error) is tried again with back-off until it succeeds; meanwhile
  `problem` says why (the dashboard shows it) and one warning is logged.
- One bad row costs nobody else their record: a batch the store refuses is written again row by
  row, the refused rows are left out, and `on_refused` tells the scheduler, which fails (or
  withdraws) only the runs they belong to. The after-commit work of that batch waits for the
  next commit, which carries those corrections: nobody hears of a state that is not on disk.
- The loop is never held long: rows are built and after-commit work is run in slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from ._errors import StoreError
from ._runstate import AttemptState, RunState
from ._runtime import LoopTurn
from ._status import FINAL
from .stores._base import Refused, Store, WriteBatch

_log = logging.getLogger("nbtasks")

#: Rows built between two looks at the clock (a few microseconds each).
_ROWS = 64
#: Longest pause between two tries of a commit the store can't take now.
MAX_BACKOFF = 1.0
#: Least loop time between the end of one commit and the cut of the next, unless somebody
#: waits for the next one (`after_commit(..., urgent=True)`: a waiter on a run's end, a
#: barrier). Under steady load (runs ending one by one, as pool workers do) the writer would
#: otherwise commit every few runs and write each run twice, started and then final; waiting
#: this long lets a batch gather, and a quick run's start and end go in one row.
GAP = 0.010
#: The GAP while a cell hands runs over in a stream (a `trigger()` loop: `Mailbox.streaming`).
#: Nobody waits for their progress, and each commit made while the cell is still triggering
#: takes the GIL from it: fewer, bigger commits cost less in all. A waiter still cuts the next
#: batch at once.
STREAM_GAP = 0.2

_Item = tuple[WriteBatch, list[Callable[[], None]], int]


class GroupWriter:
    """Marks happen on the engine loop; `Store.write` happens on a daemon writer thread."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop,
                 streaming: Callable[[], bool] = lambda: False,
                 turn: LoopTurn | None = None) -> None:
        self.store = store
        self.loop = loop
        #: The loop's turn budget: row building and after-commit work draw on it in slices.
        self._turn = turn if turn is not None else LoopTurn(loop)
        #: True while runs come in a stream (see STREAM_GAP).
        self._streaming = streaming
        #: Called on the loop with the rows the store refused (set by the scheduler).
        self.on_refused: Callable[[list[Refused]], None] | None = None
        #: Why the store can't be written right now (SQLite's message and the path), or None.
        self.problem: str | None = None
        #: Called on the loop, once, when the store is lost for good (its file deleted or
        #: replaced): nothing marked from then on can be written (set by the engine).
        self.on_lost: Callable[[StoreError], None] | None = None
        #: Why nothing can be written any more, once the store is lost; else None.
        self.lost: StoreError | None = None
        self._runs: dict[str, RunState] = {}
        self._attempts: dict[tuple[str, int], tuple[str, AttemptState]] = {}
        self._logs: list[tuple[Any, ...]] = []
        self._waitpoints: dict[str, tuple[Any, ...]] = {}
        self._statements: list[tuple[str, tuple[Any, ...]]] = []
        self._callbacks: list[Callable[[], None]] = []
        self._pending: deque[Callable[[], None]] = deque()  # after-commit work not yet run
        self._draining = False
        self._busy = False
        self._scheduled = False
        self._closed = False
        self._abandoned = threading.Event()
        self.commits = 0
        self.rows_written = 0
        self._last_done = float("-inf")  # loop time the last commit was reported done
        self._gap = GAP  # loop time between the last commit's end and the next cut
        self._urgent = False  # a callback marked since the last cut has somebody waiting
        self._later: asyncio.TimerHandle | None = None  # a cut put off by GAP
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="nbtasks-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- marking (engine loop)

    def mark(self, run: RunState) -> None:
        self._runs[run.id] = run
        if not (self._scheduled or self._busy):
            self._kick()

    def mark_attempt(self, run: RunState, attempt: AttemptState) -> None:
        self._attempts[(run.id, attempt.number)] = (run.id, attempt)
        if not (self._scheduled or self._busy):
            self._kick()

    def log(self, row: tuple[Any, ...]) -> None:
        self._logs.append(row)
        if not (self._scheduled or self._busy):
            self._kick()

    def waitpoint(self, wp_id: str, row: tuple[Any, ...]) -> None:
        self._waitpoints[wp_id] = row
        if not (self._scheduled or self._busy):
            self._kick()

    def statement(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._statements.append((sql, params))
        if not (self._scheduled or self._busy):
            self._kick()

    def after_commit(self, callback: Callable[[], None], urgent: bool = False) -> None:
        """Call `callback` on the loop once everything marked so far is committed.

        Cheaper than a barrier future per run: the callbacks ride along with their batch, and
        run in the order they were given. `urgent`: somebody is waiting for it, so the next
        batch is cut without the GAP.
        """
        self._callbacks.append(callback)
        if urgent and not self._urgent:
            self._urgent = True
            self._kick()
        elif not self._scheduled:
            self._kick()

    def hurry(self) -> None:
        """Somebody now waits for what is marked: cut the next batch without the GAP."""
        if not self._urgent:
            self._urgent = True
            self._kick()

    def barrier(self) -> asyncio.Future[None]:
        """Resolved once everything marked so far is committed."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.after_commit(partial(self._settle, fut), urgent=True)
        return fut

    def _settle(self, fut: asyncio.Future[None]) -> None:
        if fut.done():
            return
        if self.lost is not None:  # what it waited for was never written, and never will be
            fut.set_exception(StoreError(str(self.lost)))
        else:
            fut.set_result(None)

    # ---------------------------------------------------------------- flushing

    def _dirty(self) -> bool:
        return bool(self._runs or self._attempts or self._logs or self._waitpoints
                    or self._statements or self._callbacks)

    def _kick(self) -> None:
        if self._busy:
            return
        if self._scheduled:
            if self._urgent and self._later is not None:  # somebody waits now: cut at once
                self._later.cancel()
                self._later = None
                self.loop.call_soon(self._flush_soon)
            return
        self._scheduled = True
        wait = 0.0 if self._urgent else self._last_done + self._gap - self.loop.time()
        if wait > 0:
            self._later = self.loop.call_later(wait, self._flush_soon)
        else:
            self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._later = None
        # One more turn of the loop before the batch is cut: attempts started by what was just
        # marked take their first step in that turn, and a run that finishes there (a quick
        # one) is written once, final, instead of once queued and again completed. Nobody
        # who waits for durability waits longer than one loop turn for the cut.
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._urgent = False
        if self._busy:
            return
        runs = list(self._runs.values())
        attempts = list(self._attempts.values())
        batch = WriteBatch(logs=self._logs, waitpoints=list(self._waitpoints.values()),
                           statements=self._statements)
        callbacks = self._callbacks
        self._callbacks = []
        self._runs = {}
        self._attempts = {}
        self._logs = []
        self._waitpoints = {}
        self._statements = []
        if not (runs or attempts or batch):
            self._run_later(callbacks)
            return
        if self.lost is not None:
            # Nothing can be written. A run never recorded never starts (its waiters get the
            # error); what the callbacks would announce reaches waiters as that error too.
            for run in runs:
                if not run.recorded and run.withdrawn is None:
                    run.withdrawn = self.lost
            self._run_later(callbacks)
            return
        self._busy = True
        self._build(batch, runs, attempts, callbacks)

    def _build(self, batch: WriteBatch, runs: list[RunState],
               attempts: list[tuple[str, AttemptState]], callbacks: list[Callable[[], None]]) -> None:
        """Make the rows in slices: a 20,000-run burst must not hold the loop while they are
        made. A run changed between two slices is written with its newer state, which is
        fine: what the callbacks of this batch announce was set before the batch was cut."""
        deadline = self._turn.deadline()
        out_runs, out_updates, out_attempts = batch.runs, batch.updates, batch.attempts
        out_previous = batch.previous
        while runs or attempts:
            for run in runs[-_ROWS:]:
                row = run.row()
                if run.recorded:  # its row is committed: an update of what changed since
                    out_updates.append(row)
                    out_previous.append(run.stored)
                else:
                    out_runs.append(row)
                # A final run is seldom written again: it keeps no copy of its row.
                run.stored = None if run.status in FINAL else row
            del runs[-_ROWS:]
            if not runs:
                for run_id, attempt in attempts[-_ROWS:]:
                    out_attempts.append(attempt.row(run_id))
                del attempts[-_ROWS:]
            if (runs or attempts) and time.perf_counter() > deadline:
                self.loop.call_soon(self._build, batch, runs, attempts, callbacks)
                return
        rows = len(out_runs) + len(out_updates) + len(out_attempts) + len(batch.logs)
        self._queue.put((batch, callbacks, rows))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, callbacks, rows = item
            refused = self._commit(batch)
            if refused is None:  # abandoned at close: nobody is left to tell
                return
            try:
                if isinstance(refused, StoreError):
                    self.loop.call_soon_threadsafe(self._lose, callbacks, refused)
                else:
                    self.loop.call_soon_threadsafe(self._done, callbacks, refused, rows)
            except RuntimeError:  # loop already closed at interpreter exit
                return
            # Blocked in get() these would keep the last batch's finished runs alive.
            del item, batch, callbacks

    def _commit(self, batch: WriteBatch) -> list[Refused] | StoreError | None:
        """Write `batch`, however long it takes; None only if the engine gave up at close, and
        the store's error if it is lost for good (its file deleted or replaced: no retry can
        ever succeed)."""
        delay = 0.01
        while True:
            try:
                try:
                    self.store.write(batch)
                    refused: list[Refused] = []
                except StoreError:
                    raise
                except Exception:  # some row is refused: write the others, learn which
                    refused = self.store.write_each(batch)
                self._healthy()
                return refused
            except StoreError as exc:
                lost = getattr(self.store, "lost", None)
                if isinstance(lost, StoreError):
                    return lost  # no retry can succeed: not "written as soon as it can"
                self._trouble(str(exc))
            except Exception as exc:
                if self._abandoned.is_set():
                    return None
                self._trouble(f"{self.store.path}: {type(exc).__name__}: {exc}")
            if self._abandoned.wait(delay):
                return None
            delay = min(delay * 2, MAX_BACKOFF)

    def _trouble(self, message: str) -> None:
        first = self.problem is None
        self.problem = message
        if first:
            _log.warning(
                "nbtasks can't write its run history (%s). Runs are kept and written as soon "
                "as it can; nothing starts before its run is recorded.", message)

    def _healthy(self) -> None:
        if self.problem is not None:
            _log.warning("nbtasks writes its run history again (%s)", self.store.path)
            self.problem = None

    def _done(self, callbacks: list[Callable[[], None]], refused: list[Refused],
              rows: int) -> None:
        self._busy = False
        self._last_done = self.loop.time()
        self._gap = STREAM_GAP if self._streaming() else GAP
        self.commits += 1
        self.rows_written += rows
        if refused and self.on_refused is not None:
            self.on_refused(refused)
            # The corrections are marked, not written: what this batch's callbacks would
            # announce waits for the commit that carries them.
            self._callbacks[:0] = callbacks
        else:
            self._run_later(callbacks)
        if self._dirty():
            self._kick()

    def _lose(self, callbacks: list[Callable[[], None]], error: StoreError) -> None:
        """The store is gone for good: stop writing, and let the engine end what waits on it."""
        self._busy = False
        self.lost = error
        self.problem = str(error)
        if self.on_lost is not None:
            self.on_lost(error)
        self._run_later(callbacks)
        if self._dirty():
            self._kick()

    def _run_later(self, callbacks: list[Callable[[], None]]) -> None:
        self._pending.extend(callbacks)
        if not self._draining:
            self._draining = True
            self._drain()

    def _drain(self) -> None:
        """After-commit work in slices, in order (20,000 waiters told at once would hold the
        loop for a tenth of a second)."""
        pending = self._pending
        deadline = self._turn.deadline()
        n = 0
        while pending:
            callback = pending.popleft()
            try:
                callback()
            except Exception as exc:  # one broken callback must not strand the others
                self.loop.call_exception_handler({
                    "message": "nbtasks after-commit callback failed", "exception": exc})
            n += 1
            if not n & 63 and pending and time.perf_counter() > deadline:
                self.loop.call_soon(self._drain)
                return
        self._draining = False

    async def close(self) -> None:
        """Commit what is pending, then stop the writer thread."""
        if self._closed:
            return
        with contextlib.suppress(StoreError):  # lost: nothing more to commit before stopping
            await self.barrier()
        self._closed = True
        self._queue.put(None)

    def abandon(self) -> None:
        """The engine is closing and can wait no longer: stop retrying (the kernel's exit must
        not hang on a store that can't be written; what was not written is not promised)."""
        self._abandoned.set()
        self._queue.put(None)
