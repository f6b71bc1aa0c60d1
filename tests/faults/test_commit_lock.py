"""A second connection holds the write lock: nothing runs unrecorded, nothing is dropped.

While another process holds `BEGIN EXCLUSIVE` on the store, `batch_trigger()` and an awaited
`trigger_async()` wait for the busy timeout and raise StoreError with nothing recorded and
nothing run; a run accepted inside the engine (an async body's trigger) waits, unstarted, and
is recorded and run once the lock goes. A cell's `trigger()` commits into the intake file, which
that lock does not hold: it returns, its run is in the intake, and it reaches `runs` once the
lock goes. Held on the intake file, the lock makes `trigger()` wait and raise the same way.
The engine says what is wrong (`store_problem`, one warning) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from _helpers import ids_in_files, read_rows, row_in_files

from nbtasks import Engine, StoreError
from nbtasks.stores.sqlite import SQLiteStore


class _Told(logging.Handler):
    """Sets an event when the engine warns that it can't write (sequencing without sleeps)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.cant_write = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if "can't write" in record.getMessage():
            self.cant_write.set()


def _count(db: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(read_rows(db, sql, params)[0][0])


@pytest.mark.timeout(60)
def test_held_lock_runs_nothing_unrecorded_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    told = _Told()
    logging.getLogger("nbtasks").addHandler(told)
    ran: list[Any] = []
    eng = Engine(store=SQLiteStore(db, busy_timeout=0.2))
    try:
        @eng.task(id="work")
        def work(p: Any, ctx: Any) -> Any:
            ran.append(p)
            return p

        go = asyncio.Event()

        @eng.task(id="parent")
        async def parent(p: Any, ctx: Any) -> Any:
            await go.wait()
            child = work.trigger({"child": True})  # on the engine loop: kept until recorded
            result = await child
            return result.output

        parent_handle = parent.trigger(None)
        before = eng.runs.count()
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            cell = work.trigger({"cell": 1})  # durable in the intake, which is not locked
            assert row_in_files(db, cell.id) == ("QUEUED",)
            assert _count(db, "SELECT COUNT(*) FROM runs WHERE id = ?", (cell.id,)) == 0
            # A read of the store can't fold it while the lock is held: it reads without it.
            assert eng.store.select("SELECT COUNT(*) FROM runs")[1] == [(before,)]
            with pytest.raises(StoreError) as caught:
                work.batch_trigger([{"batch": i} for i in range(5)])
            assert "database is locked" in str(caught.value)
            assert str(db) in str(caught.value)

            # trigger_async awaited in a coroutine commits as a cell's trigger() does.
            with pytest.raises(StoreError, match="database is locked"):
                asyncio.run(work.trigger_async({"async": 1}))

            # A run triggered inside the engine is kept, unstarted, until its commit lands.
            eng.runtime.loop.call_soon_threadsafe(go.set)
            assert told.cant_write.wait(10)
            assert eng.store_problem is not None and "locked" in eng.store_problem
            assert str(db) in eng.store_problem
            assert {"child": True} not in ran
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert parent_handle.wait(timeout=10).output == {"child": True}
        assert cell.wait(timeout=10).output == {"cell": 1}
        assert eng.store_problem is None
        assert sorted(ran, key=str) == [{"cell": 1}, {"child": True}]
        assert eng.runs.count() == before + 2
    finally:
        eng.close()
        logging.getLogger("nbtasks").removeHandler(told)
    assert sum("can't write" in m for m in told.messages) == 1  # warned once, not per retry
    # What the file says after reopening: everything that ran is recorded, final; the
    # refused triggers left nothing.
    assert _count(db, "SELECT COUNT(*) FROM runs") == 3
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'") == 3
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE payload LIKE '%batch%' "
                      "OR payload LIKE '%async%'") == 0
    assert _count(db, "SELECT COUNT(*) FROM attempts WHERE status = 'COMPLETED'") == 3
    assert ids_in_files(db) == {r[0] for r in read_rows(db, "SELECT id FROM runs")}  # folded


@pytest.mark.timeout(60)
def test_a_read_under_a_held_lock_does_not_wait_out_the_busy_timeout(tmp_path: Path) -> None:
    """A read folds what a cell's trigger() put in the intake first; with the store's lock
    held elsewhere it gives that up after a short wait and reads without those runs, instead
    of holding the dashboard for the busy timeout. That holds for a thread's first read too,
    made while the writer waits for the file inside the store's own lock."""
    db = tmp_path / "runs.db"
    store = _NotingStore(db, busy_timeout=20)
    with Engine(store=store) as eng:
        work = eng.task(id="work", run=lambda p, ctx: p)
        assert work.trigger(0).wait(timeout=10).output == 0
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            store.writing.clear()
            handle = work.trigger(1)
            assert store.writing.wait(10)  # the writer is on its way into the lock, to wait
            _until_held(store._lock)
            took = threading.Event()
            reads: list[Any] = []

            def read() -> None:  # a new thread: its reader connection is made now
                reads.append(eng.store.select("SELECT COUNT(*) FROM runs")[1])
                took.set()

            threading.Thread(target=read, daemon=True).start()
            assert took.wait(10), "the read waited for the lock (busy timeout 20 s)"
            assert reads == [[(1,)]]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert handle.wait(timeout=10).output == 1
        assert eng.store.select("SELECT COUNT(*) FROM runs")[1] == [(2,)]


class _NotingStore(SQLiteStore):
    """Says when the engine's writer thread starts a commit."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        super().__init__(path, busy_timeout=busy_timeout)
        self.writing = threading.Event()

    def write(self, batch: Any) -> None:
        if threading.current_thread().name == "nbtasks-writer":
            self.writing.set()
        super().write(batch)


def _until_held(lock: Any) -> None:
    """Until another thread holds `lock` (the writer, a moment after it said it would)."""
    for _ in range(10_000):
        if not lock.acquire(blocking=False):
            return
        lock.release()
        threading.Event().wait(0.001)
    raise AssertionError("nobody took the lock")


@pytest.mark.timeout(60)
def test_a_held_intake_lock_refuses_trigger_with_nothing_recorded(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=SQLiteStore(db, busy_timeout=0.2)) as eng:
        work = eng.task(id="work", run=lambda p, ctx: p)
        assert work.trigger(0).wait(timeout=10).output == 0
        holder = sqlite3.connect(f"{db}-intake", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match="database is locked") as caught:
                work.trigger({"cell": 1})
            assert f"{db}-intake" in str(caught.value)
            # Batches commit straight into `runs`: the intake's lock does not hold them.
            assert [r.output for r in work.batch_trigger([5, 6]).wait(timeout=10)] == [5, 6]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert work.trigger(2).wait(timeout=10).output == 2
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'") == 4
    assert "cell" not in str(read_rows(db, "SELECT payload FROM runs"))
    assert ids_in_files(db) == {r[0] for r in read_rows(db, "SELECT id FROM runs")}


@pytest.mark.timeout(60)
def test_a_lock_released_within_the_busy_timeout_just_delays_trigger(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Engine(store=SQLiteStore(db, busy_timeout=10)) as eng:
        work = eng.task(id="work", run=lambda p, ctx: p)
        # A cell's trigger() commits into the intake file: the lock it waits for is that one's.
        holder = sqlite3.connect(f"{db}-intake", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.3, lambda: (holder.execute("ROLLBACK"), holder.close()))
        release.start()
        handle = work.trigger(7)  # waits for the lock, then commits
        release.join()
        assert handle.wait(timeout=10).output == 7
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE status = 'COMPLETED'") == 1
